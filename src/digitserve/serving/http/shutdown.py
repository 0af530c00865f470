"""After SIGTERM: drain, then close the listener without resetting a request the kernel holds.

`install_sigterm_drain` replaces the server's SIGTERM handler: at once `/readyz` turns 503, new
predictions are refused and every answer closes its connection (`Drain.active`); after the grace
period the listener closes in two steps, then the server's own handler runs (it answers what is
in flight and exits).

Closing a listening socket resets every connection still in its accept queue: clients that
connected and sent a request just before the close get a connection reset, not an answer. So
the listener is closed in two steps, on the event loop: stop the loop's own accepting, accept
what the kernel has queued and hand it to the server's protocol (it is answered like any request
during the drain: 503, `Connection: close`), then close the listening socket, with no await in
between. The server's own shutdown then runs a moment later, once those requests are answered.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import time
from types import FrameType
from typing import Any

log = logging.getLogger(__name__)
ANSWER_ACCEPTED_S = 0.15  # time for the connections accepted last to be read and answered
_handing_over: set[asyncio.Task[Any]] = set()  # keeps the hand-over tasks alive until they ran


class Drain:
    """Whether this process is draining (SIGTERM received): read by admission, readiness, answers."""

    def __init__(self) -> None:
        self.active = False

    def __call__(self) -> bool:
        return self.active


def install_sigterm_drain(drain: Drain, loop: asyncio.AbstractEventLoop, grace_s: float) -> None:
    """Drain for `grace_s` on SIGTERM, then close the listener and let the server shut down."""
    previous = signal.getsignal(signal.SIGTERM)
    if not callable(previous):
        return

    def stop(signum: int, frame: FrameType | None) -> None:
        close_listeners(getattr(previous, "__self__", None))  # uvicorn's handler is a bound method
        loop.call_later(ANSWER_ACCEPTED_S, previous, signum, frame)

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        if drain.active:
            return
        drain.active = True
        log.info("SIGTERM: draining for %.1fs, then shutting down", grace_s)
        loop.call_soon_threadsafe(loop.call_later, grace_s, stop, signum, frame)

    signal.signal(signal.SIGTERM, on_sigterm)


def close_listeners(server: Any) -> int:
    """Accept the queued connections of a uvicorn `Server`'s listeners, then close them.
    Returns how many were accepted; does nothing for an object that is not such a server."""
    servers, config = getattr(server, "servers", None), getattr(server, "config", None)
    if not servers or config is None:  # uvicorn changed (tests/unit/test_uvicorn_surface.py would say so)
        log.warning("SIGTERM: no uvicorn listener found on %r; queued connections may be reset", type(server))
        return 0
    loop = asyncio.get_running_loop()

    def protocol() -> asyncio.Protocol:
        return config.http_protocol_class(
            config=config,
            server_state=server.server_state,
            app_state=server.lifespan.state,
            _loop=loop,
        )

    accepted = 0
    for listener in servers:
        for wrapped in listener.sockets:
            loop.remove_reader(wrapped.fileno())
            accepted += _hand_over_queued(loop, wrapped.dup(), protocol)
        listener.close()
    # the moment, on the machine's monotonic clock (one for every process): tests line requests up with it
    log.info("listener closed at monotonic %.6f; %d queued connections taken in first", time.monotonic(), accepted)
    return accepted


def _hand_over_queued(loop: asyncio.AbstractEventLoop, listening: socket.socket, protocol: Any) -> int:
    """Accept what the kernel queued on a listening socket (a duplicate of the server's) and hand
    each connection to the server's protocol."""
    accepted = 0
    with listening:
        listening.setblocking(False)  # the same open file: already non-blocking
        while True:
            try:
                conn, _ = listening.accept()
            except OSError:  # BlockingIOError: the queue is empty
                break
            conn.setblocking(False)
            task = loop.create_task(loop.connect_accepted_socket(protocol, conn))
            _handing_over.add(task)
            task.add_done_callback(_handing_over.discard)
            accepted += 1
    return accepted
