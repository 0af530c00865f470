"""Where keep-alive connections land decides what a light load gets from the default layout.

The kernel hands each new connection to one worker (by its addresses: each worker has a
listening socket of its own, SO_REUSEPORT), and a keep-alive
connection stays there. With two workers, 4 closed-loop clients whose connections all landed on
one worker share one core; 2 + 2 get both. This starts the default layout (2 workers), opens 32
connections, sorts them by the worker that holds them (from the workers' own sockets), and runs
4 clients for 3 s on 4 connections of one worker and on 2 of each, interleaved, `--rounds` times.
It is why tests/integration/test_overload.py runs its light load before and after the overload
on the same connections.

    .venv/bin/python bench/worker_placement.py [--rounds 3]   # writes bench/worker_placement_results.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

import harness as h  # noqa: E402
from support.hostile import address  # noqa: E402
from support.loadgen import Connection, ConnectionPool, build_request, closed_loop, owners  # noqa: E402
from support.registries import copy_shipped  # noqa: E402
from support.server import start_server, stop_server  # noqa: E402

from digitserve.serving.api.schemas import EXAMPLE_PNG_B64  # noqa: E402

CLIENTS, SECONDS = 4, 3.0
RESULTS = ROOT / "bench" / "worker_placement_results.json"


async def measure(server_pid: int, url: str, rounds: int) -> dict[str, list[float]]:
    host, port = address(url)
    request = build_request("/v1/models/cnn/predict", json.dumps({"images": [EXAMPLE_PNG_B64]}).encode(), host)
    pool = ConnectionPool(host, port, limit=32)
    await closed_loop(pool, request, 32, 2.0)
    by_worker: dict[int | None, list[Connection]] = {}
    for conn, worker in zip(pool.idle, owners(server_pid, port, pool.idle), strict=True):
        by_worker.setdefault(worker, []).append(conn)
    placed = sorted((conns for worker, conns in by_worker.items() if worker is not None), key=len, reverse=True)
    if len(placed) < 2 or len(placed[1]) < CLIENTS // 2 or len(placed[0]) < CLIENTS:
        raise SystemExit(f"the 32 connections landed {[len(v) for v in by_worker.values()]}: run again")
    one, other = placed[:2]
    layouts = {"4 on one worker": one[:CLIENTS], "2 on each worker": one[: CLIENTS // 2] + other[: CLIENTS // 2]}
    rps: dict[str, list[float]] = {name: [] for name in layouts}
    for _ in range(rounds):
        for name, conns in layouts.items():
            chosen = ConnectionPool(host, port, limit=CLIENTS, idle=list(conns), opened=CLIENTS)
            outcomes = await closed_loop(chosen, request, CLIENTS, SECONDS)
            assert set(chosen.idle) == set(conns), "a connection was replaced"
            assert all(o.status == 200 for o in outcomes), {o.status for o in outcomes}
            rps[name].append(round(len(outcomes) / SECONDS))
            print(f"{name}: {rps[name][-1]} req/s", flush=True)
    pool.close()
    return rps


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    registry = copy_shipped(Path(tempfile.mkdtemp(prefix="digitserve-placement-")))
    env = {"DIGITSERVE_REGISTRY": registry.uri, "DIGITSERVE_MODELS": "cnn", "DIGITSERVE_WORKERS": "2"}
    process, url = start_server({**env, "DIGITSERVE_POLL_SECONDS": "3600"})
    try:
        rps = asyncio.run(measure(process.pid, url, args.rounds))
    finally:
        stop_server(process)
    ratios = [round(a / b, 2) for a, b in zip(rps["4 on one worker"], rps["2 on each worker"], strict=True)]
    doc: dict[str, Any] = {"clients": CLIENTS, "seconds": SECONDS, "req_per_s": rps, "ratio_one_over_both": ratios}
    return h.write_results(RESULTS, doc)


if __name__ == "__main__":
    sys.exit(main())
