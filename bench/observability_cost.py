"""What observability costs the predictions: throughput and latency with the request log and the
per-request metrics on (the default) against both off, in the same run.

The main benchmark's layout (`--workers auto`, the CNN, 1-image JSON predictions by wrk on the
same cores) at 16 and 64 connections. "on" is the server as shipped: one JSON access-log line per
request (to the server's log file, as a container's stdout goes to its log driver), requests
counted by route and status, answers by label, confidence, ink and drift. "off" sets
DIGITSERVE_ACCESS_LOG=false and DIGITSERVE_REQUEST_METRICS=false. Rounds alternate between the
two so drift on the machine hits both alike; each figure is the median over rounds.

    .venv/bin/python bench/observability_cost.py [--rounds 4] [--seconds 8]   # writes bench/observability_results.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import harness as h
from report import _git

HERE = Path(__file__).resolve().parent
LOADS = (16, 64)
OFF = {"access_log": "false", "request_metrics": "false"}


def access_lines(log: Path) -> int:
    """The access-log lines a server wrote (each must be JSON)."""
    lines = [json.loads(line) for line in log.read_text().splitlines() if '"digitserve.access"' in line]
    return len(lines)


def in_process_costs(n: int = 20_000) -> dict[str, float]:
    """Microseconds per request of each part "on" adds, in one process of this machine (the metrics
    in multiprocess mode, as `--workers auto` runs them; the log line written to a file)."""
    import logging
    import logging.config
    import os
    import time

    import numpy as np

    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="observability-metrics-")
    from digitserve.config import Observability
    from digitserve.serving.observability.logs import ACCESS_LOGGER, lean_records, logging_config
    from digitserve.serving.observability.metrics import ServiceMetrics

    metrics = ServiceMetrics()
    route = "/v1/models/{model}/predict"
    probabilities = np.full((1, 10), 0.01, np.float32)
    probabilities[0, 7] = 0.91
    is_digit, images = np.ones(1, bool), np.zeros((1, 28, 28), np.uint8)
    fields = {"request_id": "0" * 32, "method": "POST", "route": route, "status": 200, "duration_ms": 1.2,
              "client": "127.0.0.1", "model": "cnn", "version": 4, "alias": "production", "images": 1}  # fmt: skip
    lean_records()
    log_file = open(tempfile.mktemp(prefix="observability-log-"), "w")  # noqa: SIM115 (closed below)
    stdout, sys.stdout = sys.stdout, log_file
    try:
        logging.config.dictConfig(logging_config(Observability(log_format="json"), "warning"))
    finally:
        sys.stdout = stdout
    access = logging.getLogger(ACCESS_LOGGER)

    def timed(step: Any) -> float:
        start = time.perf_counter()
        for i in range(n):
            step(i)
        return round((time.perf_counter() - start) / n * 1e6, 2)

    def answers(i: int) -> None:
        metrics.answers.observe("cnn", 4, None, probabilities, is_digit, images)
        if i % 2000 == 0:  # about what a second of one worker's answers holds
            metrics.answers.flush()

    costs = {
        "access_line_us": timed(lambda i: access.info("%s %s %d", "POST", route, 200, extra=fields)),
        "request_metrics_us": timed(
            lambda i: (metrics.requests.labels(route, "POST", "200").inc(), metrics.latency.labels(route).observe(0.01))
        ),
        "answer_metrics_us": timed(answers),
    }
    log_file.close()
    return costs


def measure(rounds: int, seconds: float, loads: tuple[int, ...] = LOADS) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="observability-cost-"))
    registry, _ = h.make_registry(work / "registry")
    body = h.write_payloads(work / "payloads")["one"]
    runs: dict[str, dict[int, list[dict[str, Any]]]] = {name: {c: [] for c in loads} for name in ("off", "on")}
    logged: dict[str, list[int]] = {"off": [], "on": []}
    for r in range(rounds):
        for name in ("off", "on") if r % 2 == 0 else ("on", "off"):  # alternating: drift hits both alike
            env = h.server_env(registry, "cnn", **(OFF if name == "off" else {}))
            with h.start(f"observability-{name}-{r}", h.digitserve_cmd(), env, work) as server:
                url = f"{server.url}/v1/models/cnn/predict"
                h.wrk(url, body, 16, 2)  # warm-up
                for connections in loads:
                    runs[name][connections].append(h.wrk(url, body, connections, seconds))
            logged[name].append(access_lines(server.log))
    figures: dict[str, Any] = h.medians_by_load(runs)
    figures["access_lines_per_run"] = logged
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--connections", type=int, nargs="*", default=list(LOADS))
    parser.add_argument("--out", type=Path, default=HERE / "observability_results.json")
    args = parser.parse_args()
    figures = measure(args.rounds, args.seconds, tuple(args.connections))
    figures["ratio_on_over_off"] = h.ratios(figures["on"], figures["off"])
    figures["in_process"] = in_process_costs()
    figures["rounds"], figures["seconds"] = args.rounds, args.seconds
    figures["commit"] = _git("rev-parse", "--short", "HEAD")
    return h.write_results(args.out, figures)


if __name__ == "__main__":
    sys.exit(main())
