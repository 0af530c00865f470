"""What a shadow costs the clients: latency and throughput with a shadow at 100% against none.

The same server layout as the main benchmark (`--workers auto`, the CNN, 1-image JSON requests,
wrk on the same cores) at the benchmark's loads (1, 16 and 64 connections), with and without
`DIGITSERVE_SHADOW_ALIAS` naming a second version at `SHADOW_PERCENT=100`. Rounds alternate
between the two so drift on the machine hits both alike; each figure is the median over rounds.
Also recorded: the share of answers the shadow actually compared (it runs only with spare
capacity, so it falls as the load rises).

    .venv/bin/python bench/shadow_cost.py [--rounds 3] [--seconds 8]   # writes bench/shadow_results.json
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

import harness as h

HERE = Path(__file__).resolve().parent
LOADS = (1, 16, 64)


def measure(rounds: int, seconds: float, loads: tuple[int, ...] = LOADS) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="shadow-cost-"))
    registry, _ = h.make_registry(work / "registry")
    registry.move_alias("cnn", "shadow", 2, reason="bench: a shadow", gate={"forced": True, "passed": None})
    body = h.write_payloads(work / "payloads")["one"]
    settings = {"off": {}, "on": {"shadow_alias": "shadow", "shadow_percent": 100}}
    runs: dict[str, dict[int, list[dict[str, Any]]]] = {name: {c: [] for c in loads} for name in settings}
    for _ in range(rounds):
        for name, extra in settings.items():
            env = h.server_env(registry, "cnn", **extra)
            with h.start(f"shadow-{name}", h.digitserve_cmd(), env, work) as server:
                url = f"{server.url}/v1/models/cnn/predict"
                h.wrk(url, body, 16, 2)  # warm-up
                for connections in loads:
                    before = sum(h.metric_sum(server.url, "digitserve_rollout_compared_total").values())
                    result = h.wrk(url, body, connections, seconds)
                    after = sum(h.metric_sum(server.url, "digitserve_rollout_compared_total").values())
                    answered = max(result["rps"] * seconds, 1.0)
                    runs[name][connections].append({**result, "compared_share": (after - before) / answered})
    return h.medians_by_load(runs, ("rps", "p50_ms", "p99_ms", "compared_share"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--connections", type=int, nargs="*", default=list(LOADS))
    parser.add_argument("--out", type=Path, default=HERE / "shadow_results.json")
    args = parser.parse_args()
    figures = measure(args.rounds, args.seconds, tuple(args.connections))
    figures["ratio_on_over_off"] = h.ratios(figures["on"], figures["off"])
    figures["rounds"], figures["seconds"] = args.rounds, args.seconds
    return h.write_results(args.out, figures)


if __name__ == "__main__":
    sys.exit(main())
