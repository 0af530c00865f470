"""A prediction for a model whose queue is already full is refused on arrival, before its body.

Under overload, clients that ignore Retry-After (load generators, naive retry loops) resend at
once; reading and parsing each body the server is going to refuse takes the CPU the forward
pass needs. The real app, with the shipped CNN behind a real batcher, is driven at the ASGI
level so the test can see whether the app ever asks for the body: the forward thread is held
busy, the queue filled to its bound, and then a request whose body never arrives must still get
its 503 at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi import FastAPI
from support.waits import until

from digitserve.config import Settings, shipped_registry
from digitserve.registry import ModelRegistry
from digitserve.serving.api.schemas import EXAMPLE_PNG_B64
from digitserve.serving.app import create_app
from digitserve.serving.inference import decoding

ROOT = Path(__file__).resolve().parents[2]
MAX_BATCH, MAX_QUEUE = 4, 8
ONE_IMAGE = json.dumps({"images": [EXAMPLE_PNG_B64]}).encode()
PRODUCTION = ModelRegistry.open(str(shipped_registry())).resolve_alias("cnn", "production")  # what answers


async def call(app: FastAPI, method: str, target: str, body: bytes | None) -> tuple[int, dict[str, str], Any, bool]:
    """(status, headers, JSON body, whether the app asked for the request body). `body=None`: the
    client sends headers only and the body never comes (a refusal must not wait for it)."""
    path, _, query = target.partition("?")
    content_type = b"multipart/form-data; boundary=x" if path.endswith("upload") else b"application/json"
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query.encode(),
        "root_path": "",
        "headers": [(b"host", b"test"), (b"content-type", content_type), (b"content-length", b"%d" % len(ONE_IMAGE))],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }
    asked = False
    never = asyncio.Event()

    async def receive() -> dict[str, Any]:
        nonlocal asked
        asked = True
        if body is None:
            await never.wait()
        return {"type": "http.request", "body": body or b"", "more_body": False}

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await asyncio.wait_for(app(scope, receive, send), timeout=10)
    start = sent[0]
    headers = {k.decode(): v.decode() for k, v in start["headers"]}
    payload = b"".join(m.get("body", b"") for m in sent[1:])
    return start["status"], headers, json.loads(payload), asked


@contextlib.asynccontextmanager
async def running_app() -> AsyncIterator[FastAPI]:
    """The real app serving the shipped cnn, with a small batch and queue."""
    settings = Settings(
        registry=str(ROOT / "registry"),
        models=["cnn"],
        poll_seconds=3600,
        max_batch_size=MAX_BATCH,
        max_batch_delay_ms=0,
        max_queue=MAX_QUEUE,
        shutdown_grace_s=0,
        admin_token=None,
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        yield app


@pytest.mark.parametrize(
    "target",
    ["/v1/models/cnn/predict", "/v1/models/cnn/predict/upload?top_k=2", "/v2/models/cnn/infer"],
)
def test_a_full_queue_refuses_before_the_body_is_read(target: str) -> None:
    async def scenario() -> None:
        hold = threading.Event()
        async with running_app() as app:
            try:
                app.state.services.versions.slots.executor.submit(hold.wait)  # the forward thread is busy
                batcher = app.state.services.versions.states["cnn"].served.batcher
                deadline = time.monotonic() + 30
                futures = [batcher.submit(np.zeros((MAX_BATCH, 28, 28), np.uint8), deadline)]
                # that batch leaves the queue and waits for the forward thread
                await until(lambda: batcher.queued_images == 0, "the first batch out of the queue")
                futures += [batcher.submit(np.zeros((MAX_QUEUE // 2, 28, 28), np.uint8), deadline) for _ in range(2)]
                assert batcher.queued_images == MAX_QUEUE

                status, headers, error, asked = await call(app, "POST", target, body=None)
                assert (status, error["code"], headers["retry-after"]) == (503, "overloaded", "1"), error
                assert error["error"] == f"queue full ({MAX_QUEUE} images waiting); retry shortly"
                assert not asked, "the app waited for a body it was going to refuse"

                # A pinned version is not judged on arrival: its body is read (and then it is refused
                # too, since it pins the served version, whose queue is full).
                pinned = f"/v1/models/cnn/predict?version={PRODUCTION}"
                status, _, error, asked = await call(app, "POST", pinned, ONE_IMAGE)
                assert asked and status == 503 and error["code"] == "overloaded"
            finally:
                hold.set()  # never leave the forward thread held, even when an assertion fails
            # the queue drains; every queued request gets its answer
            results = await asyncio.gather(*futures)
            assert [r.shape for r in results] == [(MAX_BATCH, 10), (MAX_QUEUE // 2, 10), (MAX_QUEUE // 2, 10)]
            status, _, answer, _ = await call(app, "POST", "/v1/models/cnn/predict", ONE_IMAGE)
            assert status == 200 and answer["version"] == PRODUCTION, answer

    asyncio.run(scenario())


def test_room_in_the_queue_reads_the_body_as_usual() -> None:
    async def scenario() -> None:
        async with running_app() as app:
            status, _, answer, asked = await call(app, "POST", "/v1/models/cnn/predict", ONE_IMAGE)
            assert asked and status == 200
            assert answer["version"] == PRODUCTION and answer["predictions"][0]["label"] == 7  # MNIST test image 0

    asyncio.run(scenario())


def test_the_server_calibrates_its_decode_prices_at_start() -> None:
    """Services.start sets the small requests' first correction from this machine (in a thread,
    beside the first requests): below 1, since their prices are upper bounds
    (serving/inference/decoding.py)."""

    async def scenario() -> float:
        async with running_app() as app:
            decoder = app.state.services.decoder
            await until(lambda: decoder.small_correction != 1.0, "the calibration at start", timeout_s=30)
            assert decoder.correction == 1.0, "other requests start at the prices"
            return float(decoder.small_correction)

    assert decoding.MIN_CORRECTION <= asyncio.run(scenario()) < 1.0
