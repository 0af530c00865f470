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
between. The server's own shutdown then runs once every request a client wrote before that
close has been read (`unread_requests`): uvicorn's shutdown closes, unanswered, a connection
whose request it has not yet begun to read, and a busy event loop may not have read it yet.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import signal
import socket
import struct
import termios
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

log = logging.getLogger(__name__)
ANSWER_ACCEPTED_S = 0.15  # time for the connections accepted last to be read and answered
READ_LIMIT_S = 2.0  # past this the server shuts down with requests unread (a client sending a head slowly)
READ_POLL_S = 0.025  # each look walks every connection (about 1 ms per 1,000)
_handing_over: set[asyncio.Task[Any]] = set()  # keeps the hand-over tasks alive until they ran
_shutting_down: set[asyncio.Task[Any]] = set()  # keeps the wait for unread requests alive


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
        server = getattr(previous, "__self__", None)  # uvicorn's handler is a bound method
        close_listeners(server)
        task = loop.create_task(_once_read(server, lambda: previous(signum, frame)))
        _shutting_down.add(task)
        task.add_done_callback(_shutting_down.discard)

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        if drain.active:
            return
        drain.active = True
        log.info("SIGTERM: draining for %.1fs, then shutting down", grace_s)
        loop.call_soon_threadsafe(loop.call_later, grace_s, stop, signum, frame)

    signal.signal(signal.SIGTERM, on_sigterm)


async def _once_read(server: Any, shut_down: Callable[[], object]) -> None:
    """Call `shut_down` once the connections accepted last and every request written so far have
    been read: ANSWER_ACCEPTED_S after the listener closed, then up to READ_LIMIT_S more. Whatever
    goes wrong here, `shut_down` is called (a second SIGTERM is ignored: this is the way out)."""
    try:
        loop = asyncio.get_running_loop()
        await asyncio.sleep(ANSWER_ACCEPTED_S)
        deadline = loop.time() + READ_LIMIT_S
        while loop.time() < deadline and (_handing_over or unread_requests(server)):
            await asyncio.sleep(READ_POLL_S)
        handing_over, unread = len(_handing_over), unread_requests(server)
        if handing_over or unread:
            log.warning(
                "SIGTERM: shutting down with %d requests not yet read and %d connections not yet taken in",
                unread,
                handing_over,
            )
    except Exception:
        log.exception("SIGTERM: waiting for unread requests failed; shutting down now")
    finally:
        shut_down()


def unread_requests(server: Any) -> int:
    """How many of a uvicorn `Server`'s connections hold a request that uvicorn's shutdown would
    close unanswered: none in progress (no request cycle, or the last one answered) while bytes
    wait in the socket, part of a request head has been read, or the rest of a body answered
    early is still being read (its 503 would be cut off)."""
    connections = getattr(getattr(server, "server_state", None), "connections", ())
    return sum(_holds_unread_request(conn) for conn in list(connections))


def _holds_unread_request(conn: Any) -> bool:
    transport = getattr(conn, "transport", None)
    if transport is None or transport.is_closing():
        return False
    cycle = getattr(conn, "cycle", None)
    if cycle is not None and not cycle.response_complete:
        return False  # in progress (a pipelined request becomes the cycle): uvicorn's shutdown lets it finish
    if getattr(conn, "_head_begun", False) or getattr(conn, "_skipping_body", False):
        return True
    sock = transport.get_extra_info("socket")
    try:
        waiting = fcntl.ioctl(sock.fileno(), termios.FIONREAD, struct.pack("i", 0))
    except (AttributeError, OSError):  # no socket, or closed meanwhile
        return False
    return bool(struct.unpack("i", waiting)[0])


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
