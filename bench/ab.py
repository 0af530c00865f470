"""This tree against an earlier commit, side by side: the same server layout (`--workers auto`,
the CNN, 1-image JSON requests) at 1, 16 and 64 connections, in alternating rounds so drift on
the machine hits both alike; each figure is the median over rounds, and the ratios are this
tree's over the commit's. For a change that must not cost anything (a refactor).

    .venv/bin/python bench/ab.py --ref e89f7bc [--rounds 3] [--seconds 8]   # writes bench/ab_results.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import harness as h
import report

HERE = Path(__file__).resolve().parent
LOADS = (1, 16, 64)
FIGURES = ("rps", "p50_ms", "p99_ms")


def measure(ref: str, rounds: int, seconds: float, loads: tuple[int, ...]) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="digitserve-ab-"))
    registry, _ = h.make_registry(work / "registry")
    body = h.write_payloads(work / "payloads")["one"]
    src = report.checkout_src(ref, work / "ref")
    if src is None:
        raise SystemExit(f"error: {ref} is not in this clone")
    sides = {"this tree": None, ref: src}
    runs: dict[str, dict[int, list[dict[str, Any]]]] = {name: {c: [] for c in loads} for name in sides}
    for _ in range(rounds):
        for name, tree in sides.items():
            env = h.server_env(registry, "cnn", tree)
            with h.start(f"ab-{len(runs[name][loads[0]])}", h.digitserve_cmd(tree, workers=2), env, work) as server:
                url = f"{server.url}/v1/models/cnn/predict"
                h.wrk(url, body, 16, 2)  # warm-up
                h.settle(server.url)
                for connections in loads:
                    result = h.wrk(url, body, connections, seconds)
                    h.settle(server.url)
                    if result["errors"] or result["statuses"]:
                        raise RuntimeError(f"{name} at {connections} connections: {result}")
                    runs[name][connections].append(result)
    medians = {
        name: {str(c): {k: statistics.median(r[k] for r in results) for k in FIGURES} for c, results in by.items()}
        for name, by in runs.items()
    }
    mine, theirs = medians["this tree"], medians[ref]
    ratios = {c: {k: mine[c][k] / theirs[c][k] for k in FIGURES} for c in mine}
    return {"ref": ref, "medians": medians, "ratio_this_over_ref": ratios, "runs": runs}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ref", required=True, help="the commit to compare with")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--connections", type=int, nargs="*", default=list(LOADS))
    parser.add_argument("--out", type=Path, default=HERE / "ab_results.json")
    args = parser.parse_args()
    load_before, started = report.loadavg(), time.time()
    figures = measure(args.ref, args.rounds, args.seconds, tuple(args.connections))
    figures.update(machine=report.machine(load_before), started=started, seconds=time.time() - started)
    figures["command"] = " ".join(["bench/ab.py", *sys.argv[1:]])
    args.out.write_text(json.dumps(figures, indent=1, default=str) + "\n")
    json.dump(
        {"medians": figures["medians"], "ratio_this_over_ref": figures["ratio_this_over_ref"]}, sys.stdout, indent=1
    )
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
