"""FastAPI dependencies shared by the routers.

All of them are `async def`: FastAPI runs a plain `def` dependency in its thread pool, and
a thread hop per dependency costs more than the prediction (bench/README.md).
"""

from __future__ import annotations

import hmac
import time
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from digitserve.config import Settings
from digitserve.serving.catalog import Catalog
from digitserve.serving.errors import ShuttingDownError, UnauthorizedError
from digitserve.serving.manager import ModelManager
from digitserve.serving.pipeline import PredictionPipeline


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_manager(request: Request) -> ModelManager:
    return request.app.state.manager


async def get_catalog(request: Request) -> Catalog:
    return request.app.state.catalog


@dataclass(frozen=True)
class PredictionContext:
    pipeline: PredictionPipeline
    deadline: float  # time.monotonic(): stamped on arrival by the admission middleware


async def prediction_context(request: Request) -> PredictionContext:
    """What a prediction route needs, in one dependency (each one FastAPI resolves costs time on
    every request); refuses new work once SIGTERM has been received."""
    state = request.app.state
    if state.draining:
        raise ShuttingDownError("the server is shutting down; retry on another replica")
    deadline = request.scope.get("state", {}).get("deadline")
    if not isinstance(deadline, float):
        deadline = time.monotonic() + state.settings.request_timeout_s
    return PredictionContext(state.pipeline, deadline)


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
CatalogDep = Annotated[Catalog, Depends(get_catalog)]
PredictionDep = Annotated[PredictionContext, Depends(prediction_context)]
