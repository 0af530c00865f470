"""`create_app(settings)`: the FastAPI application assembled -- its routers, its one middleware,
its error handlers, the web pages -- and a lifespan that starts and stops the `Services`."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI

from digitserve import __version__
from digitserve.config import Settings, load_settings, otlp_traces_endpoint
from digitserve.serving.api import health
from digitserve.serving.api.handlers import install_error_handlers
from digitserve.serving.api.pages import mount_pages
from digitserve.serving.api.v1 import admin, feedback, models, predict, registry
from digitserve.serving.api.v1.direct import direct_predict
from digitserve.serving.api.v2 import routes as v2
from digitserve.serving.http.admission import Admission
from digitserve.serving.http.edge import EdgeMiddleware
from digitserve.serving.http.protocol import ANSWERED, EARLY_ANSWER, LIMITS, ConnectionLimits
from digitserve.serving.http.routes import V1_FEEDBACK, V1_PREDICT
from digitserve.serving.http.shutdown import Drain, install_sigterm_drain
from digitserve.serving.observability.logs import lean_records
from digitserve.serving.observability.metrics import ServiceMetrics
from digitserve.serving.observability.requests import HttpObserver
from digitserve.serving.observability.tracing import Tracing
from digitserve.serving.responses import JSONResponse
from digitserve.serving.services import Services


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
    settings: Settings = app.state.settings
    admission: Admission = app.state.admission
    services = app.state.services = Services(settings, app.state.metrics, admission, app.state.drain)
    grpc_server = None
    try:
        await services.start()
        if settings.grpc_port is not None:  # OIP v2 over gRPC beside REST, on the same services
            from digitserve.serving.grpc.server import GrpcServer  # grpcio only when it is on

            grpc_server = GrpcServer(settings, services, admission, app.state.drain, app.state.observer)
            await grpc_server.start()
        if settings.http.shutdown_grace_s > 0:
            install_sigterm_drain(app.state.drain, asyncio.get_running_loop(), settings.http.shutdown_grace_s)
        yield {  # for serving/http/protocol.py, in every connection
            LIMITS: ConnectionLimits.from_settings(settings.http),
            EARLY_ANSWER: admission.early_answer,
            ANSWERED: app.state.observer.protocol_answer,
        }
    finally:
        try:
            if grpc_server is not None:  # its calls in flight finish while the batchers still run
                await grpc_server.stop(settings.http.graceful_shutdown_s)
        finally:
            await services.close()
        if app.state.tracing is not None:
            await asyncio.to_thread(app.state.tracing.close)  # exports what is buffered


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    app = FastAPI(
        title="digitserve",
        version=__version__,
        description="Handwritten-digit recognition: CNN and ViT models served from a versioned registry, "
        "with dynamic batching and zero-downtime hot-swap. Errors are JSON: "
        '`{"error": "...", "code": "..."}`.',
        default_response_class=JSONResponse,
        lifespan=lifespan,
        docs_url=None,  # served below from the package's own copy of Swagger UI
        redoc_url=None,
    )
    seen, limits = settings.observability, settings.requests
    lean_records()
    metrics, drain = ServiceMetrics(seen.drift_window, seen.request_metrics), Drain()
    app.state.settings, app.state.metrics, app.state.drain = settings, metrics, drain
    app.state.tracing = Tracing() if otlp_traces_endpoint() else None  # no endpoint: no cost
    app.state.admission = admission = Admission(
        limits.max_concurrent_requests,
        limits.request_timeout_s,
        limits.max_body_bytes,
        check_room=lambda model, n: None,  # nothing is queued before the services start
        draining=drain,
    )
    install_error_handlers(app)
    for router in (predict.router, feedback.router, models.router, registry.router, health.router, v2.router):
        app.include_router(router)
    if settings.admin_token is not None:
        app.include_router(admin.router)
    mount_pages(app)
    app.state.observer = HttpObserver(metrics, app.router.routes, seen, app.state.tracing)
    app.add_middleware(
        EdgeMiddleware,
        admission=admission,
        body_limits={V1_FEEDBACK: settings.feedback.max_body_bytes},
        draining=drain,
        observe=app.state.observer,
        direct={V1_PREDICT: direct_predict},  # plain JSON predictions skip FastAPI's routing (api/v1/direct.py)
    )
    return app


def app_from_env() -> Any:
    """Factory for `uvicorn --factory digitserve.serving.app:app_from_env` (multi-worker runs)."""
    return create_app(load_settings())
