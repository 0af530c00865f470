"""Limits applied before a route runs: the request body cap and the cap on predictions in progress.

The body cap answers 413 before the body is read in full. It is checked twice: on
`Content-Length` before the app sees the request, and while the body streams in (chunked
uploads, or a client that lies about its length).

The concurrency cap answers 503 with `Retry-After` on arrival, before the body is read, once
`max_requests` predictions are in progress. The batcher's bounded queue only sees requests
whose images are decoded; under overload the event loop itself is the queue (decoding,
parsing), and without this cap accepted requests wait longer and longer and memory grows
with every connection. The same middleware also refuses on arrival a request for a model whose
queue is already full (`saturated`): it could not be queued whatever it holds, and reading and
parsing its body would only take CPU from the forward pass.
"""

from __future__ import annotations

from collections.abc import Callable

import orjson
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from digitserve.serving.errors import ServiceError


def _too_large(limit: int) -> str:
    return f"request body is over the {limit} byte limit; send fewer or smaller images"


async def refuse(send: Send, status: int, message: str, code: str, headers: dict[str, str] | None = None) -> None:
    """Answer with the service's JSON error body straight from a middleware."""
    body = orjson.dumps({"error": message, "code": code})
    extra = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *extra,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class BodySizeLimitMiddleware:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None:
            try:
                length = int(declared)
            except ValueError:
                length = -1
            if length < 0 or length > self.max_bytes:
                # the unread body may be huge: close the connection rather than drain it
                if length < 0:
                    await refuse(send, 400, "invalid Content-Length", "bad_request", {"Connection": "close"})
                else:
                    await refuse(send, 413, _too_large(self.max_bytes), "payload_too_large", {"Connection": "close"})
                return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # Connection: close, so the server stops reading what the client still sends
                    raise HTTPException(413, _too_large(self.max_bytes), headers={"Connection": "close"})
            return message

        await self.app(scope, counting_receive, send)


class ConcurrencyLimitMiddleware:
    """503 + Retry-After on arrival once `max_requests` POSTs under `prefixes` are in progress,
    or with the error `saturated(scope)` gives when the request's queue has no room left."""

    def __init__(
        self,
        app: ASGIApp,
        max_requests: int,
        prefixes: tuple[str, ...] = ("/v1/models/", "/v2/models/"),
        saturated: Callable[[Scope], ServiceError | None] = lambda scope: None,
    ):
        self.app = app
        self.max_requests = max_requests
        self.prefixes = prefixes
        self.saturated = saturated
        self.in_progress = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        counted = scope["type"] == "http" and scope["method"] == "POST" and scope["path"].startswith(self.prefixes)
        if not counted:
            await self.app(scope, receive, send)
            return
        if self.in_progress >= self.max_requests:
            message = f"{self.in_progress} predictions in progress, the server's limit; retry shortly"
            await refuse(send, 503, message, "overloaded", {"Retry-After": "1"})
            return
        full = self.saturated(scope)
        if full is not None:
            await refuse(send, full.status_code, full.message, full.code, full.headers)
            return
        self.in_progress += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_progress -= 1
