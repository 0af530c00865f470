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

import torch
from fastapi import FastAPI
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from digitserve import __version__
from digitserve.config import Settings
from digitserve.registry import LocalStore, ModelRegistry, open_store
from digitserve.registry.cache import CachedRegistry
from digitserve.serving.catalog import Catalog
from digitserve.serving.deps import queue_full_on_arrival
from digitserve.serving.errors import install_error_handlers
from digitserve.serving.limits import BodySizeLimitMiddleware, ConcurrencyLimitMiddleware
from digitserve.serving.manager import ModelManager
from digitserve.serving.metrics import MetricsMiddleware, ServiceMetrics
from digitserve.serving.responses import JSONResponse
from digitserve.serving.routes import admin, health, models, predict, v2

log = logging.getLogger(__name__)
STATIC = files("digitserve") / "static"


def _install_sigterm_drain(app: FastAPI, loop: asyncio.AbstractEventLoop, grace_s: float) -> None:
    """On SIGTERM: /readyz turns 503 and new predictions are refused at once; after `grace_s`
    the server's own handler runs (uvicorn stops accepting, answers in-flight requests, exits)."""
    previous = signal.getsignal(signal.SIGTERM)
    if not callable(previous):
        return

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        if app.state.draining:
            return
        app.state.draining = True
        log.info("SIGTERM: draining for %.1fs, then shutting down", grace_s)
        loop.call_soon_threadsafe(loop.call_later, grace_s, previous, signum, frame)

    signal.signal(signal.SIGTERM, on_sigterm)


def open_serving_registry(settings: Settings) -> ModelRegistry:
    """A remote registry gets a disk cache of verified blobs, so the server can start and keep
    serving while the registry is unreachable; a local folder needs none."""
    store = open_store(settings.registry)
    if isinstance(store, LocalStore):  # a missing folder is an unreachable registry, not an empty one
        return ModelRegistry(LocalStore(store.root, must_exist=True))
    return CachedRegistry(store, settings.cache_dir)


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    torch.set_num_threads(settings.torch_threads or os.cpu_count() or 1)
    registry = open_serving_registry(settings)
    inference = ThreadPoolExecutor(1, thread_name_prefix="forward")  # one forward pass at a time
    loader = ThreadPoolExecutor(2, thread_name_prefix="registry")
    manager = ModelManager(settings, registry, app.state.metrics, inference, loader)
    app.state.manager = manager
    listings = ThreadPoolExecutor(2, thread_name_prefix="catalog")
    app.state.catalog = Catalog(registry, listings)
    await manager.refresh_all()  # first load; a registry outage leaves the server up but not ready
    poller = asyncio.create_task(_poll_after(manager, settings.poll_seconds), name="alias-poller")
    if settings.shutdown_grace_s > 0:
        _install_sigterm_drain(app, asyncio.get_running_loop(), settings.shutdown_grace_s)
    try:
        yield
    finally:
        poller.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await poller
        await manager.close()  # answers everything still queued
        inference.shutdown(wait=True)
        loader.shutdown(wait=False, cancel_futures=True)
        listings.shutdown(wait=False, cancel_futures=True)


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
    install_error_handlers(app)
    for router in (predict.router, models.router, health.router, v2.router):
        app.include_router(router)
    if settings.admin_token is not None:
        app.include_router(admin.router)
    _mount_page(app)
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(
        ConcurrencyLimitMiddleware, max_requests=settings.max_concurrent_requests, saturated=queue_full_on_arrival
    )
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics, router_app=app.router)
    return app


def _mount_page(app: FastAPI) -> None:
    if not STATIC.joinpath("index.html").is_file():
        return

    @app.get("/", include_in_schema=False, response_class=HTMLResponse)
    async def index() -> HTMLResponse:
        return HTMLResponse(STATIC.joinpath("index.html").read_text(encoding="utf-8"))

    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")


def app_from_env() -> Any:
    """Factory for `uvicorn --factory digitserve.serving.app:app_from_env` (multi-worker runs)."""
    return create_app(Settings())
