"""Limits applied before a route runs: the request body cap, and admission of predictions.

The body cap answers 413 before the body is read in full. It is checked twice: on
`Content-Length` before the app sees the request, and while the body streams in (chunked
uploads, or a client that lies about its length).

Admission answers 503 with `Retry-After` on arrival, before the body is read, once
`max_requests` predictions are in progress, or when the request's model has no queue room left
for even one image (the pipeline's own `check_room`): it could not be queued whatever it
holds, and reading and parsing its body would only take CPU from the forward pass. An admitted
prediction's deadline starts here, so it covers reading, decoding, queueing and the forward pass.
A prediction counts as in progress only once its whole body has arrived: a client that sends
headers and then stalls holds a connection (bounded by serving/connections.py), not a slot.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import orjson
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from digitserve.serving.connections import response_bytes
from digitserve.serving.errors import HttpError, http_error


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
    """`max_bytes` for every body, or the limit `per_path` gives a path (smaller bodies for feedback)."""

    def __init__(self, app: ASGIApp, max_bytes: int, per_path: dict[str, int] | None = None) -> None:
        self.app = app
        self.default = max_bytes
        self.per_path = per_path or {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.per_path.get(scope["path"], self.default)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None:
            try:
                length = int(declared)
            except ValueError:
                length = -1
            if length < 0 or length > limit:
                # the unread body may be huge: close the connection rather than drain it
                if length < 0:
                    await refuse(send, 400, "invalid Content-Length", "bad_request", {"Connection": "close"})
                else:
                    await refuse(send, 413, _too_large(limit), "payload_too_large", {"Connection": "close"})
                return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    # Connection: close, so the server stops reading what the client still sends
                    raise HTTPException(413, _too_large(limit), headers={"Connection": "close"})
            return message

        await self.app(scope, counting_receive, send)


RoomCheck = Callable[[str, int], None]  # (model, images): raises when they cannot be queued


def prediction_route(path: str) -> tuple[str, str] | None:
    """(model, route template) of a prediction request's path; None for any other path."""
    parts = path.split("/")  # "", "v1", "models", model, "predict"[, "upload"]
    if len(parts) < 5 or parts[2] != "models":
        return None
    if parts[1] == "v1" and parts[4:] in (["predict"], ["predict", "upload"]):
        return parts[3], "/v1/models/{model}/" + "/".join(parts[4:])
    if parts[1] == "v2" and parts[4:] == ["infer"]:
        return parts[3], "/v2/models/{model}/infer"
    if parts[1] == "v2" and parts[4] == "versions" and parts[6:] == ["infer"]:
        return parts[3], "/v2/models/{model}/versions/{version}/infer"
    return None


class Admission:
    """What admission control knows, shared by `AdmissionMiddleware` and the HTTP protocol
    (serving/connections.py, which refuses on arrival without starting any ASGI work)."""

    def __init__(
        self,
        max_requests: int,
        check_room: RoomCheck,
        draining: Callable[[], bool],
        max_body_bytes: int,
        count: Callable[[str], None],
    ) -> None:
        self.max_requests = max_requests
        self.check_room = check_room
        self.draining = draining
        self.max_body_bytes = max_body_bytes
        self.count = count  # (route template): a 503 answered by the protocol, for the metrics
        self.in_progress = 0  # predictions whose body has arrived and whose answer has not gone

    def refusal(self, path: str, query: bytes, model: str) -> HttpError | None:
        if self.in_progress >= self.max_requests:
            message = f"{self.in_progress} predictions in progress, the server's limit; retry shortly"
            return HttpError(503, "overloaded", message, {"Retry-After": "1"})
        if b"version=" in query or b"alias=" in query or "/versions/" in path:
            return None  # a pinned version is judged when it is queued
        try:
            self.check_room(model, 1)
        except Exception as exc:
            return http_error(exc)  # QueueFullError: 503; an unknown model is the route's 404
        return None

    def early_answer(self, method: bytes, url: bytes, headers: list[tuple[bytes, bytes]]) -> bytes | None:
        """The whole 503 response for a prediction refused on arrival, for the protocol to send on
        a kept-alive connection; None sends the request down the usual path (anything unusual:
        a draining server, an escaped path, a body over the limit, `Connection: close`)."""
        if method != b"POST" or self.draining():
            return None
        raw_path, _, query = url.partition(b"?")
        if not raw_path.isascii() or b"%" in raw_path:
            return None
        path = raw_path.decode("ascii")
        route = prediction_route(path)
        if route is None or not _plain_body(headers, self.max_body_bytes):
            return None
        refusal = self.refusal(path, query, route[0])
        if refusal is None or refusal.status != 503:
            return None
        self.count(route[1])
        return response_bytes(refusal.status, refusal.message, refusal.code, refusal.headers, close=False)


def _plain_body(headers: list[tuple[bytes, bytes]], max_body_bytes: int) -> bool:
    for name, value in headers:
        if name == b"connection" and b"close" in value.lower():
            return False
        if name == b"content-length" and (not value.isdigit() or int(value) > max_body_bytes):
            return False
    return True


class AdmissionMiddleware:
    """503 + Retry-After on arrival for a prediction the server cannot take: too many in
    progress, or no queue room for its model. Stamps each admitted prediction's deadline."""

    def __init__(self, app: ASGIApp, admission: Admission, timeout_s: float) -> None:
        self.app = app
        self.admission = admission
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = prediction_route(scope["path"]) if scope["type"] == "http" and scope["method"] == "POST" else None
        if route is None:
            await self.app(scope, receive, send)
            return
        admission = self.admission
        refusal = admission.refusal(scope["path"], scope["query_string"], route[0])
        if refusal is not None and refusal.status == 503:
            await refuse(send, refusal.status, refusal.message, refusal.code, refusal.headers)
            return
        scope.setdefault("state", {})["deadline"] = time.monotonic() + self.timeout_s
        counted = False

        async def receive_then_count() -> Message:
            nonlocal counted
            message = await receive()
            if not counted and not message.get("more_body", False):
                counted = True  # the whole body is here: from now on it costs the server work
                admission.in_progress += 1
            return message

        try:
            await self.app(scope, receive_then_count, send)
        finally:
            if counted:
                admission.in_progress -= 1


class DrainMiddleware:
    """After SIGTERM every response carries `Connection: close`: a client's next request opens a
    new connection (answered 503, or refused once the listener closes) instead of being written
    on a keep-alive connection the server is about to close, where it would be reset unanswered."""

    def __init__(self, app: ASGIApp, draining: Callable[[], bool]) -> None:
        self.app = app
        self.draining = draining

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def closing_send(message: Message) -> None:
            if message["type"] == "http.response.start" and self.draining():
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"connection"]
                message = {**message, "headers": [*headers, (b"connection", b"close")]}
            await send(message)

        await self.app(scope, receive, closing_send)
