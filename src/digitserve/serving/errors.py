"""Typed errors of the service, and the one place that turns them into HTTP answers.

Every client mistake maps to a 4xx JSON body `{"error": "<what is wrong>", "code": "<code>"}`;
overload and shutdown map to 503 with `Retry-After`; anything unexpected is logged with its
traceback and answered with a generic 500, which the tests treat as a bug.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from digitserve.serving.responses import JSONResponse

log = logging.getLogger(__name__)


class ServiceError(Exception):
    """An error with an HTTP status and a message meant for the client."""

    status_code = 400
    code = "bad_request"
    headers: dict[str, str] | None = None

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInputError(ServiceError):
    status_code, code = 422, "invalid_input"


class PayloadTooLargeError(ServiceError):
    status_code, code = 413, "payload_too_large"


class UnsupportedMediaTypeError(ServiceError):
    status_code, code = 415, "unsupported_media_type"


class UnknownModelError(ServiceError):
    status_code, code = 404, "unknown_model"


class UnknownVersionError(ServiceError):
    status_code, code = 404, "unknown_version"


class UnauthorizedError(ServiceError):
    status_code, code = 401, "unauthorized"
    headers = {"WWW-Authenticate": "Bearer"}


class _Unavailable(ServiceError):
    status_code = 503
    headers = {"Retry-After": "1"}


class QueueFullError(_Unavailable):
    code = "overloaded"


class ShuttingDownError(_Unavailable):
    code = "shutting_down"


class ModelNotReadyError(_Unavailable):
    code = "model_not_ready"
    headers = {"Retry-After": "5"}


class DeadlineExceededError(ServiceError):
    status_code, code = 504, "deadline_exceeded"


def error_response(
    status: int, message: str, code: str, headers: dict[str, str] | None = None, **extra: Any
) -> JSONResponse:
    return JSONResponse({"error": message, "code": code, **extra}, status_code=status, headers=headers)


def _describe_validation(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, exc: ServiceError) -> JSONResponse:
        return error_response(exc.status_code, exc.message, exc.code, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(422, _describe_validation(exc), "invalid_request")

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else "request refused"
        if exc.status_code == 404 and message == "Not Found":
            message = f"no such endpoint: {request.method} {request.url.path}; see /docs"
        elif exc.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}; see /docs"
        elif exc.status_code == 400 and message == "There was an error parsing the body":  # FastAPI's words
            message = "the request body cannot be parsed: send UTF-8 JSON as /docs shows"
        codes = {400: "bad_request", 404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}
        code = codes.get(exc.status_code, "http_error")
        return error_response(exc.status_code, message, code, getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return error_response(500, "internal error; it has been logged", "internal_error")
