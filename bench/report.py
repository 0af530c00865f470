"""bench/results.md from the figures `run.py` collected: machine, targets, every run."""

from __future__ import annotations

import datetime as dt
import os
import platform
import statistics
import subprocess
import sys
import tarfile
from importlib import metadata
from io import BytesIO
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = (
    "onnxruntime",
    "litserve",
    "fastapi",
    "starlette",
    "uvicorn",
    "uvloop",
    "httptools",
    "pydantic",
    "orjson",
    "numpy",
)
BODIES = {"one": "1 image, JSON", "batch": "64 images, JSON", "upload": "1 image, multipart"}


BARE_DECODING = "bare, decoding"  # bench/bare_app.py --decode: every request's work but the model's
CNN_ONE_THREAD = "cnn, 1 thread"  # the compute limit of one default-layout worker
FRESH_SPREAD = 0.15  # fresh starts of the default layout: each within this of their median
MAX_STEAL = 0.05  # a fresh start whose run the hypervisor took more of the host's CPU from is flagged and repeated
MAX_FLAGGED = 3  # repeats of one flagged start before it is kept anyway (flagged)


def fresh_line(row: dict[str, Any]) -> str:
    cpu = ", ".join(f"{k} {v:.1f}" for k, v in row["cpu_s"].items())
    flag = " FLAGGED (steal)" if row["flagged"] else ""
    return f"{row['rps']:.0f} req/s, p99 {row['p99_ms']:.0f} ms, steal {100 * row['steal']:.1f}%{flag}; CPU s: {cpu}"


def fresh_kept(r: dict[str, Any]) -> list[dict[str, Any]]:
    """The fresh starts that count: each start's last attempt (unflagged, unless every attempt was)."""
    last: dict[int, dict[str, Any]] = {}
    for row in r.get("fresh_starts", []):
        last[row["start"]] = row
    return [last[k] for k in sorted(last)]


def loadavg() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def checkout_src(ref: str, dest: Path) -> Path | None:
    """`src/` as it was at `ref` (git archive: the repository itself is not touched)."""
    try:
        tar = subprocess.run(["git", "archive", ref, "src"], cwd=ROOT, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    with tarfile.open(fileobj=BytesIO(tar)) as archive:
        archive.extractall(dest, filter="data")
    return dest / "src"


def machine(load_before: float) -> dict[str, Any]:
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next((ln.split(":", 1)[1].strip() for ln in cpuinfo if ln.startswith("model name")), "?")
    meminfo = Path("/proc/meminfo").read_text().splitlines()
    mem_kb = int(next(ln.split()[1] for ln in meminfo if ln.startswith("MemTotal")))
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    wrk = subprocess.run(["wrk", "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    # what is measured: the package, the benchmarks, the dependencies (not the results files, which
    # `make evidence` rewrites one after another)
    measured = ("src", "bench/*.py", "bench/lua", "pyproject.toml")
    dirty = (
        " (with uncommitted changes)" if _git("status", "--porcelain", "--untracked-files=no", "--", *measured) else ""
    )
    return {
        "cpu": f"{cpu}, {os.cpu_count()} cores, {mem_kb / 2**20:.0f} GiB",
        "os": f"{platform.system()} {platform.release()}",
        "python": sys.version.split()[0],
        "packages": versions,
        "wrk": " ".join(wrk.split()[:2]),
        "commit": _git("rev-parse", "--short", "HEAD") + dirty,
        "cores": os.cpu_count() or 1,
        "load_before": load_before,
        "load_after": loadavg(),
    }


def run_line(row: dict[str, Any]) -> str:
    where = f"{row['server']:32} {row['model']:4} {BODIES[row['body']]:20} c={row['connections']:<3}"
    speed = f"{row['rps']:8.0f} req/s {row['images_s']:8.0f} img/s"
    return f"{where} {speed}  p50 {row['p50_ms']:6.1f}  p99 {row['p99_ms']:6.1f} ms  errors {row['errors']}"


def find(
    results: dict[str, Any], server: str, body: str, connections: int, model: str = "cnn"
) -> dict[str, Any] | None:
    """The run of that scenario; of several (the headline is repeated), the one of median req/s."""
    key = (server, model, body, connections)
    runs = sorted(
        (r for r in results["runs"] if (r["server"], r["model"], r["body"], r["connections"]) == key),
        key=lambda r: r["rps"],
    )
    return dict(runs[len(runs) // 2]) if runs else None


def machine_limit(r: dict[str, Any]) -> tuple[float, float, float] | None:
    """(limit, bare, forward): the 1-image req/s this machine bounds -- every core doing the
    decoding bare endpoint's work (HTTP, JSON, base64, the PNG to 28x28) and one image's forward
    pass on one ONNX Runtime thread: cores / (1/bare + 1/forward), bare at 64 connections (one
    process), forward at batch 64."""
    bare64 = find(r, BARE_DECODING, "one", 64)
    forward = r["compute"].get(CNN_ONE_THREAD, {}).get("images_s", {}).get("64")
    cores = r.get("machine", {}).get("cores")  # of the machine measured (older results files lack it)
    if not (bare64 and forward and cores):
        return None
    return cores / (1 / bare64["rps"] + 1 / forward), bare64["rps"], forward


def targets(r: dict[str, Any]) -> list[list[str]]:
    """[target, what it is measured against, measured, pass/short] for each target of performance
    round three (and the earlier rounds' that it did not replace)."""
    ours, peer, bare = "digitserve", "LitServe", "bare"
    one64, lit64 = find(r, ours, "one", 64), find(r, peer, "one", 64)
    one1, lit1, bare1 = find(r, ours, "one", 1), find(r, peer, "one", 1), find(r, BARE_DECODING, "one", 1)
    batch16, moving = find(r, ours, "batch", 16), find(r, "digitserve, alias moving", "one", 64)
    compute = r["compute"].get("cnn", {}).get("images_s", {})
    single = r["compute"].get(CNN_ONE_THREAD, {}).get("images_s", {})
    rows: list[list[str]] = []

    def add(target: str, against: str, measured: str, ok: bool) -> None:
        rows.append([target, against, measured, "**pass**" if ok else "**short**"])

    fresh = fresh_kept(r)
    if fresh:
        rates = [row["rps"] for row in fresh]
        mid = statistics.median(rates)
        flagged = sum(row["flagged"] for row in r["fresh_starts"])
        add(
            f"{len(fresh)} fresh starts of the default layout: each within ±{FRESH_SPREAD:.0%} of their median",
            f"median {mid:.0f} req/s; {flagged} run(s) flagged for host CPU steal (over {MAX_STEAL:.0%})",
            f"{min(rates) / mid:.2f}× – {max(rates) / mid:.2f}× the median",
            all(abs(x / mid - 1) <= FRESH_SPREAD for x in rates),
        )
    limit = machine_limit(r)
    if one64 and limit:
        x = one64["rps"] / limit[0]
        add(
            "1-image, 64 connections: ≥ 0.8× the machine's limit, cores / (1/bare decoding + 1/forward)",
            f"{r.get('machine', {}).get('cores', '?')} / (1/{limit[1]:.0f} + 1/{limit[2]:.0f}) = {limit[0]:.0f} req/s",
            f"{one64['rps']:.0f} req/s = {x:.2f}×",
            x >= 0.8,
        )
    if one64 and lit64:
        x = one64["rps"] / lit64["rps"]
        add(
            "1-image, 64 connections: ≥ 3.5× LitServe",
            f"LitServe {lit64['rps']:.0f} req/s",
            f"{one64['rps']:.0f} req/s = {x:.2f}×",
            x >= 3.5,
        )
    if one1 and bare1 and single.get("1"):
        forward_ms = 1000 / single["1"]
        bound = 1.5 * (bare1["p50_ms"] + forward_ms)
        add(
            "1 connection: p50 ≤ 1.5× (bare decoding p50 + one batch-1 forward)",
            f"1.5 × ({bare1['p50_ms']:.2f} + {forward_ms:.2f}) = {bound:.2f} ms",
            f"{one1['p50_ms']:.2f} ms",
            one1["p50_ms"] <= bound,
        )
    if one1 and lit1:
        x = one1["p50_ms"] / lit1["p50_ms"]
        add(
            "1 connection: p50 ≤ 0.4× LitServe's",
            f"LitServe {lit1['p50_ms']:.2f} ms",
            f"{one1['p50_ms']:.2f} ms = {x:.2f}×",
            x <= 0.4,
        )
    if batch16 and compute.get("64"):
        x = batch16["images_s"] / compute["64"]
        refused = sum(batch16["statuses"].values())
        add(
            "64-image requests, 16 connections: ≥ 0.8× in-process ONNX Runtime at batch 64, none refused",
            f"{compute['64']:.0f} img/s ({r['compute']['cnn']['threads']} threads)",
            f"{batch16['images_s']:.0f} img/s = {x:.2f}×; {refused} refused",
            x >= 0.8 and not refused and not batch16["errors"],
        )
    bare64 = find(r, bare, "one", 64)
    if one64 and bare64 and one64.get("cpu_s_per_1000") and bare64.get("cpu_s_per_1000"):
        x = one64["cpu_s_per_1000"] / bare64["cpu_s_per_1000"]
        add(
            "CPU s per 1,000 1-image requests ≤ 1.5× bare",
            f"bare {bare64['cpu_s_per_1000']:.3f} s",
            f"{one64['cpu_s_per_1000']:.3f} s = {x:.2f}×",
            x <= 1.5,
        )
    for c in (4, 16):
        now, before = (
            find(r, ours, "one", c),
            next((x for x in r["runs"] if "ref" in x and x["body"] == "one" and x["connections"] == c), None),
        )
        if now and before:
            x = now["rps"] / before["rps"]
            add(
                f"no loss at {c} connections against the torch server",
                f"{before['rps']:.0f} req/s",
                f"{now['rps']:.0f} req/s = {x:.2f}×",
                x >= 1,
            )
    starts = [s["seconds"] for s in r["startup"] if s["models"] == "cnn" and "ref" not in s]
    if starts:
        add(
            "start to ready, one model (default layout) ≤ 1 s",
            f"{len(starts)} starts",
            f"median {statistics.median(starts):.2f} s, worst {max(starts):.2f} s",
            statistics.median(starts) <= 1,
        )
    if moving:
        add(
            "alias move under load: 0 errors",
            "",
            f"{moving['errors']} in {moving['requests']} requests",
            moving["errors"] == 0 and not moving["statuses"],
        )
    return rows


def peer_table(r: dict[str, Any]) -> list[str]:
    """The issue's table: each server at 1, 16 and 64 connections, 1-image JSON requests."""
    rows = []
    for server in ("bare", BARE_DECODING, "LitServe", "digitserve", "digitserve --workers 1"):
        one, c16, c64 = (find(r, server, "one", c) for c in (1, 16, 64))
        if not (one and c16 and c64):
            continue
        cpu = f"{c64['cpu_s_per_1000']:.3f}" if c64.get("cpu_s_per_1000") else "-"
        rows.append(
            [
                server,
                f"{one['rps']:.0f}, {one['p50_ms']:.2f} ms",
                f"{c16['rps']:.0f}",
                f"{c64['rps']:.0f}, {c64['p99_ms']:.0f} ms",
                cpu,
            ]
        )
    header = [
        "server",
        "1 connection: req/s, p50",
        "16 connections: req/s",
        "64 connections: req/s, p99",
        "CPU s / 1,000 requests (64 conns)",
    ]
    return _table(header, rows)


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]


def _runs_table(runs: list[dict[str, Any]]) -> list[str]:
    header = ["server", "model", "request", "conns", "req/s (2xx)", "images/s (2xx)"]
    header += ["p50 ms", "p90 ms", "p99 ms", "max ms", "CPU s / 1k", "errors"]
    rows = [
        [r["server"], r["model"], BODIES[r["body"]], r["connections"], f"{r['rps']:.0f}", f"{r['images_s']:.0f}"]
        + [f"{r[k]:.2f}" for k in ("p50_ms", "p90_ms", "p99_ms", "max_ms")]
        + [f"{r['cpu_s_per_1000']:.3f}" if r.get("cpu_s_per_1000") else "-"]
        + [f"{r['errors']}" + (f" {r['statuses']}" if r["statuses"] else "")]
        for r in runs
    ]
    return _table(header, rows)


def _header(r: dict[str, Any]) -> list[str]:
    m = r["machine"]
    when = dt.datetime.fromtimestamp(r["started"], dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = ["# digitserve load benchmark", ""]
    if r["smoke"]:
        lines += ["**Smoke run: a second per scenario. It checks the harness; its numbers mean nothing.**", ""]
    lines += [
        f"Recorded {when} with `{r['command']}` (`make bench`), {r['seconds'] / 60:.1f} minutes.",
        "Regenerate with `make bench`; how to read it and what was changed to get here: bench/README.md.",
        "",
        f"- machine: {m['cpu']}; {m['os']}; load average {m['load_before']:.2f} before, {m['load_after']:.2f} after",
        f"- software: Python {m['python']}, " + ", ".join(f"{k} {v}" for k, v in m["packages"].items()),
        f"- load generator: {m['wrk']}, 1 thread, on the same cores as the server; commit {m['commit']}",
        "- models: " + "; ".join(f"{k}: {v}" for k, v in r["models"].items()),
        "",
    ]
    return lines


def markdown(r: dict[str, Any]) -> str:
    lines = _header(r)
    lines += ["## Servers", "", "CNN, 1-image JSON requests; digitserve in its default layout (`--workers auto`).", ""]
    lines += peer_table(r)
    lines += ["", "## Targets", "", "digitserve in its default layout, CNN, unless the row says otherwise.", ""]
    lines += _table(["target", "measured against", "measured", "result"], targets(r))
    lines += ["", "## Every run", ""]
    lines += _runs_table([run for run in r["runs"] if "ref" not in run])
    lines += _fresh_section(r)
    lines += ["", "## Compute limit (in-process forward pass, images/s)", ""]
    sizes = sorted({b for c in r["compute"].values() for b in c["images_s"]}, key=int)
    rows = [[m, c["threads"], *(f"{c['images_s'][b]:.0f}" for b in sizes)] for m, c in r["compute"].items()]
    lines += _table(["model", "ONNX Runtime threads", *(f"batch {b}" for b in sizes)], rows)
    lines += ["", "## Process start to ready (`digitserve serve`, polling /readyz every 20 ms)", ""]
    rows = [
        [s["models"], f"{s['seconds']:.2f}", f"{s['ref']} {s['label']}" if "ref" in s else "now"] for s in r["startup"]
    ]
    lines += _table(["models", "seconds", "commit"], rows)
    lines += ["", "## Memory (resident, all of a server's processes, after its warm-up run)", ""]
    lines += _table(["server", "MiB"], [[k, f"{v:.0f}"] for k, v in r.get("memory", {}).items()])
    lines += _alias_section(r) + _history_section(r)
    return "\n".join(lines) + "\n"


README_BEGIN = "<!-- bench/results.json: generated by bench/run.py, checked by tests/unit/test_published_figures.py -->"
README_END = "<!-- end of bench/results.json -->"


def readme_block(r: dict[str, Any]) -> str:
    """What the README quotes of a full run: when and where, the servers, the targets, start and
    memory -- between README_BEGIN and README_END, rewritten by `make bench`."""
    m = r["machine"]
    starts = [s["seconds"] for s in r["startup"] if s["models"] == "cnn" and "ref" not in s]
    one_worker = [s["seconds"] for s in r["startup"] if s["models"] == "cnn, --workers 1"]
    memory = r.get("memory", {})
    lines = [
        README_BEGIN,
        "",
        f"Measured {dt.datetime.fromtimestamp(r['started'], dt.UTC):%Y-%m-%d} at commit {m['commit']} by "
        f"`make bench` ({m['cpu']}; wrk with one thread on the same cores), CNN, 1-image JSON requests:",
        "",
        *peer_table(r),
        "",
        *_table(["target", "measured against", "measured", "result"], targets(r)),
        "",
        *_fresh_sentence(r),
        f"Start to ready, one model: median {statistics.median(starts):.2f} s with the default two workers"
        + (f", {statistics.median(one_worker):.2f} s with one" if one_worker else "")
        + ". Resident memory after warm-up: "
        + ", ".join(f"{k} {v:.0f} MiB" for k, v in memory.items())
        + ".",
        "",
        README_END,
    ]
    return "\n".join(lines)


def update_readme(r: dict[str, Any], readme: Path) -> bool:
    """Replace the README's block with this run's; False when the README has no block."""
    text = readme.read_text()
    if README_BEGIN not in text or README_END not in text:
        return False
    head, rest = text.split(README_BEGIN, 1)
    _, tail = rest.split(README_END, 1)
    readme.write_text(head + readme_block(r) + tail)
    return True


def _fresh_sentence(r: dict[str, Any]) -> list[str]:
    fresh = fresh_kept(r)
    if not fresh:
        return []
    rates = sorted(row["rps"] for row in fresh)
    flagged = sum(row["flagged"] for row in r["fresh_starts"])
    return [
        f"{len(fresh)} fresh starts of the default layout, one 64-connection run each: "
        + ", ".join(f"{x:.0f}" for x in rates)
        + f" req/s; {flagged} run(s) flagged for host CPU steal over {MAX_STEAL:.0%} (a flagged start is run again,"
        + f" {MAX_FLAGGED} times at most; every run in bench/results.md).",
        "",
    ]


def _fresh_section(r: dict[str, Any]) -> list[str]:
    runs = r.get("fresh_starts", [])
    if not runs:
        return []
    lines = [
        "",
        "## Fresh starts of the default layout (1-image JSON, 64 connections, one run each)",
        "",
        f"Host CPU steal from /proc/stat over each run; a run over {100 * MAX_STEAL:.0f}% is flagged and "
        "its start repeated. CPU seconds of each process during the run.",
        "",
    ]
    rows = [
        [
            row["start"],
            row["attempt"],
            f"{row['rps']:.0f}",
            f"{row['p99_ms']:.0f}",
            f"{100 * row['steal']:.1f}%" + (" flagged" if row["flagged"] else ""),
            ", ".join(f"{k} {v:.1f}" for k, v in row["cpu_s"].items()),
        ]
        for row in runs
    ]
    return lines + _table(["start", "attempt", "req/s", "p99 ms", "steal", "CPU s by process"], rows)


def _alias_section(r: dict[str, Any]) -> list[str]:
    moving = find(r, "digitserve, alias moving", "one", 64)
    if moving is None:
        return []
    lines = ["", "## Alias move under load", ""]
    for move in moving["moves"]:
        results = move["answer"]["results"]
        lines.append(f"- alias to v{move['to']}, admin reload answered in {move['reload_s']:.2f} s: {results}")
    lines.append(f"- images answered per version (Prometheus `digitserve_images_total`): {moving['served_by_version']}")
    return lines


def _history_section(r: dict[str, Any]) -> list[str]:
    runs = [run for run in r["runs"] if "ref" in run]
    if not runs and not r.get("skipped"):
        return []
    now = [run for run in (find(r, "digitserve", "one", 64), find(r, "digitserve", "batch", 64)) if run]
    lines = ["", "## Before / after: the same scenarios at earlier commits, in this run", ""]
    lines += _runs_table(runs + [{**run, "server": "now: " + run["server"]} for run in now])
    lines += [f"- skipped: {s}" for s in r.get("skipped", [])]
    return lines
