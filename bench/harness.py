"""Pieces of the load benchmark: payloads, a private registry, server processes, and wrk.

Everything runs on loopback: each server is a real process on a free port, stopped with
SIGTERM; wrk (one thread, so it takes as little as possible of the cores the server needs)
drives it with `lua/post.lua`, which prints the run's figures as one JSON line.
"""

from __future__ import annotations

import base64
import io
import json
import os
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import report
from PIL import Image

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
PYTHON = sys.executable
POST_LUA = BENCH / "lua" / "post.lua"
sys.path.insert(0, str(ROOT / "tests"))  # the test suite's support: registries, server processes

from support.registries import copy_shipped, publish_variant  # noqa: E402
from support.server import spawn, stop_server  # noqa: E402

from digitserve.data import load_mnist  # noqa: E402
from digitserve.registry import ModelRegistry  # noqa: E402

ADMIN_TOKEN = "bench-admin-token"
JSON = "application/json"
BOUNDARY = "digitservebenchboundary"
# The shape of the shipped ViT (src/digitserve/training/recipe.py RECIPES["vit"]), for an untrained stand-in.
VIT_SHAPE = {"embed_dim": 64, "depth": 6, "num_heads": 4, "mlp_ratio": 3.0, "drop_rate": 0.0, "drop_path_rate": 0.05}


# --- payloads --------------------------------------------------------------------------------


def png_bytes(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def write_payloads(folder: Path, batch: int = 64) -> dict[str, Path]:
    """Request bodies made of real MNIST test digits, encoded as a client would send them."""
    digits = load_mnist("test").images[:batch]
    pngs = [png_bytes(d) for d in digits]
    b64 = [base64.b64encode(p).decode() for p in pngs]
    form = (
        (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="files"; filename="digit.png"\r\n'
            "Content-Type: image/png\r\n\r\n"
        ).encode()
        + pngs[0]
        + f"\r\n--{BOUNDARY}--\r\n".encode()
    )
    bodies = {
        "one": json.dumps({"images": b64[:1]}).encode(),
        "batch": json.dumps({"images": b64}).encode(),
        "upload": form,
    }
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, body in bodies.items():
        paths[name] = folder / f"{name}.body"
        paths[name].write_bytes(body)
    return paths


# --- a private registry ----------------------------------------------------------------------


def make_registry(folder: Path) -> tuple[ModelRegistry, dict[str, str]]:
    """A copy of the shipped cnn and vit (their production versions as v1), plus cnn v2, a
    slightly different version to move the alias to. Returns the registry and a note on each model."""
    registry = copy_shipped(folder, ("cnn", "vit"))
    publish_variant(registry, "cnn", 1)
    notes = {"cnn": "shipped cnn production (+ a variant to move the alias to)", "vit": "shipped vit production"}
    return registry, notes


@dataclass
class Server:
    """A server process on loopback; `ready_s` is the time from spawn to /readyz 200."""

    name: str
    process: subprocess.Popen[bytes]
    url: str
    log: Path
    ready_s: float = 0.0
    notes: dict[str, Any] = field(default_factory=dict)

    def stop(self, timeout_s: float = 40.0) -> int:
        return stop_server(self.process, timeout_s)

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start(
    name: str, cmd: Sequence[str], env: Mapping[str, str], logs: Path, timeout_s: float = 120.0, poll_s: float = 0.02
) -> Server:
    """Spawn `cmd` on 127.0.0.1 (it gets `--port`), polling /readyz every `poll_s` until 200."""
    log = logs / f"{name}.log"
    process, url, ready_s = spawn(
        [*cmd, "--host", "127.0.0.1"], env, log_path=log, ready_timeout_s=timeout_s, poll_s=poll_s
    )
    return Server(name, process, url, log, ready_s)


def http_status(url: str, data: bytes | None = None, headers: Mapping[str, str] | None = None) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data, dict(headers or {})), timeout=30) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


def http_text(url: str, data: bytes | None = None, headers: Mapping[str, str] | None = None) -> str:
    with urllib.request.urlopen(urllib.request.Request(url, data, dict(headers or {})), timeout=30) as r:
        return str(r.read().decode())


def digitserve_cmd(src: Path | None = None, workers: int = 0) -> list[str]:
    """`digitserve serve` (`workers` 0: the default layout), from this checkout or from another
    tree's `src` (an older commit)."""
    count = ["--workers", str(workers)] if workers else []
    if src is None:
        return [str(Path(PYTHON).with_name("digitserve")), "serve", *count]
    return [PYTHON, "-m", "digitserve.cli", "serve", *(count or ["--workers", "1"])]


def server_env(
    registry: ModelRegistry, models: str = "cnn", src: Path | None = None, **settings: Any
) -> dict[str, str]:
    """The server's environment: `settings` become DIGITSERVE_* variables (torch_threads=1, ...)."""
    env = {
        "DIGITSERVE_REGISTRY": registry.uri,
        "DIGITSERVE_MODELS": models,
        "DIGITSERVE_POLL_SECONDS": "3600",  # aliases move only when the benchmark says so
        "DIGITSERVE_ADMIN_TOKEN": ADMIN_TOKEN,
        "DIGITSERVE_LOG_LEVEL": "warning",
    }
    env.update({f"DIGITSERVE_{k.upper()}": str(v) for k, v in settings.items()})
    if src is not None:
        env["PYTHONPATH"] = str(src)
    return env


def bare_cmd(workers: int = 1, decode: bool = False) -> list[str]:
    return [PYTHON, str(BENCH / "bare_app.py"), "--workers", str(workers)] + (["--decode"] if decode else [])


# --- load ------------------------------------------------------------------------------------


def wrk(
    url: str,
    body: Path,
    connections: int,
    seconds: float,
    content_type: str = JSON,
    images: int = 1,
    header: str | None = None,
) -> dict[str, Any]:
    """One wrk run; returns its figures (latencies in ms) with requests/s and images/s answered 2xx.
    `header` is one more request header, "Name: value"."""
    proc = wrk_start(url, body, connections, seconds, content_type, header)
    return wrk_result(proc, images)


def wrk_start(
    url: str, body: Path, connections: int, seconds: float, content_type: str, header: str | None = None
) -> subprocess.Popen[str]:
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{max(seconds, 1):.0f}s", "--timeout", "15s", "-s", str(POST_LUA)]
    args = [str(body), content_type, *([header] if header else [])]
    return subprocess.Popen([*cmd, url, "--", *args], stdout=subprocess.PIPE, text=True)


def wrk_result(proc: subprocess.Popen[str], images: int = 1) -> dict[str, Any]:
    out, _ = proc.communicate()
    line = next((ln for ln in out.splitlines() if ln.startswith("WRK_JSON ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {out[-2000:]}")
    raw = json.loads(line.removeprefix("WRK_JSON "))
    seconds = raw["duration_us"] / 1e6
    errors = sum(raw[k] for k in ("connect_errors", "read_errors", "write_errors", "status_errors", "timeouts"))
    answered = raw["requests"] - sum(raw["statuses"].values())  # 2xx: a 503 is no throughput
    return {
        "requests": raw["requests"],
        "rps": answered / seconds,
        "images_s": answered * images / seconds,
        "p50_ms": raw["p50_us"] / 1000,
        "p90_ms": raw["p90_us"] / 1000,
        "p99_ms": raw["p99_us"] / 1000,
        "max_ms": raw["max_us"] / 1000,
        "errors": errors,
        "statuses": raw["statuses"],
    }


def settle(url: str, timeout_s: float = 120.0) -> None:
    """Wait until the server has worked off what the last run left queued (its clients are gone,
    but the server still computes their answers), so one run's backlog never slows the next."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if sum(metric_sum(url, "digitserve_queue_depth").values()) == 0:
                break
        except OSError:  # the bare app has no /metrics and no queue
            break
        time.sleep(0.1)
    time.sleep(0.5)


def metric_sum(url: str, name: str) -> dict[str, float]:
    """Prometheus samples of `name` from /metrics, by their label string."""
    out: dict[str, float] = {}
    for line in http_text(f"{url}/metrics").splitlines():
        if line.startswith(name):
            labels, _, value = line.rpartition(" ")
            out[labels.removeprefix(name)] = float(value)
    return out


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and all its children (workers, LitServe's processes)."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0.0
    for proc in procs:
        try:
            times = proc.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def process_tree_cpu(pid: int) -> dict[str, float]:
    """User + system CPU seconds of a process and each of its children, by role: "supervisor" (the
    process itself), "worker N" (its children, by start order), "decoder N.M" (the workers'
    children), "other" (multiprocessing's resource trackers, together)."""
    import psutil

    def helper(proc: psutil.Process) -> bool:
        try:
            return any("resource_tracker" in part for part in proc.cmdline())
        except psutil.Error:
            return True

    try:
        root = psutil.Process(pid)
        children = sorted(root.children(), key=lambda p: (p.create_time(), p.pid))
        workers = [c for c in children if not helper(c)]
        roles = [("supervisor", root)] + [(f"worker {i}", w) for i, w in enumerate(workers)]
        roles += [("other", c) for c in children if helper(c)]
        for i, worker in enumerate(workers):
            grandchildren = sorted(worker.children(recursive=True), key=lambda p: (p.create_time(), p.pid))
            decoders = [d for d in grandchildren if not helper(d)]
            roles += [(f"decoder {i}.{j}", d) for j, d in enumerate(decoders)]
            roles += [("other", d) for d in grandchildren if helper(d)]
    except psutil.Error:
        return {}
    out: dict[str, float] = {}
    for role, proc in roles:
        try:
            times = proc.cpu_times()
        except psutil.Error:
            continue
        out[role] = out.get(role, 0.0) + times.user + times.system
    return out


def host_cpu_ticks() -> list[int]:
    """The host's CPU time so far, in clock ticks: /proc/stat's cpu line (user, nice, system, idle,
    iowait, irq, softirq, steal, ...)."""
    with open("/proc/stat") as stat:
        return [int(v) for v in stat.readline().split()[1:]]


def steal_share(before: list[int], after: list[int]) -> float:
    """The share of the host's CPU time between two readings that the hypervisor gave elsewhere."""
    delta = [a - b for a, b in zip(after[:8], before[:8], strict=True)]  # guest time is inside user already
    total = sum(delta)
    return delta[7] / total if total > 0 else 0.0


def process_rss_mib(pid: int) -> float:
    """Resident memory of a process and all its children, MiB."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0
    for proc in procs:
        try:
            total += proc.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return total / 2**20


def litserve_cmd(registry: ModelRegistry, model: str = "cnn") -> list[str]:
    return [PYTHON, str(BENCH / "litserve_app.py"), "--registry", registry.uri, "--model", model]


def medians_by_load(
    runs: Mapping[str, Mapping[int, Sequence[Mapping[str, float]]]], keys: Sequence[str] = ("rps", "p50_ms", "p99_ms")
) -> dict[str, dict[str, dict[str, float]]]:
    """{variant: {connections: [one round's figures, ...]}} -> the median of each of `keys` over the
    rounds, by variant and load (connections as strings, for JSON)."""
    return {
        name: {str(c): {k: statistics.median(r[k] for r in rounds) for k in keys} for c, rounds in by_load.items()}
        for name, by_load in runs.items()
    }


Figures = Mapping[str, Mapping[str, float]]


def ratios(on: Figures, off: Figures) -> dict[str, dict[str, float]]:
    """Each load's throughput and latency with the feature on over the same run's figures with it off."""
    return {c: {k: on[c][k] / off[c][k] for k in ("rps", "p50_ms", "p99_ms")} for c in on}


def write_results(path: Path, figures: Mapping[str, Any]) -> int:
    """A benchmark's figures into its committed results file with the machine and commit they were
    measured on (`machine`: report.machine), and on stdout; the exit status 0."""
    figures = {**figures, "machine": figures.get("machine") or report.machine(os.getloadavg()[0])}
    figures["date"] = time.strftime("%Y-%m-%d")
    path.write_text(json.dumps(figures, indent=2) + "\n")
    json.dump(figures, sys.stdout, indent=2)
    print()
    return 0
