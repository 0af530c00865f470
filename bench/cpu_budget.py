"""Where a prediction's CPU goes: CPU seconds per 1,000 requests, by stage, from a profile of the real server.

    .venv/bin/python bench/cpu_budget.py                       # 3 rounds of 12 s, 1-image JSON, 64 connections
    .venv/bin/python bench/cpu_budget.py --rounds 1 --seconds 6 --out /tmp/budget.json

One worker of the default layout -- `digitserve serve --workers 1` with one ONNX Runtime thread,
as each of the default layout's one-per-core workers runs -- answers wrk's load while py-spy
samples every thread of it 250 times a second. Each thread's CPU seconds over the run come from
the kernel (user + system); py-spy's samples of that thread only say how they divide among the
stages: a sample is put in the stage of its innermost frame that names one (`STAGES`: the
forward pass is ONNX Runtime's `run`, JSON parsing inside a route is validation, and so on).
A thread with CPU but no Python frame (a native thread) is reported by itself, and so is the CPU
of threads that ended before the round did (the process's total, from the kernel, less what the
threads alive at the end account for): never spread over the stages. Per 1,000 requests: divided
by the requests answered (2xx). Writes bench/cpu_budget_results.json (the README quotes it;
tests/unit/test_published_figures.py checks the quote).
"""

from __future__ import annotations

import argparse
import collections
import statistics
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import harness as h
import psutil

RESULTS = h.BENCH / "cpu_budget_results.json"
RATE = 250  # py-spy samples per second and thread
# (stage, marks): a frame belongs to the first stage one of whose marks it contains; a sample is
# put in the stage of its innermost frame that belongs to one (py-spy frames: "func (path:line)");
# a frame of a library used everywhere (numpy, typing) is passed over for the code that called it.
STAGES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("forward pass (ONNX Runtime)", ("onnxruntime/", "digitserve/runtime/")),
    ("base64", ("base64.py", "binascii")),
    (
        "decode and preprocessing",
        ("PIL/", "digitserve/imaging/", "digitserve/serving/inference/decoding.py"),
    ),
    ("request log (logging, python-json-logger)", ("logging/", "pythonjsonlogger/")),
    (
        "metrics, rollouts, feedback",
        (
            "prometheus_client/",
            "digitserve/serving/observability/",
            "digitserve/serving/rollouts/",
            "digitserve/serving/feedback/",
        ),
    ),
    ("answer encoding (orjson)", ("digitserve/serving/responses.py", "orjson")),
    (
        "batching and thread hops",
        (
            "digitserve/serving/inference/batching.py",
            "digitserve/serving/inference/state.py",
            "digitserve/serving/inference/versions.py",
            "concurrent/futures/",
            "threading.py",
            "queue.py",
        ),
    ),
    (
        "routing and validation (digitserve)",
        (
            "digitserve/serving/api/",
            "digitserve/serving/pipeline.py",
            "digitserve/serving/http/edge.py",
            "digitserve/serving/http/admission.py",
            "digitserve/serving/http/routes.py",
            "digitserve/serving/deps.py",
            "digitserve/serving/clients.py",
            "digitserve/serving/errors.py",
            "pydantic",
            "json/",
        ),
    ),
    ("FastAPI and Starlette", ("fastapi/", "starlette/", "anyio/")),
    ("HTTP protocol (uvicorn, httptools)", ("uvicorn/", "httptools", "h11/", "digitserve/serving/http/protocol.py")),
    ("event loop", ("asyncio/", "selectors.py", "uvloop")),
)
OTHER = "other Python"
NATIVE = "threads without Python frames"
ENDED = "threads that ended during the round"


def stage_of(frames: Sequence[str]) -> str:
    """The stage of a sample: that of its innermost frame that belongs to one."""
    for frame in reversed(frames):
        for stage, marks in STAGES:
            if any(mark in frame for mark in marks):
                return stage
    return OTHER


def thread_samples(stacks: Path) -> dict[int, collections.Counter[str]]:
    """Samples per stage for each thread (its OS id), from py-spy's raw output: lines of
    "process ...;thread (tid): name;frame;...;frame count"."""
    by_thread: dict[int, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for line in stacks.read_text().splitlines():
        path, _, count = line.rpartition(" ")
        parts = path.split(";")
        thread = next((p for p in parts if p.startswith("thread (")), None)
        if thread is None:
            continue
        tid = int(thread.removeprefix("thread (").split(")", 1)[0], 0)
        by_thread[tid][stage_of([frame for frame in parts if ".py:" in frame])] += int(count)
    return by_thread


def thread_cpu(pid: int) -> dict[int, tuple[str, float]]:
    """Each thread of the process and its children: (name, user + system CPU seconds so far)."""
    out: dict[int, tuple[str, float]] = {}
    root = psutil.Process(pid)
    for process in (root, *root.children(recursive=True)):
        for thread in process.threads():
            try:
                name = Path(f"/proc/{process.pid}/task/{thread.id}/comm").read_text().strip()
            except OSError:
                continue
            out[thread.id] = (name, thread.user_time + thread.system_time)
    return out


def one_round(server: h.Server, body: Path, url: str, seconds: int, out: Path, n: int) -> dict[str, Any]:
    """One wrk run of `seconds` under py-spy; the CPU per 1,000 answered requests by stage."""
    stacks = out / f"round-{n}.txt"
    spy = [str(Path(h.PYTHON).with_name("py-spy")), "record", "--pid", str(server.process.pid)]
    spy += ["--rate", str(RATE), "--duration", str(seconds), "--nonblocking", "--threads", "--subprocesses"]
    before, process_before = thread_cpu(server.process.pid), h.process_cpu_seconds(server.process.pid)
    load = h.wrk_start(url, body, 64, seconds, h.JSON)
    sampler = subprocess.Popen([*spy, "--format", "raw", "-o", str(stacks)], stdout=subprocess.DEVNULL)
    figures = h.wrk_result(load)
    after, process_after = thread_cpu(server.process.pid), h.process_cpu_seconds(server.process.pid)
    if sampler.wait(timeout=seconds + 30) != 0:
        raise RuntimeError(f"py-spy failed ({sampler.returncode})")
    answered = figures["requests"] - sum(figures["statuses"].values())
    if answered <= 0 or figures["errors"]:
        raise RuntimeError(f"the load was not answered: {figures}")
    per_1000 = 1000 / answered
    samples = thread_samples(stacks)
    stages: collections.Counter[str] = collections.Counter()
    threads = {}
    for tid, (name, cpu) in after.items():
        used = cpu - before.get(tid, (name, 0.0))[1]
        if used <= 0:
            continue
        threads[f"{name} ({tid})"] = used * per_1000
        seen = samples.get(tid)
        if not seen:
            stages[NATIVE] += used * per_1000
            continue
        for stage, count in seen.items():
            stages[stage] += used * count / sum(seen.values()) * per_1000
    # the process's own total (the kernel's, threads that ended included) is the whole; what the
    # threads alive at the end do not account for is shown as such, never spread over the stages
    cpu_s = (process_after - process_before) * per_1000
    stages[ENDED] = max(cpu_s - sum(threads.values()), 0.0)
    return {"rps": figures["rps"], "cpu_s_per_1000": cpu_s, "stages": dict(stages), "threads": threads}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=12)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.rounds < 1 or args.seconds < 2:
        parser.error("--rounds must be at least 1 and --seconds at least 2")
    work = Path(tempfile.mkdtemp(prefix="digitserve-cpu-budget-"))
    registry, _ = h.make_registry(work / "registry")
    body = h.write_payloads(work / "bodies")["one"]
    env = h.server_env(registry, "cnn", runtime_threads=1)  # as each of the default layout's workers runs
    with h.start("budget", h.digitserve_cmd(workers=1), env, work) as server:
        url = f"{server.url}/v1/models/cnn/predict"
        h.wrk(url, body, 64, 3)  # warm: sessions, allocator, connection setup
        h.settle(server.url)
        rounds = []
        for n in range(args.rounds):
            rounds.append(one_round(server, body, url, args.seconds, work, n))
            h.settle(server.url)
    names = sorted(
        {s for r in rounds for s in r["stages"]},
        key=lambda s: -statistics.median(r["stages"].get(s, 0.0) for r in rounds),
    )
    h.write_results(
        args.out,
        {
            "what": "CPU seconds per 1,000 answered predictions (= ms per request), by stage: median of the rounds",
            "command": f".venv/bin/python bench/cpu_budget.py --rounds {args.rounds} --seconds {args.seconds}",
            "load": "1-image JSON (a 28x28 PNG, base64), 64 connections, wrk; one server process as the default "
            "layout runs one per core (digitserve serve --workers 1, DIGITSERVE_RUNTIME_THREADS=1)",
            "rps": round(statistics.median(r["rps"] for r in rounds), 1),
            "cpu_s_per_1000": round(statistics.median(r["cpu_s_per_1000"] for r in rounds), 3),
            "stages": {s: round(statistics.median(r["stages"].get(s, 0.0) for r in rounds), 3) for s in names},
            "rounds": rounds,
        },
    )


if __name__ == "__main__":
    main()
