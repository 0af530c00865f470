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
PACKAGES = ("torch", "timm", "fastapi", "starlette", "uvicorn", "uvloop", "httptools", "pydantic", "orjson", "numpy")
BODIES = {"one": "1 image, JSON", "batch": "64 images, JSON", "upload": "1 image, multipart"}


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
    dirty = " (with uncommitted changes)" if _git("status", "--porcelain", "--untracked-files=no") else ""
    return {
        "cpu": f"{cpu}, {os.cpu_count()} cores, {mem_kb / 2**20:.0f} GiB",
        "os": f"{platform.system()} {platform.release()}",
        "python": sys.version.split()[0],
        "packages": versions,
        "wrk": " ".join(wrk.split()[:2]),
        "commit": _git("rev-parse", "--short", "HEAD") + dirty,
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


def targets(r: dict[str, Any]) -> list[list[str]]:
    """[target, limit it is measured against, measured, pass/short] for each target of issue 6."""
    bare, one = find(r, "bare", "one", 64), find(r, "digitserve", "one", 64)
    batch, off = find(r, "digitserve", "batch", 64), find(r, "digitserve, batching off", "one", 64)
    moving = find(r, "digitserve, alias moving", "one", 64)
    compute64 = r["compute"].get("cnn", {}).get("images_s", {}).get("64")
    rows: list[list[str]] = []

    def add(target: str, against: str, measured: str, ok: bool) -> None:
        rows.append([target, against, measured, "**pass**" if ok else "**short**"])

    if bare and one:
        x = one["rps"] / bare["rps"]
        add(
            "1-image throughput ≥ 60% of bare",
            f"bare {bare['rps']:.0f} req/s",
            f"{one['rps']:.0f} req/s = {x:.0%}",
            x >= 0.6,
        )
        x = one["p99_ms"] / bare["p99_ms"]
        add(
            "1-image p99 ≤ 2× bare's p99", f"bare {bare['p99_ms']:.1f} ms", f"{one['p99_ms']:.1f} ms = {x:.2f}×", x <= 2
        )
    if compute64:
        against = f"in-process, batch 64: {compute64:.0f} img/s"
        for name, row in [
            ("64-image requests ≥ 80% of compute", batch),
            ("… at 16 connections (1,024 images in flight fit the default queue)", find(r, "digitserve", "batch", 16)),
            ("… `--workers 2`, 16 connections", find(r, "digitserve --workers 2", "batch", 16)),
            ("… `--workers 2`, 64 connections", find(r, "digitserve --workers 2", "batch", 64)),
        ]:
            if row:
                x = row["images_s"] / compute64
                errors = f", {row['errors']} errors" if row["errors"] else ""
                add(name, against, f"{row['images_s']:.0f} img/s = {x:.0%}{errors}", x >= 0.8)
    if one and off:
        x = one["rps"] / off["rps"]
        add(
            "batching ≥ 2× no batching",
            f"batching off {off['rps']:.0f} req/s",
            f"{one['rps']:.0f} req/s = {x:.2f}×",
            x >= 2,
        )
    if moving and one:
        add(
            "alias move: zero errors", "", f"{moving['errors']} in {moving['requests']} requests", moving["errors"] == 0
        )
        x = moving["p99_ms"] / one["p99_ms"]
        add(
            "alias move: p99 ≤ 2× steady",
            f"steady {one['p99_ms']:.1f} ms",
            f"{moving['p99_ms']:.1f} ms = {x:.2f}×",
            x <= 2,
        )
    starts = [s["seconds"] for s in r["startup"] if s["models"] == "cnn" and "ref" not in s]
    if starts:
        measured = f"median {statistics.median(starts):.2f} s, worst {max(starts):.2f} s"
        add("start to ready ≤ 5 s (cnn)", f"{len(starts)} starts", measured, max(starts) <= 5)
    return rows


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]


def _runs_table(runs: list[dict[str, Any]]) -> list[str]:
    header = ["server", "model", "request", "conns", "req/s (2xx)", "images/s (2xx)"]
    header += ["p50 ms", "p90 ms", "p99 ms", "max ms", "errors"]
    rows = [
        [r["server"], r["model"], BODIES[r["body"]], r["connections"], f"{r['rps']:.0f}", f"{r['images_s']:.0f}"]
        + [f"{r[k]:.1f}" for k in ("p50_ms", "p90_ms", "p99_ms", "max_ms")]
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
    lines += ["## Targets", "", "One server worker, CNN, 64 connections, unless the row says otherwise.", ""]
    lines += _table(["target", "measured against", "measured", "result"], targets(r))
    lines += ["", "## Every run", ""]
    lines += _runs_table([run for run in r["runs"] if "ref" not in run])
    lines += ["", "## Compute limit (in-process forward pass, images/s)", ""]
    sizes = sorted({b for c in r["compute"].values() for b in c["images_s"]}, key=int)
    rows = [[m, c["threads"], *(f"{c['images_s'][b]:.0f}" for b in sizes)] for m, c in r["compute"].items()]
    lines += _table(["model", "torch threads", *(f"batch {b}" for b in sizes)], rows)
    lines += ["", "## Process start to ready (`digitserve serve`, polling /readyz every 20 ms)", ""]
    rows = [
        [s["models"], f"{s['seconds']:.2f}", f"{s['ref']} {s['label']}" if "ref" in s else "now"] for s in r["startup"]
    ]
    lines += _table(["models", "seconds", "commit"], rows)
    lines += _alias_section(r) + _history_section(r)
    return "\n".join(lines) + "\n"


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
