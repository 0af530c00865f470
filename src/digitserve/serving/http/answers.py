"""The answers the HTTP protocol writes itself (protocol.py), before or instead of the app: their
bytes, and what the app is told of them (`ProtocolAnswer`: counted in the metrics, logged)."""

from __future__ import annotations

from typing import NamedTuple

from digitserve.serving.errors import error_body

PROTOCOL_ANSWERED = "digitserve.protocol_answered"  # request state: the protocol answered it, not the app
REASONS = {
    400: "Bad Request",
    408: "Request Timeout",
    414: "URI Too Long",
    431: "Request Header Fields Too Large",
    503: "Service Unavailable",
}


class ProtocolAnswer(NamedTuple):
    """An answer the protocol sent itself, before (or instead of) the app, for the metrics and the log."""

    status: int
    code: str
    request_id: str
    method: str  # "-" before the request line was read
    route: str  # a prediction route's template, else "unmatched"
    client: str | None  # the peer's address (proxy headers are read later, by the app)
    seconds: float  # since the request (or the connection) began
    refusal: bool  # a protocol limit (digitserve_protocol_refusals), not admission's 503


def response_bytes(
    status: int, message: str, code: str, request_id: str, headers: dict[str, str] | None = None, close: bool = True
) -> bytes:
    """A complete HTTP/1.1 response with the service's JSON error body and the request's id."""
    body = error_body(message, code)
    lines = [
        f"HTTP/1.1 {status} {REASONS[status]}",
        "content-type: application/json",
        f"content-length: {len(body)}",
        f"x-request-id: {request_id}",
        *(["connection: close"] if close else []),
        *(f"{k.lower()}: {v}" for k, v in (headers or {}).items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body
