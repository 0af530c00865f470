"""The service's own errors, and the one place that turns any expected error into an HTTP answer.

Errors are typed where they are raised: images (`digitserve.imaging`), the batcher
(`serving.batching`), the request checks here. `http_error` maps each to a status, a code and
headers; every client mistake is a 4xx JSON body `{"error": "<what is wrong>", "code": "<code>"}`,
overload and shutdown are 503 with `Retry-After`, a missed deadline 504. Anything unexpected is
logged with its traceback and answered with a generic 500, which the tests treat as a bug.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from digitserve.imaging import ImageError, UnsupportedFormatError
from digitserve.serving.batching import DeadlineExceededError, QueueFullError, RetiredError
from digitserve.serving.responses import JSONResponse

log = logging.getLogger(__name__)


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


class ServiceUnavailableError(ServiceError):
    """Something the request needs on this server is not working now (a full or read-only disk, ...)."""

    status_code, code = 503, "unavailable"
    headers = {"Retry-After": "30"}


class ShuttingDownError(ServiceError):
    """The server received SIGTERM: retry on another replica (the connection is closed)."""

    status_code, code = 503, "shutting_down"
    headers = {"Retry-After": "1", "Connection": "close"}


class ModelNotReadyError(ServiceError):
    """No verified version of the model is loaded yet, or the registry cannot be read."""

    status_code, code = 503, "model_not_ready"
    headers = {"Retry-After": "5"}


@dataclass(frozen=True)
class HttpError:
    status: int
    code: str
    message: str
    headers: dict[str, str] | None = None


def http_error(exc: Exception) -> HttpError | None:
    """The HTTP answer for an expected error; None for anything unexpected (a bug: 500)."""
    if isinstance(exc, ServiceError):
        return HttpError(exc.status_code, exc.code, exc.message, exc.headers)
    if isinstance(exc, ImageError):
        return HttpError(415 if isinstance(exc, UnsupportedFormatError) else 422, exc.code, str(exc))
    if isinstance(exc, QueueFullError):
        return HttpError(503, "overloaded", str(exc), {"Retry-After": "1"})
    if isinstance(exc, RetiredError):
        return HttpError(503, "shutting_down", str(exc), {"Retry-After": "1"})
    if isinstance(exc, DeadlineExceededError):
        return HttpError(504, "deadline_exceeded", str(exc))
    return None


def error_response(
    status: int, message: str, code: str, headers: dict[str, str] | None = None, **extra: Any
) -> JSONResponse:
    return JSONResponse({"error": message, "code": code, **extra}, status_code=status, headers=headers)


def _describe_validation(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
        message = str(err.get("msg", "invalid")).removeprefix("Value error, ")  # pydantic's prefix, not ours
        parts.append(f"{where}: {message}")
    return "; ".join(parts)[:2000] or "invalid request"


def _starlette_error(request: Request, exc: StarletteHTTPException) -> HttpError:
    message = exc.detail if isinstance(exc.detail, str) else "request refused"
    if exc.status_code == 404 and message == "Not Found":
        message = f"no such endpoint: {request.method} {request.url.path[:200]}; see /docs"
    elif exc.status_code == 405:
        message = f"{request.method} is not allowed on {request.url.path[:200]}; see /docs"
    elif exc.status_code == 400 and message == "There was an error parsing the body":  # FastAPI's words
        message = "the request body cannot be parsed: send UTF-8 JSON as /docs shows"
    codes = {400: "bad_request", 404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}
    return HttpError(exc.status_code, codes.get(exc.status_code, "http_error"), message, getattr(exc, "headers", None))


def install_error_handlers(app: FastAPI) -> None:
    async def expected(request: Request, exc: Exception) -> JSONResponse:
        error = http_error(exc)
        if error is None:
            return await unexpected(request, exc)
        return error_response(error.status, error.message, error.code, error.headers)

    async def validation(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return error_response(422, _describe_validation(exc), "invalid_request")

    async def starlette_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        error = _starlette_error(request, exc)
        return error_response(error.status, error.message, error.code, error.headers)

    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error("unexpected error on %s %s", request.method, request.url.path[:200], exc_info=exc)
        return error_response(500, "internal error; it has been logged", "internal_error")

    for kind in (ServiceError, ImageError, QueueFullError, RetiredError, DeadlineExceededError):
        app.add_exception_handler(kind, expected)
    app.add_exception_handler(RequestValidationError, validation)
    app.add_exception_handler(StarletteHTTPException, starlette_error)
    app.add_exception_handler(Exception, unexpected)
