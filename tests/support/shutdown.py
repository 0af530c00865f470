"""The SIGTERM-under-load scenario of tests/hostile/test_round_two.py (twenty runs per layout)."""

from __future__ import annotations

import asyncio
import math
import re
import signal
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import httpx

from digitserve.serving.api.schemas import EXAMPLE_PNG_B64
from support.server import start_server
from support.waits import until


def listener_closed_at(log: Path) -> float:
    """When the first of the server's workers closed its listener (time.monotonic, from its log)."""
    found = re.findall(r"listener closed at monotonic ([0-9.]+)", log.read_text(errors="replace"))
    return min(map(float, found), default=float("inf"))


def listeners_closed(log: Path) -> int:
    """How many of the server's listening sockets are closed, from its log: one a worker, and the
    worker supervisor's copy (two workers or more)."""
    text = log.read_text(errors="replace")
    return text.count("listener closed at monotonic") + text.count("the supervisor let go of the listening socket")


@dataclass(frozen=True)
class Outcome:
    at: float  # time.monotonic() the request was written; for one refused at connect, of the refusal
    result: str  # "ok", "503 shutting_down", "not accepted" or "dropped: <error>"
    answered_at: float | None = None  # when its answer arrived


BURST, IN_FLIGHT = 32, 8  # sent at once before the signal; written and unanswered when it comes
BURSTS = 5  # bursts at most, one after another, until one has IN_FLIGHT at once
WAIT_S = 30.0  # for the answers and writes the scenario waits on


@dataclass(frozen=True)
class ShutdownRun:
    outcomes: list[Outcome]
    sigterm_at: float  # time.monotonic() just before SIGTERM was sent

    def in_flight_at_sigterm(self) -> list[Outcome]:
        """The requests written before the signal and not answered by then: what the drain must finish."""
        return [
            o
            for o in self.outcomes
            if o.result != "not accepted" and o.at < self.sigterm_at and (o.answered_at or math.inf) > self.sigterm_at
        ]

    def answered_before_sigterm(self) -> list[Outcome]:
        """The requests whose answer arrived before the signal was sent: the server served them
        while not yet draining, so each must be a 200."""
        return [o for o in self.outcomes if o.answered_at is not None and o.answered_at < self.sigterm_at]


def sigterm_under_load(registry_uri: str, log: Path, workers: int = 1) -> ShutdownRun:
    """A server under load gets SIGTERM: 400 requests of 4 digits over ~2 s; after the 150th, once 20
    answers have arrived (a slow machine is waited for), a burst of 32 more at once, and SIGTERM as
    soon as 8 of the burst are written and unanswered -- the paced load alone is answered as fast as
    it comes, and the signal must find requests in flight. Returns each request's outcome and the
    moment of the signal."""
    env = {"DIGITSERVE_REGISTRY": registry_uri, "DIGITSERVE_MODELS": "cnn", "DIGITSERVE_SHUTDOWN_GRACE_S": "0.5"}
    process, url = start_server({**env, "DIGITSERVE_WORKERS": str(workers)}, log_path=log)
    outcomes: list[Outcome] = []
    sigterm_at = [float("inf")]
    written: set[int] = set()  # requests written and not answered (or failed) yet
    armed = [False]  # the signal goes the moment IN_FLIGHT requests are written and unanswered

    def watch_in_flight() -> None:
        # checked at every write, not by polling: a poll a few ms late found the burst answered
        # already in one run (two workers answer 32 requests in a few ms)
        if armed[0] and len(written) >= IN_FLIGHT:
            armed[0] = False
            sigterm_at[0] = time.monotonic()
            process.send_signal(signal.SIGTERM)

    async def one(client: httpx.AsyncClient) -> None:
        moments: dict[str, float] = {}

        async def trace(event: str, info: dict[str, object]) -> None:
            moments.setdefault(event, time.monotonic())
            if event == "http11.send_request_headers.started":
                written.add(id(moments))
                watch_in_flight()

        body = {"images": [EXAMPLE_PNG_B64] * 4}
        try:
            r = await client.post("/v1/models/cnn/predict", json=body, extensions={"trace": trace})
        except httpx.ConnectError:  # the listener had closed: the request was never sent
            outcomes.append(Outcome(moments.get("connection.connect_tcp.failed", time.monotonic()), "not accepted"))
            return
        except httpx.HTTPError as exc:
            sent = moments.get("http11.send_request_headers.started", time.monotonic())
            outcomes.append(Outcome(sent, f"dropped: {type(exc).__name__}"))
            return
        finally:
            written.discard(id(moments))
        result = "ok" if r.status_code == 200 else f"{r.status_code} {r.json()['code']}"
        answered = moments.get("http11.receive_response_headers.complete", time.monotonic())
        outcomes.append(Outcome(moments["http11.send_request_headers.started"], result, answered))

    async def scenario() -> None:
        async with httpx.AsyncClient(base_url=url, timeout=60, limits=httpx.Limits(max_connections=None)) as client:
            tasks = []
            for i in range(400):
                tasks.append(asyncio.create_task(one(client)))
                if i == 150:
                    await until(
                        lambda: sum(o.answered_at is not None for o in outcomes) >= 20,
                        lambda: f"20 answers ({Counter(o.result for o in outcomes)})",
                        WAIT_S,
                    )
                    armed[0] = True
                    watch_in_flight()  # the paced load may have that many in flight already
                    for _ in range(BURSTS):  # another burst while the last one never had 8 in flight at once
                        if armed[0]:
                            tasks += [asyncio.create_task(one(client)) for _ in range(BURST)]
                            await asyncio.gather(*tasks[-BURST:])
                    assert not armed[0], f"never {IN_FLIGHT} requests written and unanswered in {BURSTS} bursts"
                await asyncio.sleep(0.005)
            await asyncio.gather(*tasks)

    asyncio.run(scenario())
    assert process.wait(timeout=60) == 0
    return ShutdownRun(outcomes, sigterm_at[0])
