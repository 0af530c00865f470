"""The server's refusals as typed exceptions, one class per family of its error codes.

Every /v1 refusal has the body `{"error": "<what is wrong>", "code": "<code>"}`
(`digitserve.serving.errors`); `error_for` turns such an answer into the class its code
belongs to, and an unknown code (or a body that is not the server's, say a proxy's HTML page)
into the base `DigitserveError`.
"""

from __future__ import annotations

import email.utils
import time
from typing import ClassVar

import httpx


class DigitserveError(Exception):
    """A request the server refused, or could not answer.

    `status` is the HTTP status (None when no answer came), `code` the server's error code,
    `message` what the server said is wrong, `request_id` its `X-Request-ID` (quote it when
    reporting a problem) and `retry_after_s` its `Retry-After`, when it sent one.
    """

    codes: ClassVar[tuple[str, ...]] = ()
    retryable: ClassVar[bool] = False

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        request_id: str | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.request_id = request_id
        self.retry_after_s = retry_after_s

    def __str__(self) -> str:
        if self.status is None:  # no answer: the message says it all
            return self.message
        return f"{self.message} ({self.status} {self.code})" if self.code else f"{self.message} ({self.status})"


class InvalidInputError(DigitserveError):
    """The request's content cannot be used: not an image, no digit in it, a bad field, a version
    that exists but cannot be served. Sending the same again will not help."""

    codes = ("invalid_input", "invalid_image", "no_digit", "invalid_request", "bad_request", "version_not_servable")


class PayloadTooLargeError(DigitserveError):
    """Too many images, bytes or pixels: split the request or send smaller images."""

    codes = ("payload_too_large", "image_too_large", "uri_too_long", "headers_too_large")


class UnsupportedMediaTypeError(DigitserveError):
    """An image format the server does not take (it takes PNG, JPEG, WebP, BMP and GIF)."""

    codes = ("unsupported_media_type", "unsupported_format")


class NotFoundError(DigitserveError):
    """The server serves no model of that name, or the registry has no such version or alias."""

    codes = ("unknown_model", "unknown_version", "not_found")


class UnauthorizedError(DigitserveError):
    """An admin route without the right bearer token."""

    codes = ("unauthorized",)


class DisabledError(DigitserveError):
    """An endpoint this server has turned off (feedback, for one)."""

    codes = ("disabled",)


class RateLimitedError(DigitserveError):
    """This client sent faster than its share; `retry_after_s` says when it may send again.
    Never retried by the client: waiting is the caller's decision."""

    codes = ("rate_limited",)


class ServiceUnavailableError(DigitserveError):
    """Overloaded, shutting down, or the model is not loaded yet: the client retried it
    (`Retry`) and it still was; trying again later, or on another replica, may succeed."""

    codes = ("overloaded", "shutting_down", "model_not_ready", "not_ready", "unavailable")
    retryable = True


class DeadlineExceededError(DigitserveError):
    """The server did not finish the prediction within its deadline (504)."""

    codes = ("deadline_exceeded",)


class NoAnswerError(DigitserveError):
    """No HTTP answer came: the connection broke or timed out after the request was sent."""


class ServerUnreachableError(NoAnswerError):
    """Nothing answered at the URL: no server is listening there (or it cannot be reached)."""

    def __init__(self, url: str) -> None:
        super().__init__(f"no digitserve server at {url}; start one with `digitserve serve`", code="unreachable")
        self.url = url


FAMILIES: tuple[type[DigitserveError], ...] = (
    InvalidInputError,
    PayloadTooLargeError,
    UnsupportedMediaTypeError,
    NotFoundError,
    UnauthorizedError,
    DisabledError,
    RateLimitedError,
    ServiceUnavailableError,
    DeadlineExceededError,
)
ERROR_BY_CODE: dict[str, type[DigitserveError]] = {code: cls for cls in FAMILIES for code in cls.codes}


def retry_after_s(value: str | None) -> float | None:
    """A `Retry-After` header in seconds: a number of seconds or an HTTP date; None if absent or unreadable."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def error_for(response: httpx.Response) -> DigitserveError:
    """The exception for a refusal: its code's family, or the base class for a code it does not know."""
    message, code = _message_and_code(response)
    cls = ERROR_BY_CODE.get(code, DigitserveError) if code is not None else DigitserveError
    return cls(
        message,
        status=response.status_code,
        code=code,
        request_id=response.headers.get("x-request-id"),
        retry_after_s=retry_after_s(response.headers.get("retry-after")),
    )


def _message_and_code(response: httpx.Response) -> tuple[str, str | None]:
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        code = body.get("code")
        return body["error"], code if isinstance(code, str) else None
    text = response.text.strip()[:200]
    return text or response.reason_phrase or f"HTTP {response.status_code}", None
