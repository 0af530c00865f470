"""serving/http/protocol.py on real loopback sockets, with a small ASGI app: the orderings and
buffers a review found at risk (pipelining, a client that never reads, timers while the server
itself has stopped reading)."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

from uvicorn.config import Config
from uvicorn.server import ServerState

from digitserve.serving.errors import HttpError
from digitserve.serving.http.answers import ProtocolAnswer
from digitserve.serving.http.protocol import (
    ANSWERED,
    EARLY_ANSWER,
    LIMITS,
    ConnectionLimits,
    LimitedHttpProtocol,
)
from digitserve.serving.http.routes import Prediction

REFUSED = (
    Prediction("cnn", "/v1/models/{model}/predict", False),
    HttpError(503, "overloaded", "full", {"Retry-After": "1"}),
)


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """/slow answers after 1 s; anything else reads its body and answers 200."""
    if scope["type"] != "http":
        return
    if scope["path"] == "/slow":
        await asyncio.sleep(1.0)
    else:
        more = True
        while more:
            message = await receive()
            more = message.get("more_body", False) and message["type"] == "http.request"
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


async def serve(
    early: bool, body_timeout_s: float = 20.0, told: list[ProtocolAnswer] | None = None
) -> tuple[asyncio.Server, int, list[LimitedHttpProtocol]]:
    limits = ConnectionLimits(100, 10.0, body_timeout_s, 32 * 1024, 8 * 1024)
    config = Config(app, lifespan="off", log_level="warning")
    config.load()
    state = ServerState()
    app_state: dict[str, Any] = {LIMITS: limits, **({EARLY_ANSWER: (lambda *_: REFUSED)} if early else {})}
    if told is not None:
        app_state[ANSWERED] = told.append
    made: list[LimitedHttpProtocol] = []

    def protocol() -> LimitedHttpProtocol:
        made.append(LimitedHttpProtocol(config=config, server_state=state, app_state=app_state))
        return made[-1]

    server = await asyncio.get_running_loop().create_server(protocol, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1], made


def test_an_early_refusal_carries_the_clients_id_and_is_told_to_the_app() -> None:
    """Admission's 503 on arrival, written by the protocol: the client's X-Request-ID on it, and
    the app told (for its metrics and log line) with the same id, route and status."""

    async def scenario() -> tuple[bytes, list[ProtocolAnswer]]:
        told: list[ProtocolAnswer] = []
        server, port, _ = await serve(early=True, told=told)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            b"POST /v1/models/cnn/predict HTTP/1.1\r\nHost: t\r\nX-Request-ID: early-1\r\nContent-Length: 0\r\n\r\n"
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        writer.close()
        server.close()
        return head, told

    head, told = asyncio.run(scenario())
    assert head.startswith(b"HTTP/1.1 503") and b"\r\nx-request-id: early-1\r\n" in head
    assert [(t.status, t.code, t.request_id, t.route, t.refusal) for t in told] == [
        (503, "overloaded", "early-1", "/v1/models/{model}/predict", False)
    ]


def test_a_client_that_never_reads_its_refusals_meets_flow_control() -> None:
    """100,000 pipelined predictions, all refused early, from a client that reads nothing: the
    server stops writing at uvicorn's high-water mark and stops reading, instead of buffering
    23 MB of 503s."""

    async def scenario() -> int:
        server, port, made = await serve(early=True)
        client = socket.create_connection(("127.0.0.1", port))
        client.setblocking(False)
        request = b"POST /v1/models/cnn/predict HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n"
        pending = request * 100_000
        stalled = 0
        for _ in range(2000):  # send what the server reads, for a bounded while
            try:
                pending = pending[client.send(pending) :]
                stalled = 0
            except BlockingIOError:
                stalled += 1
            await asyncio.sleep(0.005)
            if not pending or stalled > 100:  # all sent, or the server stopped reading for 0.5 s
                break
        answered = -1
        for _ in range(100):  # until the server stops answering (at most 10 s)
            await asyncio.sleep(0.1)
            if made[0].server_state.total_requests == answered:
                break
            answered = made[0].server_state.total_requests
        buffered = max(p.transport.get_write_buffer_size() for p in made)
        for p in made:
            p.transport.abort()
        client.close()
        server.close()
        return buffered

    assert asyncio.run(scenario()) < 1024 * 1024


def test_a_body_timer_waits_while_an_earlier_request_runs() -> None:
    """A pipelined request whose body is behind a slow one is not timed out while the server has
    stopped reading: the slow request's answer comes first, then the 408 for the stalled body."""

    async def scenario() -> bytes:
        server, port, _ = await serve(early=False, body_timeout_s=0.3)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n"
            b"POST /v1/models/cnn/predict HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nabc"
        )
        await writer.drain()
        received = await asyncio.wait_for(reader.read(-1), timeout=10)
        writer.close()
        server.close()
        return received

    received = asyncio.run(scenario())
    assert received.startswith(b"HTTP/1.1 200 "), received[:200]
    assert b"HTTP/1.1 408 " in received and received.index(b"HTTP/1.1 408 ") > 0
