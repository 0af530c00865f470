"""The SIGTERM-under-load scenario, shared by test_server.py (one run) and tests/hostile (twenty)."""

from __future__ import annotations

import asyncio
import re
import signal
import time
from pathlib import Path

import httpx

from digitserve.serving.api.schemas import EXAMPLE_PNG_B64
from support.server import start_server


def listener_closed_at(log: Path) -> float:
    """When the first of the server's workers closed its listener (time.monotonic, from its log)."""
    found = re.findall(r"listener closed at monotonic ([0-9.]+)", log.read_text(errors="replace"))
    return min(map(float, found), default=float("inf"))


def sigterm_under_load(registry_uri: str, log: Path, workers: int = 1) -> list[tuple[float, str]]:
    """A server under load gets SIGTERM: 400 requests of 4 digits over ~2 s, SIGTERM after the 150th.
    Returns (time the request was written, outcome) for each request; for a request refused
    at connect, the time of that refusal."""
    env = {"DIGITSERVE_REGISTRY": registry_uri, "DIGITSERVE_MODELS": "cnn", "DIGITSERVE_SHUTDOWN_GRACE_S": "0.5"}
    process, url = start_server({**env, "DIGITSERVE_WORKERS": str(workers)}, log_path=log)
    outcomes: list[tuple[float, str]] = []

    async def one(client: httpx.AsyncClient) -> None:
        moments: dict[str, float] = {}

        async def trace(event: str, info: dict[str, object]) -> None:
            moments.setdefault(event, time.monotonic())

        body = {"images": [EXAMPLE_PNG_B64] * 4}
        try:
            r = await client.post("/v1/models/cnn/predict", json=body, extensions={"trace": trace})
        except httpx.ConnectError:  # the listener had closed: the request was never sent
            outcomes.append((moments.get("connection.connect_tcp.failed", time.monotonic()), "not accepted"))
            return
        except httpx.HTTPError as exc:
            sent = moments.get("http11.send_request_headers.started", time.monotonic())
            outcomes.append((sent, f"dropped: {type(exc).__name__}"))
            return
        outcomes.append(
            (
                moments["http11.send_request_headers.started"],
                "ok" if r.status_code == 200 else f"{r.status_code} {r.json()['code']}",
            )
        )

    async def scenario() -> None:
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            tasks = []
            for i in range(400):
                tasks.append(asyncio.create_task(one(client)))
                if i == 150:
                    process.send_signal(signal.SIGTERM)
                await asyncio.sleep(0.005)
            await asyncio.gather(*tasks)

    asyncio.run(scenario())
    assert process.wait(timeout=60) == 0
    return outcomes
