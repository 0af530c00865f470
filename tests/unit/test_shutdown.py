"""What the SIGTERM drain waits for before the server's own shutdown (serving/http/shutdown.py):
a request a client wrote that the server has not yet read. uvicorn's shutdown closes, unanswered,
a connection whose request has not begun. A CI run reset one request written 1 ms before the
listener closed, most likely one that the busy event loop of a one-worker server had not read
within the fixed 0.15 s the drain then waited (not reproduced here)."""

from __future__ import annotations

import asyncio
import socket
import time
from types import SimpleNamespace
from typing import Any

from support.waits import until
from uvicorn.config import Config
from uvicorn.server import Server

from digitserve.serving.http import shutdown
from digitserve.serving.http.protocol import LimitedHttpProtocol
from digitserve.serving.http.shutdown import unread_requests

HEAD = b"GET /%s HTTP/1.1\r\nHost: test\r\n\r\n"


def test_a_request_counts_as_unread_until_the_server_has_begun_it() -> None:
    release = asyncio.Event()
    called: list[str] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        called.append(scope["path"])
        if scope["path"] == "/slow":
            await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})

    async def answer(client: socket.socket) -> bytes:
        """One whole response (its head and 2-byte body)."""
        data = b""
        while not data.endswith(b"\r\n\r\nok"):
            chunk = await asyncio.wait_for(asyncio.get_running_loop().sock_recv(client, 4096), 5)
            assert chunk, data
            data += chunk
        return data

    async def scenario() -> None:
        config = Config(app, lifespan="off", log_level="warning", http=LimitedHttpProtocol)
        config.load()
        server = Server(config)
        server.lifespan = config.lifespan_class(config)  # as Server.serve sets it
        listening = socket.create_server(("127.0.0.1", 0))
        await server.startup(sockets=[listening])
        client = socket.create_connection(listening.getsockname())
        client.setblocking(False)
        await until(lambda: len(server.server_state.connections) == 1, "one connection", timeout_s=5)
        assert unread_requests(server) == 0, "an idle connection holds no request"

        client.sendall(HEAD % b"first")
        time.sleep(0.05)  # the event loop is held here: the request waits in the server's socket
        assert unread_requests(server) == 1
        assert (await answer(client)).startswith(b"HTTP/1.1 200")
        assert unread_requests(server) == 0, "answered, and nothing more was sent"

        client.sendall(b"GET /second HTTP/1.1\r\nHost")  # half a head
        await until(
            lambda: any(getattr(c, "_head_begun", False) for c in server.server_state.connections),
            "a request head begun",
            timeout_s=5,
        )
        assert unread_requests(server) == 1, "a head begun but not complete would be closed unanswered"
        client.sendall(b": test\r\n\r\n")
        assert (await answer(client)).startswith(b"HTTP/1.1 200")

        client.sendall(HEAD % b"slow")
        await until(lambda: called[-1:] == ["/slow"], "/slow called", timeout_s=5)
        assert unread_requests(server) == 0, "a request in progress is finished by the server's shutdown"
        release.set()
        assert (await answer(client)).startswith(b"HTTP/1.1 200")

        client.close()
        await server.shutdown()

    asyncio.run(scenario())


def test_the_server_shuts_down_when_a_request_stays_unread_or_the_check_fails(monkeypatch: Any) -> None:
    """The wait is bounded, and nothing that goes wrong in it keeps the server from shutting down
    (a second SIGTERM is ignored while draining: this wait is the way out)."""
    monkeypatch.setattr(shutdown, "ANSWER_ACCEPTED_S", 0.0)
    monkeypatch.setattr(shutdown, "READ_LIMIT_S", 0.3)

    class Transport:
        def is_closing(self) -> bool:
            return False

    class HalfHead:  # a client that sent half a head and nothing since
        transport, cycle, _head_begun = Transport(), None, True

    class Stuck:
        server_state = SimpleNamespace(connections={HalfHead()})

    class Broken:
        @property
        def server_state(self) -> object:
            raise RuntimeError("uvicorn changed")

    assert unread_requests(Stuck()) == 1
    for server, at_least in ((Stuck(), 0.3), (Broken(), 0.0)):
        called: list[float] = []
        start = time.monotonic()
        asyncio.run(shutdown._once_read(server, lambda c=called, s=start: c.append(time.monotonic() - s)))
        assert len(called) == 1 and at_least <= called[0] < at_least + 1.0, (type(server).__name__, called)
