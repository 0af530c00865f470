"""A steady load of predictions from a background thread: what a rollout or an outage is watched under."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AsyncExitStack, contextmanager
from dataclasses import dataclass

import httpx
import numpy as np

from support.registries import png_b64


@dataclass(frozen=True)
class Answer:
    status: int | str  # the HTTP status, or the name of the error when there was no answer at all
    version: int | None = None
    alias: str | None = None
    label: int | None = None
    image: int = -1  # which of the images was sent
    sent_at: float = 0.0  # time.monotonic() when it was sent: what came after an event is told by this, not by a sleep


@contextmanager
def steady_load(
    urls: Sequence[str],
    images: np.ndarray,
    clients: int = 4,
    pause_s: float = 0.02,
    headers: Mapping[str, str] | None = None,
    model: str = "cnn",
    client_networks: bool = False,
) -> Iterator[list[Answer]]:
    """`clients` senders per URL, each posting one image after another until the block ends.

    `client_networks`: each sender says it is a client of its own network (X-Forwarded-For
    10.<url>.<client>.7; the server must trust loopback as its proxy: FORWARDED_ALLOW_IPS), as
    users behind a load balancer arrive. A sender that fails in a way that is not an answer
    (a bug in the loop, a body that is not JSON) fails the test when the block ends."""
    answers: list[Answer] = []
    failures: list[BaseException] = []
    stop = threading.Event()
    bodies = [{"images": [png_b64(image)]} for image in images]

    async def client_loop(client: httpx.AsyncClient, i: int) -> None:
        while not stop.is_set():
            image, sent_at = i % len(bodies), time.monotonic()
            try:
                r = await client.post(f"/v1/models/{model}/predict", json=bodies[image])
            except httpx.HTTPError as exc:  # no answer at all: as bad as a 5xx
                answers.append(Answer(type(exc).__name__, image=image, sent_at=sent_at))
                continue
            doc = r.json()
            label = doc["predictions"][0]["label"] if r.status_code == 200 else None
            answers.append(Answer(r.status_code, doc.get("version"), doc.get("alias"), label, image, sent_at))
            i += clients
            await asyncio.sleep(pause_s)

    async def run() -> None:
        async with AsyncExitStack() as stack:
            loops = []
            for u, url in enumerate(urls):
                for i in range(clients):
                    extra = {"X-Forwarded-For": f"10.{u}.{i}.7"} if client_networks else {}
                    own = {**(headers or {}), **extra}
                    client = await stack.enter_async_context(httpx.AsyncClient(base_url=url, timeout=30, headers=own))
                    loops.append(client_loop(client, i))
            await asyncio.gather(*loops)

    def main() -> None:
        try:
            asyncio.run(run())
        except BaseException as exc:  # handed to the test, never lost with the thread
            failures.append(exc)
            stop.set()

    thread = threading.Thread(target=main, name="steady-load")
    thread.start()
    try:
        yield answers
    finally:
        stop.set()
        thread.join(timeout=60)
        assert not thread.is_alive(), "the load generator did not stop"
        if failures:
            raise failures[0]
