"""The service's own errors, and the one place that turns any expected error into an HTTP answer.

Errors are typed where they are raised -- images (`digitserve.imaging`), the request checks and
the batcher (here: every room of the server raises these) -- and each carries its status and
code. `http_error` maps any expected error to its answer and `error_body` writes the one JSON
body every refusal has, `{"error": "<what is wrong>", "code": "<code>"}`, whether the HTTP
protocol, a middleware or a route answers. Client mistakes are 4xx, overload and shutdown 503
with `Retry-After`, a missed deadline 504. Anything unexpected is logged with its traceback and
answered with a generic 500, which the tests treat as a bug.

A leaf of `serving/`: it imports only the image errors below it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from digitserve.imaging.decode import ImageError, TooManyPixelsError, UnsupportedFormatError


class ServiceError(Exception):
    """A request the service refuses, with its HTTP status and a message meant for the client."""

    status_code = 400
    code = "bad_request"
    headers: dict[str, str] | None = None

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInputError(ServiceError):
    """The request is well formed but its content cannot be used (bad base64, wrong shape, ...)."""

    status_code, code = 422, "invalid_input"


class PayloadTooLargeError(ServiceError):
    """Too many images, bytes or pixels: split the request or send smaller images."""

    status_code, code = 413, "payload_too_large"


class UnsupportedMediaTypeError(ServiceError):
    """A body or file type the endpoint does not take."""

    status_code, code = 415, "unsupported_media_type"


class UnknownModelError(ServiceError):
    """The server does not serve a model of that name."""

    status_code, code = 404, "unknown_model"


class UnknownVersionError(ServiceError):
    """The registry has no such version or alias of the model."""

    status_code, code = 404, "unknown_version"


class VersionNotServableError(ServiceError):
    """The version exists but cannot be served (no ONNX artifact, a failed integrity or golden
    check): asking again will not help until the registry holds another version."""

    status_code, code = 422, "version_not_servable"


class UnauthorizedError(ServiceError):
    """An admin route without the right bearer token."""

    status_code, code = 401, "unauthorized"
    headers = {"WWW-Authenticate": "Bearer"}


class ForbiddenError(ServiceError):
    """An endpoint this server has turned off."""

    status_code, code = 403, "disabled"


class RateLimitedError(ServiceError):
    """A client sending faster than its share; `Retry-After` says when it may send again."""

    status_code, code = 429, "rate_limited"

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.headers = {"Retry-After": str(max(1, int(retry_after_s + 0.999)))}


class OverloadedError(ServiceError):
    """Too much work in progress right now; retry after a second."""

    status_code, code = 503, "overloaded"
    headers = {"Retry-After": "1"}


class QueueFullError(OverloadedError):
    """A version's batcher has no room for the images."""


class ServiceUnavailableError(ServiceError):
    """Something the request needs on this server is not working now (a full or read-only disk, ...)."""

    status_code, code = 503, "unavailable"
    headers = {"Retry-After": "30"}


class ShuttingDownError(ServiceError):
    """The server received SIGTERM: retry on another replica (the connection is closed)."""

    status_code, code = 503, "shutting_down"
    headers = {"Retry-After": "1", "Connection": "close"}


class RetiredError(ServiceError):
    """The version was retired (hot-swap or shutdown) before the request could be queued."""

    status_code, code = 503, "shutting_down"
    headers = {"Retry-After": "1"}


class ModelNotReadyError(ServiceError):
    """No verified version of the model is loaded yet, or the registry cannot be read."""

    status_code, code = 503, "model_not_ready"
    headers = {"Retry-After": "5"}


class DeadlineExceededError(ServiceError):
    """No answer within the request's deadline (decoding, queueing or the forward pass)."""

    status_code, code = 504, "deadline_exceeded"


@dataclass(frozen=True)
class HttpError:
    status: int
    code: str
    message: str
    headers: dict[str, str] | None = None


def http_error(exc: BaseException) -> HttpError | None:
    """The HTTP answer for an expected error; None for anything unexpected (a bug: 500)."""
    if isinstance(exc, ServiceError):
        return HttpError(exc.status_code, exc.code, exc.message, exc.headers)
    if isinstance(exc, ImageError):
        status = 415 if isinstance(exc, UnsupportedFormatError) else 413 if isinstance(exc, TooManyPixelsError) else 422
        return HttpError(status, exc.code, str(exc))
    return None


def quoted(value: object, limit: int = 60) -> str:
    """`repr(value)`, cut short past `limit` characters: a client's string in a message."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 4]}...{text[-1]}"


def error_body(message: str, code: str, **extra: Any) -> bytes:
    """The JSON body of every refusal, wherever it is answered."""
    return orjson.dumps({"error": message, "code": code, **extra})
