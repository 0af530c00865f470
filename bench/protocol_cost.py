"""The price of digitserve's HTTP protocol (serving/http/protocol.py) against uvicorn's httptools.

The limits round two added (connection cap, head and body time limits, URL and header sizes,
refusals on arrival) run in Python callbacks on every request. Their cost is measured where it
shows most: on the bare FastAPI endpoint (bench/bare_app.py), whose whole work is HTTP and JSON.
Rounds alternate between the two protocols so drift on the machine hits both alike.

    .venv/bin/python bench/protocol_cost.py [--rounds 3] [--seconds 8] [--connections 64]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import harness as h

HERE = Path(__file__).resolve().parent


def measure(rounds: int, seconds: float, connections: int) -> dict[str, dict[str, float]]:
    work = Path(tempfile.mkdtemp(prefix="protocol-cost-"))
    body = h.write_payloads(work / "payloads")["one"]
    runs: dict[str, list[dict[str, float]]] = {"httptools": [], "limited": []}
    for _ in range(rounds):
        for http in runs:
            with h.start(f"bare-{http}", [*h.bare_cmd(), "--http", http], {}, work) as server:
                url = f"{server.url}/v1/models/cnn/predict"
                h.wrk(url, body, connections, 2)  # warm-up
                runs[http].append(h.wrk(url, body, connections, seconds))
    return {
        http: {
            "rps": statistics.median(r["rps"] for r in results),
            "p50_ms": statistics.median(r["p50_ms"] for r in results),
            "p99_ms": statistics.median(r["p99_ms"] for r in results),
            "errors": sum(r["errors"] for r in results),
        }
        for http, results in runs.items()
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "protocol_cost_results.json")
    args = parser.parse_args()
    figures = measure(args.rounds, args.seconds, args.connections)
    plain, limited = figures["httptools"], figures["limited"]
    figures["ratio"] = {k: limited[k] / plain[k] for k in ("rps", "p50_ms", "p99_ms")}
    figures["rounds"], figures["seconds"], figures["connections"] = args.rounds, args.seconds, args.connections
    return h.write_results(args.out, figures)


if __name__ == "__main__":
    sys.exit(main())
