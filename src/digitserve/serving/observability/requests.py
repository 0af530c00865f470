"""One request, followed: its id, what it asked and got, and how long each stage took.

The edge middleware makes a `RequestRecord` for every HTTP request (in the request's state under
`RECORD`) and echoes its id as `X-Request-ID`; the pipeline adds the prediction and its stages;
after the answer, `HttpObserver` counts it in the metrics, writes its access-log line and, when
tracing is on, its spans. The protocol's early refusals (`serving/http/protocol.py`), which never
reach the app, are written by `HttpObserver.protocol_answer` with their own id.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
from starlette.routing import BaseRoute
from starlette.types import Scope

from digitserve.config import Observability
from digitserve.runtime.reference import answer_indices
from digitserve.serving.http.answers import PROTOCOL_ANSWERED, ProtocolAnswer
from digitserve.serving.http.edge import CLIENT_LEFT
from digitserve.serving.http.request_id import request_id_of
from digitserve.serving.observability.logs import ACCESS_LOGGER, current_request
from digitserve.serving.observability.metrics import KNOWN_METHODS, ServiceMetrics, route_template
from digitserve.serving.observability.tracing import Tracing

RECORD = "digitserve.record"  # request state: this request's RequestRecord
ERROR_CODE = re.compile(rb'"code":\s*"([a-z_]{1,40})"')  # the service's JSON error body (serving/errors.py)
access_log = logging.getLogger(ACCESS_LOGGER)


class Stage(NamedTuple):
    name: str  # admission, decode, queue wait, inference batch, answer
    start: float  # time.monotonic()
    end: float
    attributes: dict[str, Any]


@dataclass(slots=True)
class Answer:
    model: str
    version: int
    alias: str | None
    probabilities: np.ndarray  # (n, 10)
    is_digit: np.ndarray  # (n,)


@dataclass(slots=True)
class RequestRecord:
    request_id: str
    arrived: float = field(default_factory=time.monotonic)
    wall_ns: int = field(default_factory=time.time_ns)  # the same instant, for spans
    answer: Answer | None = None
    answered_at: float | None = None
    stages: list[Stage] | None = None  # kept only while tracing
    code: str | None = None  # the error code of a 4xx/5xx answer

    def stage(self, name: str, start: float, end: float, **attributes: Any) -> None:
        if self.stages is not None:
            self.stages.append(Stage(name, start, end, attributes))

    def answered(self, answer: Answer) -> None:
        self.answer, self.answered_at = answer, time.monotonic()

    def error_body(self, body: bytes) -> None:
        """Note the error code of an error answer's body (the first one)."""
        if self.code is None:
            found = ERROR_CODE.search(body[:4096])
            self.code = found.group(1).decode() if found else "other"


def record_of(scope: Scope) -> RequestRecord:
    record: RequestRecord = scope["state"][RECORD]
    return record


def prediction_record(scope: Scope) -> RequestRecord | None:
    """The record of a request that came through the edge (None for one that did not: tests)."""
    found = scope.get("state", {}).get(RECORD)
    return found if isinstance(found, RequestRecord) else None


class HttpObserver:
    """Counts every HTTP answer (route template, method, status; error codes), writes its
    access-log line and its spans; called by the edge middleware after the answer."""

    def __init__(
        self, metrics: ServiceMetrics, routes: Sequence[BaseRoute], settings: Observability, tracing: Tracing | None
    ) -> None:
        self.metrics = metrics
        self.routes = routes
        self.settings = settings
        self.tracing = tracing

    def start(self, scope: Scope) -> str:
        """A new request: its record (in its state) and its id, also for the logs made meanwhile."""
        state = scope.setdefault("state", {})
        record = state[RECORD] = RequestRecord(request_id_of(state, scope["headers"]))
        if self.tracing is not None:
            record.stages = []
        current_request(record.request_id)
        return record.request_id

    def error(self, scope: Scope, body: bytes) -> None:
        """An error answer's body: its code is noted for the metrics and the log line."""
        record_of(scope).error_body(body)

    def __call__(self, scope: Scope, status: int, seconds: float) -> None:
        if scope["state"].get(PROTOCOL_ANSWERED):
            return  # the protocol answered it (408 for a body too slow) and told `protocol_answer`
        record = record_of(scope)
        route = route_template(self.routes, scope)
        method = scope["method"] if scope["method"] in KNOWN_METHODS else "other"
        if self.metrics.per_request:
            self.metrics.requests.labels(route, method, str(status)).inc()
            self.metrics.latency.labels(route).observe(seconds)
            if status >= 400:
                code = record.code or ("client_disconnected" if status == CLIENT_LEFT else "other")
                self.metrics.refusals.labels(route, code).inc()
        trace_id = self._trace(scope, route, status, record) if self.tracing is not None else None
        if self.settings.access_log:
            client = scope.get("client")
            fields = self._fields(record, method, route, status, seconds, client[0] if client else None)
            if trace_id is not None:
                fields["trace_id"] = trace_id
            access_log.info("%s %s %d", method, route, status, extra=fields)

    def _trace(self, scope: Scope, route: str, status: int, record: RequestRecord) -> str:
        assert self.tracing is not None
        end = time.monotonic()
        if record.answered_at is not None:
            record.stage("answer", record.answered_at, end)
        return self.tracing.export(scope, route, status, record, end)

    def _fields(
        self, record: RequestRecord, method: str, route: str, status: int, seconds: float, client: str | None
    ) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "request_id": record.request_id,
            "method": method,
            "route": route,
            "status": status,
            "duration_ms": round(seconds * 1000, 3),
            "client": client,
        }
        if record.code is not None:
            fields["code"] = record.code
        answer = record.answer
        if answer is not None:
            fields.update(model=answer.model, version=answer.version, alias=answer.alias, images=len(answer.is_digit))
            if self.settings.log_answers:
                labels = answer_indices(answer.probabilities, answer.is_digit)
                fields["labels"] = [int(x) if x < 10 else None for x in labels]  # None: not a digit
                fields["is_digit"] = answer.is_digit.tolist()
        return fields

    def protocol_answer(self, answer: ProtocolAnswer) -> None:
        """An answer the HTTP protocol sent itself (early 503s, 400, 408, 414, 431), counted and
        logged; status 0 is a connection closed without a request (counted only)."""
        if self.metrics.per_request:
            if answer.refusal:
                self.metrics.refused_connections.labels(answer.code).inc()
            else:  # admission's 503 on arrival: a request of its route, refused
                self.metrics.requests.labels(answer.route, answer.method, str(answer.status)).inc()
                self.metrics.refusals.labels(answer.route, answer.code).inc()
        if self.settings.access_log and answer.status:
            fields = {
                "request_id": answer.request_id,
                "method": answer.method,
                "route": answer.route,
                "status": answer.status,
                "duration_ms": round(answer.seconds * 1000, 3),
                "client": answer.client,
                "code": answer.code,
            }
            access_log.info("%s %s %d", answer.method, answer.route, answer.status, extra=fields)
