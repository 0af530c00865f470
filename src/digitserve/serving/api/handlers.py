"""The exception handlers: every expected error answered as `serving/errors.py` maps it, FastAPI's
own refusals (validation, 404, 405, a body that cannot be parsed) in our words, and anything
unexpected logged with its traceback and answered with a generic 500 (a bug)."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from digitserve.imaging.decode import ImageError
from digitserve.serving.errors import HttpError, ServiceError, error_body, http_error

log = logging.getLogger(__name__)


def error_response(
    status: int, message: str, code: str, headers: dict[str, str] | None = None, **extra: Any
) -> Response:
    """The service's JSON error body (`serving/errors.py`) as a response."""
    return Response(error_body(message, code, **extra), status, headers, media_type="application/json")


def _describe_validation(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
        message = str(err.get("msg", "invalid")).removeprefix("Value error, ")  # pydantic's prefix, not ours
        parts.append(f"{where}: {message}")
    return "; ".join(parts)[:2000] or "invalid request"


def _starlette_error(method: str, path: str, exc: StarletteHTTPException) -> HttpError:
    message = exc.detail if isinstance(exc.detail, str) else "request refused"
    if exc.status_code == 404 and message == "Not Found":
        message = f"no such endpoint: {method} {path[:200]}; see /docs"
    elif exc.status_code == 405:
        message = f"{method} is not allowed on {path[:200]}; see /docs"
    elif exc.status_code == 400 and message == "There was an error parsing the body":  # FastAPI's words
        message = "the request body cannot be parsed: send UTF-8 JSON as /docs shows"
    codes = {400: "bad_request", 404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}
    return HttpError(exc.status_code, codes.get(exc.status_code, "http_error"), message, getattr(exc, "headers", None))


def error_answer(exc: Exception, method: str, path: str) -> Response:
    """The answer to an exception a request raised: an expected error as `serving/errors.py` maps
    it, Starlette's own (404, 405, 413, a body that cannot be read) in our words, anything else
    logged with its traceback and answered with a generic 500 (a bug)."""
    if isinstance(exc, RequestValidationError):
        return error_response(422, _describe_validation(exc), "invalid_request")
    error = _starlette_error(method, path, exc) if isinstance(exc, StarletteHTTPException) else http_error(exc)
    if error is None:
        log.error("unexpected error on %s %s", method, path[:200], exc_info=exc)
        return error_response(500, "internal error; it has been logged", "internal_error")
    return error_response(error.status, error.message, error.code, error.headers)


def install_error_handlers(app: FastAPI) -> None:
    async def answer(request: Request, exc: Exception) -> Response:
        return error_answer(exc, request.method, request.url.path)

    for kind in (ServiceError, ImageError, RequestValidationError, StarletteHTTPException, Exception):
        app.add_exception_handler(kind, answer)
