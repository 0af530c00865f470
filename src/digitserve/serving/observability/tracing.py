"""OpenTelemetry traces, only when `OTEL_EXPORTER_OTLP_ENDPOINT` (or `..._TRACES_ENDPOINT`) is set.

Unset, nothing here is imported and a request costs nothing more. Set, every HTTP request is one
server span (`POST /v1/models/{model}/predict`), a child of the client's W3C `traceparent` when it
sent one, with a child span per stage the request went through: admission, decode, queue wait,
inference batch (its size and version), answer. The spans are made after the answer from the
times `RequestRecord` kept, and exported over OTLP/HTTP by the SDK's batch processor, in its own
thread; the standard `OTEL_*` variables (service name, headers, sampler) apply.
"""

from __future__ import annotations

import logging
from typing import Any

from starlette.types import Scope

from digitserve import __version__
from digitserve.serving.observability.record import RequestRecord

log = logging.getLogger(__name__)
CARRIED = {b"traceparent": "traceparent", b"tracestate": "tracestate"}


class Tracing:
    def __init__(self) -> None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.trace import SpanKind, Status, StatusCode, set_span_in_context
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        resource = Resource.create({"service.name": "digitserve", "service.version": __version__})
        self.provider = TracerProvider(resource=resource)
        self.provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))  # reads OTEL_EXPORTER_OTLP_*
        self.tracer = self.provider.get_tracer("digitserve.serving")
        self.propagator = TraceContextTextMapPropagator()
        self._server, self._error = SpanKind.SERVER, Status(StatusCode.ERROR)
        self._in_span = set_span_in_context

    def export(self, scope: Scope, route: str, status: int, record: RequestRecord, end: float) -> str:
        """The request's spans, the last ending at `end` (monotonic); returns the trace id (hex)."""

        def ns(t: float) -> int:
            return record.wall_ns + int((t - record.arrived) * 1e9)

        carrier = {CARRIED[k]: v.decode("latin-1") for k, v in scope["headers"] if k in CARRIED}
        parent = self.propagator.extract(carrier) if carrier else None
        attributes: dict[str, Any] = {
            "http.request.method": scope["method"],
            "http.route": route,
            "http.response.status_code": status,
            "digitserve.request_id": record.request_id,
        }
        if record.answer is not None:
            attributes.update(
                {
                    "digitserve.model": record.answer.model,
                    "digitserve.version": record.answer.version,
                    "digitserve.images": len(record.answer.is_digit),
                }
            )
        span = self.tracer.start_span(
            f"{scope['method']} {route}", parent, self._server, attributes, start_time=record.wall_ns
        )
        inside = self._in_span(span)
        for stage in record.stages or ():
            child = self.tracer.start_span(stage.name, inside, attributes=stage.attributes, start_time=ns(stage.start))
            child.end(end_time=ns(stage.end))
        if status >= 500:
            span.set_status(self._error)
        span.end(end_time=ns(end))
        return format(span.get_span_context().trace_id, "032x")

    def close(self) -> None:
        """Export what is buffered, then stop the exporter's thread."""
        try:
            self.provider.shutdown()
        except Exception:  # an unreachable collector must not fail the shutdown
            log.warning("the trace exporter did not shut down cleanly", exc_info=True)
