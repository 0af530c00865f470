"""A steady load of predictions from a background thread: what a rollout or an outage is watched under."""

from __future__ import annotations

import asyncio
import threading
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


@contextmanager
def steady_load(
    urls: Sequence[str],
    images: np.ndarray,
    clients: int = 4,
    pause_s: float = 0.02,
    headers: Mapping[str, str] | None = None,
    model: str = "cnn",
) -> Iterator[list[Answer]]:
    """`clients` senders per URL, each posting one image after another until the block ends."""
    answers: list[Answer] = []
    stop = threading.Event()
    bodies = [{"images": [png_b64(image)]} for image in images]

    async def client_loop(client: httpx.AsyncClient, i: int) -> None:
        while not stop.is_set():
            try:
                r = await client.post(f"/v1/models/{model}/predict", json=bodies[i % len(bodies)])
            except httpx.HTTPError as exc:  # no answer at all: as bad as a 5xx
                answers.append(Answer(type(exc).__name__))
                continue
            doc = r.json()
            label = doc["predictions"][0]["label"] if r.status_code == 200 else None
            answers.append(Answer(r.status_code, doc.get("version"), doc.get("alias"), label))
            i += clients
            await asyncio.sleep(pause_s)

    async def run() -> None:
        async with AsyncExitStack() as stack:
            loops = []
            for url in urls:
                client = await stack.enter_async_context(httpx.AsyncClient(base_url=url, timeout=30, headers=headers))
                loops += [client_loop(client, i) for i in range(clients)]
            await asyncio.gather(*loops)

    thread = threading.Thread(target=asyncio.run, args=(run(),), name="steady-load")
    thread.start()
    try:
        yield answers
    finally:
        stop.set()
        thread.join(timeout=60)
