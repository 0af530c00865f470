"""One gRPC call, answered and observed: its request id, its client, the parse of its message,
the gRPC status of a refusal, and its line in the metrics and the access log.

The RPCs take the message as bytes (service.py registers them without a deserializer), so a
message that is not valid protobuf -- or holds a string that is not UTF-8 -- is the client's
mistake, INVALID_ARGUMENT, counted and logged like any other; gRPC's own parse would make it
UNKNOWN with a traceback. Metadata is read so that nothing a client sends in it can raise.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import unquote

import grpc
from google.protobuf.message import DecodeError, Message

from digitserve.serving.errors import HttpError, InvalidInputError, http_error
from digitserve.serving.http.edge import CLIENT_LEFT
from digitserve.serving.http.request_id import request_id_from
from digitserve.serving.observability.logs import current_request
from digitserve.serving.observability.record import RequestRecord
from digitserve.serving.observability.requests import HttpObserver

log = logging.getLogger(__name__)
SERVICE = "inference.GRPCInferenceService"
M = TypeVar("M", bound=Message)
MAX_DETAILS = 1000  # characters of a refusal's message: it travels in a trailer, which clients cap

# The gRPC status of each HTTP status the service refuses with (anything else is a bug: INTERNAL).
STATUS = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    408: grpc.StatusCode.DEADLINE_EXCEEDED,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    415: grpc.StatusCode.INVALID_ARGUMENT,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}


class Refused(Exception):
    """Admission's refusal on arrival (an `HttpError`, as the HTTP protocol would send it)."""

    def __init__(self, error: HttpError) -> None:
        super().__init__(error.message)
        self.error = error


def route(rpc: str) -> str:
    """The route label of an RPC: its full method name."""
    return f"/{SERVICE}/{rpc}"


def parse(message: type[M], raw: bytes) -> M:
    """The request message from its bytes; bytes that are not one are the client's mistake."""
    try:
        return message.FromString(raw)
    except DecodeError as exc:
        raise InvalidInputError(f"the request is not a valid {message.DESCRIPTOR.full_name} message: {exc}") from None


def peer_host(peer: str) -> str | None:
    """The client's address from a gRPC peer string (`ipv4:10.0.0.1:5000`, `ipv6:%5B::1%5D:5000`)."""
    kind, _, address = unquote(peer).partition(":")
    if kind == "ipv4":
        return address.rpartition(":")[0] or None
    if kind == "ipv6":
        return address.rpartition(":")[0].strip("[]") or None
    return None


def metadata_of(context: grpc.aio.ServicerContext) -> list[tuple[bytes, bytes]]:
    """The call's metadata as (name, value) bytes; values that are text come as UTF-8."""
    pairs = []
    try:
        for key, value in context.invocation_metadata() or ():
            raw = value if isinstance(value, bytes) else value.encode("utf-8", "backslashreplace")
            pairs.append((key.encode("utf-8", "backslashreplace"), raw))
    except (TypeError, ValueError, AttributeError):  # nothing a client sends may stop the call here
        log.warning("unreadable metadata; the call goes on without it")
    return pairs


def header(metadata: list[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    return next((value for key, value in metadata if key == name), None)


@dataclass
class Call:
    """One RPC as it is answered: its record and what its access line says."""

    record: RequestRecord
    metadata: list[tuple[bytes, bytes]]
    client: str | None
    status: int = 200
    grpc_code: grpc.StatusCode = grpc.StatusCode.OK


Handler = Callable[[bytes, Call], Awaitable[Message]]


async def answer(
    name: str, raw: bytes, context: grpc.aio.ServicerContext, handle: Handler, observer: HttpObserver
) -> bytes:
    """Run `handle` for one call and answer: its serialized response, or the gRPC status of its
    refusal (the same message as REST's, the error code and any `retry-after` in the trailers)."""
    started = time.monotonic()
    metadata = metadata_of(context)
    call = Call(RequestRecord(request_id_from(metadata)), metadata, peer_host(context.peer()))
    current_request(call.record.request_id)
    ids = (("x-request-id", call.record.request_id),)
    try:
        response = await handle(raw, call)
    except asyncio.CancelledError:  # the client cancelled, or its deadline passed
        call.status, call.grpc_code = CLIENT_LEFT, grpc.StatusCode.CANCELLED
        raise
    except Exception as exc:
        error = exc.error if isinstance(exc, Refused) else http_error(exc)
        if error is None or error.status not in STATUS:
            log.exception("%s failed (request id %s)", name, call.record.request_id)
            error = HttpError(500, "internal_error", f"internal error; the server logged it as request {ids[0][1]}")
        call.status, call.grpc_code = error.status, STATUS.get(error.status, grpc.StatusCode.INTERNAL)
        call.record.code = error.code
        trailers = [*ids, ("digitserve-code", error.code)]
        if error.headers and "Retry-After" in error.headers:
            trailers.append(("retry-after", error.headers["Retry-After"]))
        details = error.message if len(error.message) <= MAX_DETAILS else error.message[: MAX_DETAILS - 3] + "..."
        await context.abort(call.grpc_code, details, trailing_metadata=tuple(trailers))
    else:
        context.set_trailing_metadata(ids)
        return response.SerializeToString()
    finally:
        seconds, code = time.monotonic() - started, call.grpc_code.name
        observer.observe(call.record, route(name), "GRPC", call.status, seconds, call.client, grpc_code=code)
    raise AssertionError("unreachable: abort raises")
