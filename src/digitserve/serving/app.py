"""`create_app(settings)`: the FastAPI application, its lifespan and its routers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from importlib.resources import files
from types import FrameType
from typing import Any

from fastapi import FastAPI
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client import multiprocess

from digitserve import __version__
from digitserve.config import Settings
from digitserve.registry import LocalStore, ModelRegistry, open_store
from digitserve.registry.cache import CachedRegistry
from digitserve.registry.feedback import FeedbackStore
from digitserve.serving.batching import InferenceSlots
from digitserve.serving.browse import RegistryBrowser
from digitserve.serving.catalog import Catalog
from digitserve.serving.connections import COUNT_REFUSAL, EARLY_ANSWER
from digitserve.serving.decoding import ImageDecoder
from digitserve.serving.errors import install_error_handlers
from digitserve.serving.feedback import FeedbackSpool, RateLimiter
from digitserve.serving.manager import ModelManager
from digitserve.serving.metrics import MetricsMiddleware, ServiceMetrics
from digitserve.serving.middleware import Admission, AdmissionMiddleware, BodySizeLimitMiddleware, DrainMiddleware
from digitserve.serving.oip import routes as oip
from digitserve.serving.pipeline import PredictionPipeline
from digitserve.serving.responses import JSONResponse
from digitserve.serving.rollout import Rollouts
from digitserve.serving.routes import admin, browse, feedback, health, listing, predict
from digitserve.serving.routes.feedback import FeedbackService
from digitserve.serving.shutdown import ANSWER_ACCEPTED_S, close_listeners
from digitserve.serving.workers import ReloadBroadcast

log = logging.getLogger(__name__)
STATIC = files("digitserve") / "static"


def _install_sigterm_drain(app: FastAPI, loop: asyncio.AbstractEventLoop, grace_s: float) -> None:
    """On SIGTERM: /readyz turns 503, new predictions are refused at once and every answer closes
    its connection; after `grace_s` the listener closes without resetting queued connections
    (shutdown.py), then the server's own handler runs (answers in-flight requests, exits)."""
    previous = signal.getsignal(signal.SIGTERM)
    if not callable(previous):
        return

    def stop(signum: int, frame: FrameType | None) -> None:
        close_listeners(getattr(previous, "__self__", None))  # uvicorn's handler is a bound method
        loop.call_later(ANSWER_ACCEPTED_S, previous, signum, frame)

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        if app.state.draining:
            return
        app.state.draining = True
        log.info("SIGTERM: draining for %.1fs, then shutting down", grace_s)
        loop.call_soon_threadsafe(loop.call_later, grace_s, stop, signum, frame)

    signal.signal(signal.SIGTERM, on_sigterm)


def open_serving_registry(settings: Settings) -> ModelRegistry:
    """A remote registry gets a disk cache of verified blobs, so the server can start and keep
    serving while the registry is unreachable; a local folder needs none."""
    store = open_store(settings.registry, must_exist=True)  # a missing folder is unreachable, not empty
    if isinstance(store, LocalStore):
        return ModelRegistry(store)
    return CachedRegistry(store, settings.cache_dir)


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
    settings: Settings = app.state.settings
    registry = open_serving_registry(settings)
    slots = InferenceSlots(settings.inference_slots)
    loader = ThreadPoolExecutor(settings.registry_threads, thread_name_prefix="registry")
    listings = ThreadPoolExecutor(settings.registry_threads, thread_name_prefix="catalog")
    decoder = ImageDecoder(settings)
    manager = ModelManager(settings, registry, app.state.metrics, slots, loader)
    app.state.manager = manager
    admission: Admission = app.state.admission
    rollouts = app.state.rollouts = Rollouts(settings, manager, registry, lambda: admission.in_progress)
    app.state.pipeline = PredictionPipeline(manager, decoder, settings, rollouts)
    app.state.catalog = Catalog(registry, listings)  # its own threads: a slow listing never delays a load
    app.state.browser = RegistryBrowser(registry)
    browsing = app.state.browsing = ThreadPoolExecutor(2, thread_name_prefix="browse")  # the models pages' own
    spool = _feedback_spool(app, settings, registry)
    await manager.refresh_all()  # first load; a registry outage leaves the server up but not ready
    poller = asyncio.create_task(_poll_after(manager, settings.poll_seconds), name="alias-poller")
    drainer = asyncio.create_task(spool.run(), name="feedback-writer")
    watch = asyncio.create_task(rollouts.run(), name="rollout-watch")
    broadcast = app.state.broadcast = ReloadBroadcast.from_env()
    watcher = broadcast and asyncio.create_task(broadcast.watch(lambda: manager.refresh_all(force=True)))
    if settings.shutdown_grace_s > 0:
        _install_sigterm_drain(app, asyncio.get_running_loop(), settings.shutdown_grace_s)
    try:
        refusals = app.state.metrics.refused_connections
        yield {  # for serving/connections.py
            EARLY_ANSWER: app.state.admission.early_answer,
            COUNT_REFUSAL: lambda code: refusals.labels(code).inc(),
        }
    finally:
        for task in (poller, watcher, drainer, watch):
            if task:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await manager.close()  # answers everything still queued
        await rollouts.close()  # the last evidence
        await spool.close()  # what the registry cannot take now stays on disk for the next start
        slots.shutdown()
        decoder.close()
        loader.shutdown(wait=False, cancel_futures=True)
        listings.shutdown(wait=False, cancel_futures=True)
        browsing.shutdown(wait=False, cancel_futures=True)
        if app.state.metrics.shared:
            multiprocess.mark_process_dead(os.getpid())


def _feedback_spool(app: FastAPI, settings: Settings, registry: ModelRegistry) -> FeedbackSpool:
    metrics: ServiceMetrics = app.state.metrics

    def on_change(pending: int, written: int) -> None:
        metrics.feedback_spooled.set(pending)
        metrics.feedback_written.inc(written)

    spool = FeedbackSpool(
        settings.feedback_spool_dir,
        registry.uri,
        FeedbackStore(registry.store),
        settings.feedback_max_spooled,
        on_change,
    )
    on_change(spool.pending, 0)  # what an earlier run left spooled
    limiter = RateLimiter(settings.feedback_per_minute)
    app.state.feedback = FeedbackService(settings.feedback_enabled, spool, limiter)
    return spool


async def _poll_after(manager: ModelManager, delay: float) -> None:
    await asyncio.sleep(delay)
    await manager.poll_forever()


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
    )
    app.state.settings = settings
    app.state.metrics = ServiceMetrics()
    app.state.draining = False
    app.state.broadcast = None
    install_error_handlers(app)
    for router in (predict.router, feedback.router, listing.router, browse.router, health.router, oip.router):
        app.include_router(router)
    if settings.admin_token is not None:
        app.include_router(admin.router)
    _mount_page(app)
    app.state.admission = Admission(
        settings.max_concurrent_requests,
        check_room=lambda model, n: _check_room(app, model, n),
        draining=lambda: bool(app.state.draining),
        max_body_bytes=settings.max_body_bytes,
        count=lambda route: app.state.metrics.requests.labels(route, "POST", "503").inc(),
    )
    app.add_middleware(
        BodySizeLimitMiddleware,
        max_bytes=settings.max_body_bytes,
        per_path={"/v1/feedback": settings.feedback_max_body_bytes},
    )
    app.add_middleware(AdmissionMiddleware, admission=app.state.admission, timeout_s=settings.request_timeout_s)
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics, router_app=app.router)
    app.add_middleware(DrainMiddleware, draining=lambda: bool(app.state.draining))
    return app


def _check_room(app: FastAPI, model: str, n: int) -> None:
    pipeline: PredictionPipeline | None = getattr(app.state, "pipeline", None)
    if pipeline is not None:  # None only before start-up, when nothing is queued anyway
        pipeline.check_room(model, n)


def _mount_page(app: FastAPI) -> None:
    if not STATIC.joinpath("index.html").is_file():
        return

    @app.get("/", include_in_schema=False, response_class=HTMLResponse)
    async def index() -> HTMLResponse:
        return HTMLResponse(STATIC.joinpath("index.html").read_text(encoding="utf-8"))

    # The models pages are one static page that reads the path: /models, /models/cnn/4, /models/compare.
    models_html = STATIC.joinpath("models.html").read_text(encoding="utf-8")

    @app.get("/models", include_in_schema=False, response_class=HTMLResponse)
    @app.get("/models/{path:path}", include_in_schema=False, response_class=HTMLResponse)
    async def models_page(path: str = "") -> HTMLResponse:
        return HTMLResponse(models_html)

    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")


def app_from_env() -> Any:
    """Factory for `uvicorn --factory digitserve.serving.app:app_from_env` (multi-worker runs)."""
    return create_app(Settings())
