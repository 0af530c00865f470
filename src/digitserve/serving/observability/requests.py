"""One request, followed: its id, what it asked and got, and how long each stage took.

The edge middleware makes a `RequestRecord` for every HTTP request (in the request's state under
`RECORD`) and echoes its id as `X-Request-ID`; the pipeline adds the prediction and its stages;
after the answer, `HttpObserver` counts it in the metrics, writes its access-log line and, when
tracing is on, its spans. The protocol's early refusals (`serving/http/protocol.py`), which never
reach the app, are written by `HttpObserver.protocol_answer` with their own id.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

from starlette.routing import BaseRoute
from starlette.types import Scope

from digitserve.config import Observability
from digitserve.runtime.reference import answer_indices
from digitserve.serving.http.answers import PROTOCOL_ANSWERED, ProtocolAnswer
from digitserve.serving.http.edge import CLIENT_LEFT
from digitserve.serving.http.request_id import request_id_of
from digitserve.serving.observability.logs import ACCESS_LOGGER, current_request
from digitserve.serving.observability.metrics import KNOWN_METHODS, ServiceMetrics, route_template
from digitserve.serving.observability.record import RECORD, RequestRecord, record_of
from digitserve.serving.observability.tracing import Tracing

access_log = logging.getLogger(ACCESS_LOGGER)


def line_fields(
    request_id: str, method: str, route: str, status: int, seconds: float, client: str | None, code: str | None
) -> dict[str, Any]:
    """The fields of every access line, the app's and the protocol's alike."""
    fields: dict[str, Any] = {
        "request_id": request_id,
        "method": method,
        "route": route,
        "status": status,
        "duration_ms": round(seconds * 1000, 3),
        "client": client,
    }
    if code is not None:
        fields["code"] = code
    return fields


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
        trace_id = None
        if self.tracing is not None:
            trace_id = self._trace(scope, route, status, record)
        client = scope.get("client")
        self.observe(record, route, method, status, seconds, client[0] if client else None, trace_id=trace_id)

    def observe(
        self,
        record: RequestRecord,
        route: str,
        method: str,
        status: int,
        seconds: float,
        client: str | None,
        **extra: Any,
    ) -> None:
        """Count one answered call and write its access line: an HTTP request's, or a gRPC call's
        (serving/grpc/, with the HTTP status its refusal has on REST and its gRPC code in `extra`)."""
        code = None
        if status >= 400:
            code = record.code or ("client_disconnected" if status == CLIENT_LEFT else "other")
        if self.metrics.per_request:
            self.metrics.requests.labels(route, method, str(status)).inc()
            self.metrics.latency.labels(route).observe(seconds)
            if code is not None:
                self.metrics.refusals.labels(route, code).inc()
        if self.settings.access_log:
            fields = line_fields(record.request_id, method, route, status, seconds, client, code)
            self._add_answer(fields, record)
            fields.update((k, v) for k, v in extra.items() if v is not None)
            access_log.info("%s %s %d", method, route, status, extra=fields)

    def _trace(self, scope: Scope, route: str, status: int, record: RequestRecord) -> str:
        assert self.tracing is not None
        end = time.monotonic()
        if record.answered_at is not None:
            record.stage("answer", record.answered_at, end)
        return self.tracing.export(scope, route, status, record, end)

    def _add_answer(self, fields: dict[str, Any], record: RequestRecord) -> None:
        answer = record.answer
        if answer is not None:
            fields.update(model=answer.model, version=answer.version, alias=answer.alias, images=len(answer.is_digit))
            if self.settings.log_answers:
                labels = answer_indices(answer.probabilities, answer.is_digit)
                fields["labels"] = [int(x) if x < 10 else None for x in labels]  # None: not a digit
                fields["is_digit"] = answer.is_digit.tolist()

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
            fields = line_fields(
                answer.request_id,
                answer.method,
                answer.route,
                answer.status,
                answer.seconds,
                answer.client,
                answer.code,
            )
            access_log.info("%s %s %d", answer.method, answer.route, answer.status, extra=fields)
