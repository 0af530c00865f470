"""The connection limits uvicorn's HTTP protocol lacks, in a subclass of it.

uvicorn's httptools protocol buffers a request line and headers of any size (a 64 MiB header
cost 7.6 s of CPU), keeps a connection that sends nothing, or half a request, open forever, and
accepts connections until the process runs out of file descriptors (then the alias poller fails
with EMFILE). `LimitedHttpProtocol` keeps httptools' speed and adds:

- a cap on open connections per process: one past it is answered 503 and closed at once, and the
  cap stays below the process's file-descriptor limit, leaving room for registry reads;
- a time limit on the request head (line and headers), from the connection's first moment or the
  next request's first byte; a silent connection is closed, a partial head answered 408;
- a time limit on the body, from the end of the head; past it 408 and the connection closes;
- size limits on the URL (414) and on the whole head (431), checked as the bytes arrive.

Idle keep-alive connections keep uvicorn's own timer (`KEEP_ALIVE_S`).
"""

from __future__ import annotations

import asyncio
import logging
import resource
import time
from collections.abc import Callable
from typing import Any, NamedTuple, cast

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from digitserve.config import HttpLimits, Settings
from digitserve.serving.errors import HttpError
from digitserve.serving.http.answers import PROTOCOL_ANSWERED, ProtocolAnswer, response_bytes
from digitserve.serving.http.request_id import request_id_from, request_id_of
from digitserve.serving.http.routes import Prediction, prediction_of

log = logging.getLogger(__name__)
# Keys of the app's lifespan state, which uvicorn hands to every connection's protocol:
LIMITS = "digitserve.connection_limits"  # ConnectionLimits (the defaults when the app gives none)
EARLY_ANSWER = "digitserve.early_answer"  # admission's early_answer (EarlyAnswer below)
ANSWERED = "digitserve.protocol_answer"  # (ProtocolAnswer) -> None: counts and logs an answer made here
RESERVED_FDS = 64  # descriptors kept free for registry reads, model files, decode workers, logs


class ConnectionLimits(NamedTuple):
    max_connections: int
    head_timeout_s: float
    body_timeout_s: float
    max_head_bytes: int
    max_url_bytes: int

    @classmethod
    def from_settings(cls, http: HttpLimits) -> ConnectionLimits:
        return cls(
            connection_cap(http.max_connections),
            http.head_timeout_s,
            http.body_timeout_s,
            http.max_head_bytes,
            http.max_url_bytes,
        )


def connection_cap(wanted: int) -> int:
    """`wanted`, lowered to fit this process's file-descriptor limit (raised to its hard limit
    first), with `RESERVED_FDS` left over for everything that is not a client connection."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:  # the cap below then follows the soft limit
            log.info("the file-descriptor limit stays at %d: %s", soft, exc)
    cap = min(wanted, soft - RESERVED_FDS)
    if cap < wanted:
        log.warning("open connections capped at %d: the file-descriptor limit is %d", cap, soft)
    return max(cap, 1)


# admission's (method, url, headers, request state) -> the prediction and its 503, or None
EarlyAnswer = Callable[[bytes, bytes, list[tuple[bytes, bytes]], dict[str, Any]], "tuple[Prediction, HttpError] | None"]
_DEFAULT_LIMITS: list[ConnectionLimits] = []  # from the environment, once, for an app that gives none


def default_limits() -> ConnectionLimits:
    if not _DEFAULT_LIMITS:
        _DEFAULT_LIMITS.append(ConnectionLimits.from_settings(Settings().http))
    return _DEFAULT_LIMITS[0]


class LimitedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the limits above, which the app's lifespan state gives
    (`LIMITS`: the app's own settings, in every worker process)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        limits = self.app_state.get(LIMITS)
        self.caps: ConnectionLimits = limits if isinstance(limits, ConnectionLimits) else default_limits()
        self._timer: asyncio.TimerHandle | None = None
        self._in_head = True  # reading a request line and headers (or waiting for them)
        self._head_begun = False  # a byte of the current request has been parsed
        self._head_bytes = 0  # bytes received since the current head began
        self._url_bytes = 0
        self._field_bytes = 0  # header names and values of the current head
        self._refused = False  # answered at the protocol level; the rest of the input is ignored
        self._skipping_body = False  # answered early (503); its body is read and dropped
        self._began = time.monotonic()  # the connection's, then each request's first byte

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.caps.max_connections:
            message = f"{len(self.connections) - 1} connections are open, the server's limit; retry shortly"
            self._refuse(503, message, "overloaded", {"Retry-After": "1"})
            return
        self._arm(self.caps.head_timeout_s)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # the rest of a refused request
        if self._in_head:
            self._head_bytes += len(data)
        super().data_received(data)
        if self.transport.is_closing():
            return  # uvicorn answered a malformed request itself (400)
        if self._in_head and not self._refused and self._head_bytes > self.caps.max_head_bytes:
            self._head_too_large()  # refused as it arrives, before the head is complete

    def on_message_begin(self) -> None:
        if self._refused:
            return
        super().on_message_begin()
        self._unset_keepalive_if_required()  # a request has begun, even within the read that ended the last
        self._in_head, self._head_begun, self._url_bytes, self._field_bytes = True, True, 0, 0
        self._began = time.monotonic()
        if self._timer is None:  # the next request on a kept-alive connection has begun
            self._arm(self.caps.head_timeout_s)

    def on_url(self, url: bytes) -> None:
        self._url_bytes += len(url)
        if self._url_bytes <= self.caps.max_url_bytes:
            super().on_url(url)
        elif not self._refused:
            self._refuse(414, f"the URL is over the {self.caps.max_url_bytes} byte limit", "uri_too_long")

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._refused:
            return
        self._field_bytes += len(name) + len(value) + 4
        if self._url_bytes + self._field_bytes > self.caps.max_head_bytes:
            self._head_too_large()
            return
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        if self._refused:
            return
        self._in_head, self._head_begun, self._head_bytes = False, False, 0
        self._arm(self.caps.body_timeout_s)
        if not self._answered_early():
            super().on_headers_complete()

    def _answered_early(self) -> bool:
        """Admission's 503 sent from here when it applies (`EARLY_ANSWER` in the app's state): under
        overload most requests are refused, and refusing one without the ASGI machinery costs a
        fraction as much, which keeps the event loop ahead of the requests it must read."""
        early: EarlyAnswer | None = self.app_state.get(EARLY_ANSWER)
        busy = self.pipeline or (self.cycle is not None and not self.cycle.response_complete)
        # an answer must not overtake an earlier request's on the same connection, and a client
        # that does not read its answers must meet uvicorn's flow control, not a growing buffer
        unusual = self.expect_100_continue or self.parser.should_upgrade() or self.parser.get_http_version() != "1.1"
        if early is None or busy or unusual or self.flow.write_paused:
            return False
        state = self.scope["state"]
        answer = early(self.parser.get_method(), self.url, self.headers, state)
        if answer is None:
            return False
        prediction, refusal = answer
        self._skipping_body = True
        request_id = request_id_of(state, self.headers)
        self.transport.write(
            response_bytes(refusal.status, refusal.message, refusal.code, request_id, refusal.headers, close=False)
        )
        self._tell(refusal.status, refusal.code, request_id, prediction.template, refusal=False)
        return True

    def on_body(self, body: bytes) -> None:
        if not (self._refused or self._skipping_body):
            super().on_body(body)

    def on_message_complete(self) -> None:
        self._disarm()
        if self._skipping_body:  # the request answered early is complete: wait for the next one
            self._skipping_body = False
            self.server_state.total_requests += 1
            self._unset_keepalive_if_required()
            self.timeout_keep_alive_task = self.loop.call_later(
                self.timeout_keep_alive, self.timeout_keep_alive_handler
            )
        elif not self._refused:
            super().on_message_complete()

    def _head_too_large(self) -> None:
        message = f"the request line and headers are over the {self.caps.max_head_bytes} byte limit"
        self._refuse(431, message, "headers_too_large")

    def _arm(self, seconds: float) -> None:
        self._disarm()
        self._timer = self.loop.call_later(seconds, self._timed_out)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _timed_out(self) -> None:
        self._timer = None
        if self.transport.is_closing():
            return
        part = "request line and headers" if self._in_head else "request body"
        limit = self.caps.head_timeout_s if self._in_head else self.caps.body_timeout_s
        if self.pipeline or self.flow.read_paused:
            self._arm(limit)  # the server stopped reading (an earlier request runs): not the client's delay
            return
        answered = self.cycle is not None and self.cycle.response_complete and not self._in_head
        if self._skipping_body or answered:  # its answer went already; the rest of its body never came
            self.transport.close()
            return
        if self._in_head and not self._head_begun and self._head_bytes == 0:
            self.transport.close()  # a connection that never sent a byte: nothing to answer
            self._tell(0, "idle_connection", "-", "unmatched")
            return
        self._refuse(408, f"the {part} did not arrive within {limit:g} s", "request_timeout")

    def _refuse(self, status: int, message: str, code: str, headers: dict[str, str] | None = None) -> None:
        """Answer at the protocol level and close; a request the app is reading sees a disconnect."""
        self._disarm()
        self._refused = True
        request_id = self._request_id()
        running = self.cycle is not None and not self.cycle.response_complete
        if running and (self._in_head or self.pipeline):  # behind a request still running: let that one answer
            self._tell(0, code, request_id, "unmatched")  # counted; no answer goes, so no line
            self.cycle.keep_alive = False
            self.flow.pause_reading()
            return
        if self.cycle is not None and not self._in_head:  # this line is the request's: the app writes none
            self.cycle.scope["state"][PROTOCOL_ANSWERED] = True
        self._tell(status, code, request_id, self._route())
        if self.cycle is not None and not self.cycle.response_complete:
            if self.cycle.response_started:
                self.transport.close()
                return
            self.cycle.disconnected = True  # the app's own answer, if any, is dropped
            self.cycle.message_event.set()
        self.transport.write(response_bytes(status, message, code, request_id, headers))
        self.transport.close()

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to a request it cannot parse, as the service's JSON error with an id."""
        request_id = self._request_id()
        self._tell(400, "bad_request", request_id, "unmatched")
        self.transport.write(
            response_bytes(400, f"the request cannot be parsed as HTTP: {msg}", "bad_request", request_id)
        )
        self.transport.close()

    def _request_id(self) -> str:
        """The id of the request refused: kept in its state once its head was read."""
        headers = getattr(self, "headers", None) or []  # None before a request began
        if self.cycle is not None and not self._in_head:
            return request_id_of(self.cycle.scope["state"], headers)
        return request_id_from(headers)

    def _route(self) -> str:
        if self.cycle is None or self._in_head:
            return "unmatched"  # the request line and headers are not all here
        prediction = prediction_of(cast(dict[str, Any], self.cycle.scope))
        return prediction.template if prediction is not None else "unmatched"

    def _tell(self, status: int, code: str, request_id: str, route: str, refusal: bool = True) -> None:
        """Count (and log) an answer made here; status 0 is a connection closed without one."""
        answered: Callable[[ProtocolAnswer], None] | None = self.app_state.get(ANSWERED)
        if answered is None:
            return
        try:
            method = self.parser.get_method().decode("latin-1") if self._head_begun or not self._in_head else "-"
        except Exception:  # httptools has not read a method yet
            method = "-"
        client = self.client[0] if self.client else None
        answered(
            ProtocolAnswer(status, code, request_id, method, route, client, time.monotonic() - self._began, refusal)
        )
