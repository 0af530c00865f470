"""How late the event loop runs: the wait every request has behind whatever holds the loop.

A task asks to wake every `INTERVAL_S` and records how much later than asked it woke -- the time
some other work kept the loop (decoding on the loop, a long JSON render, a blocking call). Its
histogram and its worst value since start are in `/metrics`; the tests read them to show that
hostile requests never stall the loop, measured inside the server, whatever the machine's load
does to a client's own clock.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable

from digitserve.serving.observability.logs import drain
from digitserve.serving.observability.metrics import ServiceMetrics

log = logging.getLogger(__name__)
INTERVAL_S = 0.05
SAMPLE_EVERY = 20  # ticks: the predictions in progress are sampled once a second


class LoopLag:
    """Once a second also samples the predictions in progress (`in_progress`) into their gauge (a
    gauge written on every arrival and answer would cost two writes per request) and counts the
    answers noted since the last second (`AnswerMetrics.flush`)."""

    def __init__(
        self, metrics: ServiceMetrics, in_progress: Callable[[], int] = lambda: 0, interval_s: float = INTERVAL_S
    ) -> None:
        self.metrics = metrics
        self.in_progress = in_progress
        self.interval_s = interval_s
        self.worst = 0.0

    async def run(self) -> None:
        for tick in itertools.count():
            drain()  # the log lines of the last tick, in one write
            if tick % SAMPLE_EVERY == 0:
                self.metrics.in_progress.set(self.in_progress())
                try:
                    self.metrics.answers.flush()
                except Exception:  # a bug there must not stop the probe (nor the in-progress gauge)
                    log.exception("counting the answers failed")
            due = time.monotonic() + self.interval_s
            await asyncio.sleep(self.interval_s)
            lag = max(0.0, time.monotonic() - due)
            self.metrics.loop_lag.observe(lag)
            if lag > self.worst:
                self.worst = lag
                self.metrics.loop_lag_max.set(lag)
