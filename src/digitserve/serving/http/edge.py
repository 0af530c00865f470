"""The one middleware every request passes, in one pass, before and after its route.

In order, for an HTTP request:
- **admission** of predictions (admission.py), unless the protocol already admitted it on arrival;
  an admitted prediction is in progress from when its whole body has arrived to its answer;
- **body limits**: 413 before the body is read when `Content-Length` is over the route's limit
  (400 for a bad one), and again while the body streams in (chunked uploads, or a client that
  lies about its length), with `Connection: close` so the rest is not read;
- **drain**: after SIGTERM every response carries `Connection: close`, so a client's next request
  opens a new connection (answered 503, or refused once the listener closes) instead of being
  written on a kept-alive connection the server is about to close, where it would be reset;
- **direct**: a prediction route with a reader of its own (`direct`: the plain JSON prediction,
  api/v1/direct.py) is handed to it rather than to the app, with the app to pass on what it does
  not answer itself;
- **observe**: every request gets an id (`X-Request-ID`, the client's when sane), echoed on its
  answer; the answer's status, latency and error code go to the observer (metrics, access log,
  traces: serving/observability/requests.py);
- a redirect's `Location` is made a path (never the Host header a client wrote).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol
from urllib.parse import urlsplit

from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from digitserve.serving.errors import error_body
from digitserve.serving.http.admission import DEADLINE, Admission
from digitserve.serving.http.routes import prediction_of


class Observer(Protocol):
    """What the edge tells the observability room (serving/observability/requests.py)."""

    def start(self, scope: Scope) -> str:
        """A request arrived: returns its id."""

    def error(self, scope: Scope, body: bytes) -> None:
        """The body of its error answer (4xx, 5xx)."""

    def __call__(self, scope: Scope, status: int, seconds: float) -> None:
        """It was answered, with this status, this long after it arrived."""


# a prediction route's own reader: (scope, receive, send, the app to hand what it does not answer)
log = logging.getLogger(__name__)
REQUEST_ID = b"x-request-id"
CLIENT_LEFT = 499  # as nginx logs a request whose client closed the connection before its answer
Direct = Callable[[Scope, Receive, Send, ASGIApp], Awaitable[None]]


async def refuse(send: Send, status: int, message: str, code: str, headers: dict[str, str] | None = None) -> None:
    """Answer with the service's JSON error body straight from the middleware."""
    body = error_body(message, code)
    extra = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    head = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *extra]
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": body})


def _too_large(limit: int) -> str:
    return f"request body is over the {limit} byte limit; send fewer or smaller images"


class EdgeMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        admission: Admission,
        body_limits: dict[str, int],
        draining: Callable[[], bool],
        observe: Observer,
        direct: Mapping[str, Direct] | None = None,
    ) -> None:
        self.app = app
        self.direct = dict(direct or {})  # route template -> its reader (api/v1/direct.py)
        self.admission = admission
        self.default_limit = admission.max_body_bytes
        self.body_limits = body_limits  # path -> a smaller limit (feedback)
        self.draining = draining
        self.observe = observe

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status, started = 500, False
        draining, observe = self.draining, self.observe
        request_id = (REQUEST_ID, observe.start(scope).encode())

        async def answer(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                status, started = message["status"], True
                headers = message.get("headers", [])
                if 300 <= status < 400:
                    headers = [_relative(k, v) for k, v in headers]
                if draining():
                    headers = [(k, v) for k, v in headers if k.lower() != b"connection"] + [(b"connection", b"close")]
                message = {**message, "headers": [*headers, request_id]}
            elif status >= 400 and message["type"] == "http.response.body":
                observe.error(scope, message.get("body", b""))
            await send(message)

        try:
            await self._handle(scope, receive, answer)
        except ClientDisconnect:  # the client left before its body was read: no one to answer
            status = CLIENT_LEFT
        except Exception:  # a bug: answered here, with the request's id, rather than by Starlette
            if started:
                raise  # too late to answer: the client sees the connection close
            log.exception("unexpected error on %s %s", scope["method"], scope["path"][:200])
            await refuse(answer, 500, "internal error; it has been logged", "internal_error")
        finally:
            observe(scope, status, time.perf_counter() - start)

    async def _handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        prediction = prediction_of(scope)
        admission = self.admission
        if prediction is not None and DEADLINE not in scope["state"]:
            error = admission.admit(prediction, scope["state"])
            if error is not None:
                await refuse(send, error.status, error.message, error.code, error.headers)
                return
        limit = self.body_limits.get(scope["path"], self.default_limit)
        refusal = _declared_length_refusal(scope, limit)
        if refusal is not None:
            await refuse(send, *refusal, {"Connection": "close"})  # the unread body may be huge
            return
        received, counted = 0, False

        async def receive_within_limits() -> Message:
            nonlocal received, counted
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    # Connection: close, so the server stops reading what the client still sends
                    raise HTTPException(413, _too_large(limit), headers={"Connection": "close"})
                if prediction is not None and not counted and not message.get("more_body", False):
                    counted = True  # the whole body is here: from now on it costs the server work
                    admission.in_progress += 1
            return message

        direct = self.direct.get(prediction.template) if prediction is not None else None
        try:
            if direct is None:
                await self.app(scope, receive_within_limits, send)
            else:
                await direct(scope, receive_within_limits, send, self.app)
        finally:
            if counted:
                admission.in_progress -= 1


def _relative(name: bytes, value: bytes) -> tuple[bytes, bytes]:
    """A redirect's Location as a path: the router builds it from the request's Host header, which
    a client writes (an absolute Location would send browsers wherever that header said)."""
    if name.lower() != b"location":
        return name, value
    parts = urlsplit(value.decode("latin-1"))
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return name, path.encode("latin-1")


def _declared_length_refusal(scope: Scope, limit: int) -> tuple[int, str, str] | None:
    declared: Any = None
    for name, value in scope["headers"]:
        if name == b"content-length":
            declared = value  # the last one, if a client sent several
    if declared is None:
        return None
    try:
        length = int(declared)
    except ValueError:
        length = -1
    if length < 0:
        return 400, "invalid Content-Length", "bad_request"
    if length > limit:
        return 413, _too_large(limit), "payload_too_large"
    return None
