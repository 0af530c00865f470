"""Closing the listener without resetting a request the kernel already holds.

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
import socket
from typing import Any

log = logging.getLogger(__name__)
ANSWER_ACCEPTED_S = 0.15  # time for the connections accepted last to be read and answered
_handing_over: set[asyncio.Task[Any]] = set()  # keeps the hand-over tasks alive until they ran


def close_listeners(server: Any) -> int:
    """Accept the queued connections of a uvicorn `Server`'s listeners, then close them.
    Returns how many were accepted; does nothing for an object that is not such a server."""
    servers, config = getattr(server, "servers", None), getattr(server, "config", None)
    if not servers or config is None:
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
            raw: socket.socket | None = getattr(wrapped, "_sock", None)
            if raw is None:
                continue
            loop.remove_reader(raw.fileno())
            while True:
                try:
                    conn, _ = raw.accept()
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:
                    break
                conn.setblocking(False)
                task = loop.create_task(loop.connect_accepted_socket(protocol, conn))
                _handing_over.add(task)
                task.add_done_callback(_handing_over.discard)
                accepted += 1
        listener.close()
    log.info("listener closed; %d queued connections taken in first", accepted)
    return accepted
