"""What feedback costs the predictions: latency and throughput with feedback arriving against none.

The main benchmark's layout (`--workers auto`, the CNN, 1-image JSON predictions by wrk on the
same cores) at its loads (1, 16 and 64 connections), with and without a steady stream of
feedback: `FEEDBACK_PER_S` corrections a second (each a distinct 28x28 digit, from clients of
their own networks, as the page's "It is a ..." buttons send them), spooled and written to the
registry while wrk runs. Rounds alternate between the two so drift on the machine hits both
alike; each figure is the median over rounds. Also recorded: the feedback the server accepted
(201) and refused, per run.

    .venv/bin/python bench/feedback_cost.py [--rounds 3] [--seconds 8]   # writes bench/feedback_results.json
"""

from __future__ import annotations

import argparse
import base64
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import harness as h
import httpx
from report import _git
from support.registries import png_bytes

from digitserve.data import load_mnist

HERE = Path(__file__).resolve().parent
LOADS = (1, 16, 64)
FEEDBACK_PER_S = 20.0  # far more than people press buttons on one replica: an upper bound


class FeedbackStream:
    """Corrections posted at `per_s` in a thread until stopped; counts the answers by status."""

    def __init__(self, url: str, per_s: float, offset: int) -> None:
        self.url, self.per_s, self.offset = url, per_s, offset
        self.statuses: Counter[int | str] = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._digits = load_mnist("test")

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as client:
            i = self.offset
            next_at = time.monotonic()
            while not self._stop.is_set():
                image, label = self._digits.images[i % 10000], int(self._digits.labels[i % 10000])
                body = {
                    "image": base64.b64encode(png_bytes(image)).decode(),
                    "model": "cnn",
                    "version": 1,
                    "predicted": (label + 1) % 10,
                    "label": label,
                }
                headers = {"X-Forwarded-For": f"10.{i % 200}.{i // 200 % 250}.1"}  # people on their own networks
                try:
                    self.statuses[client.post("/v1/feedback", json=body, headers=headers).status_code] += 1
                except httpx.HTTPError as exc:
                    self.statuses[type(exc).__name__] += 1
                i += 1
                next_at += 1 / self.per_s
                self._stop.wait(max(next_at - time.monotonic(), 0))
        self.offset = i

    def __enter__(self) -> FeedbackStream:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)


def measure(rounds: int, seconds: float, loads: tuple[int, ...] = LOADS) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="feedback-cost-"))
    registry, _ = h.make_registry(work / "registry")
    body = h.write_payloads(work / "payloads")["one"]
    runs: dict[str, dict[int, list[dict[str, Any]]]] = {name: {c: [] for c in loads} for name in ("off", "on")}
    sent = 0
    for r in range(rounds):
        for name in ("off", "on") if r % 2 == 0 else ("on", "off"):  # alternating: drift hits both alike
            env = {
                **h.server_env(registry, "cnn", feedback_spool_dir=str(work / f"spool-{r}-{name}")),
                "FORWARDED_ALLOW_IPS": "127.0.0.1",  # the stream's clients say which network they are
            }
            with h.start(f"feedback-{name}", h.digitserve_cmd(), env, work) as server:
                url = f"{server.url}/v1/models/cnn/predict"
                h.wrk(url, body, 16, 2)  # warm-up
                for connections in loads:
                    if name == "off":
                        runs[name][connections].append(h.wrk(url, body, connections, seconds))
                        continue
                    with FeedbackStream(server.url, FEEDBACK_PER_S, sent) as stream:
                        result = h.wrk(url, body, connections, seconds)
                    sent = stream.offset
                    accepted = stream.statuses.get(201, 0)
                    others = {str(k): v for k, v in stream.statuses.items() if k != 201}
                    runs[name][connections].append({**result, "feedback_accepted": accepted, "feedback_other": others})
    figures: dict[str, Any] = h.medians_by_load(runs)
    figures["feedback"] = {
        str(c): {"accepted": [r["feedback_accepted"] for r in results], "other": [r["feedback_other"] for r in results]}
        for c, results in runs["on"].items()
    }
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--connections", type=int, nargs="*", default=list(LOADS))
    parser.add_argument("--out", type=Path, default=HERE / "feedback_results.json")
    args = parser.parse_args()
    figures = measure(args.rounds, args.seconds, tuple(args.connections))
    figures["ratio_on_over_off"] = h.ratios(figures["on"], figures["off"])
    figures["feedback_per_s"] = FEEDBACK_PER_S
    figures["rounds"], figures["seconds"] = args.rounds, args.seconds
    accepted = [n for c in figures["feedback"].values() for n in c["accepted"]]
    figures["feedback_accepted_per_s"] = round(statistics.median(accepted) / args.seconds, 1)
    figures["commit"] = _git("rev-parse", "--short", "HEAD")
    return h.write_results(args.out, figures)


if __name__ == "__main__":
    sys.exit(main())
