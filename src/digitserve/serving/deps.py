"""FastAPI dependencies shared by the routers.

All of them are `async def`: FastAPI runs a plain `def` dependency in its thread pool, and
three thread hops per prediction cost more than the prediction (bench/README.md).
"""

from __future__ import annotations

import asyncio
import hmac
from typing import Annotated

import numpy as np
from fastapi import Depends, Request
from starlette.types import Scope

from digitserve.config import Settings
from digitserve.serving.errors import (
    DeadlineExceededError,
    QueueFullError,
    ShuttingDownError,
    UnauthorizedError,
)
from digitserve.serving.loading import LoadedVersion
from digitserve.serving.manager import ModelManager


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_manager(request: Request) -> ModelManager:
    return request.app.state.manager


async def accepting(request: Request) -> None:
    """Refuse new work once SIGTERM has been received."""
    if request.app.state.draining:
        raise ShuttingDownError("the server is shutting down; retry on another replica")


async def require_admin(request: Request) -> None:
    token = request.app.state.settings.admin_token
    header = request.headers.get("authorization", "")
    scheme, _, given = header.partition(" ")
    # compare_digest takes the same time wherever the strings differ
    if (
        token is None
        or scheme.lower() != "bearer"
        or not hmac.compare_digest(given.strip().encode(), token.get_secret_value().encode())
    ):
        raise UnauthorizedError("admin routes need 'Authorization: Bearer <DIGITSERVE_ADMIN_TOKEN>'")


SettingsDep = Annotated[Settings, Depends(get_settings)]
ManagerDep = Annotated[ModelManager, Depends(get_manager)]


def refuse_if_full(
    manager: ModelManager, model: str, n: int, version: int | None = None, alias: str | None = None
) -> None:
    """Before decoding: 503 now if the alias-served version's queue has no room for `n` more
    images, so an overloaded server does not spend its CPU decoding requests it will refuse.
    A request pinning a version or another alias is judged when it is queued."""
    if version is not None or alias is not None:
        return
    served = manager.state(model).served
    if served is not None and served.batcher is not None:
        served.batcher.check_room(n)


def queue_full_on_arrival(scope: Scope) -> QueueFullError | None:
    """The refusal of a prediction whose alias-served version's queue is already at its bound
    (so no request, of one image or more, fits), judged from the path before the body is read;
    None when it may fit, or when the request pins a version or another alias. Used by
    ConcurrencyLimitMiddleware."""
    parts = scope["path"].split("/")  # "", "v1", "models", model, "predict"[, "upload"]
    routed = (parts[1:3] == ["v1", "models"] and parts[4:] in (["predict"], ["predict", "upload"])) or (
        parts[1:3] == ["v2", "models"] and parts[4:] == ["infer"]
    )
    if not routed or b"version=" in scope["query_string"] or b"alias=" in scope["query_string"]:
        return None
    manager: ModelManager | None = getattr(scope["app"].state, "manager", None)
    if manager is None or parts[3] not in manager.states:
        return None
    try:
        refuse_if_full(manager, parts[3], 1)
    except QueueFullError as exc:
        return exc
    return None


async def predict(
    manager: ModelManager,
    settings: Settings,
    model: str,
    images: np.ndarray,
    version: int | None = None,
    alias: str | None = None,
) -> tuple[LoadedVersion, np.ndarray]:
    """Run (n, 28, 28) images through the batcher of the chosen version: (version, probs (n, 10))."""
    for attempt in range(2):
        loaded = await manager.get(model, version, alias)
        assert loaded.batcher is not None
        try:
            future = loaded.batcher.submit(images, settings.request_timeout_s)
            break
        except ShuttingDownError:
            if attempt:  # the version was retired between lookup and submit twice: give up
                raise
    try:
        probs = await asyncio.wait_for(future, settings.request_timeout_s)
    except TimeoutError:
        raise DeadlineExceededError(
            f"no answer within {settings.request_timeout_s:g}s; the server is overloaded, retry later"
        ) from None
    manager.metrics.images.labels(model, str(loaded.version)).inc(len(images))
    return loaded, probs
