"""One `Annotated` dependency per service: the only code that reads `app.state` (where the
lifespan keeps the `Services` of this process, services.py).

All of them are `async def`: FastAPI runs a plain `def` dependency in its thread pool, and a
thread hop per dependency costs more than the prediction (bench/README.md). A prediction route
takes one dependency (`PredictionDep`) for all it needs: each one FastAPI resolves costs time.
"""

from __future__ import annotations

import hmac
import time
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from starlette.types import Scope

from digitserve.serving.browsing.browser import RegistryBrowser
from digitserve.serving.browsing.catalog import Catalog
from digitserve.serving.errors import ShuttingDownError, UnauthorizedError
from digitserve.serving.feedback.service import FeedbackService
from digitserve.serving.http.admission import DEADLINE
from digitserve.serving.http.shutdown import Drain
from digitserve.serving.inference.versions import ModelVersions
from digitserve.serving.observability.metrics import ServiceMetrics
from digitserve.serving.observability.record import RequestRecord, prediction_record
from digitserve.serving.pipeline import PredictionPipeline
from digitserve.serving.rollouts.routing import Rollouts
from digitserve.serving.services import Reloader, Services


def services_of(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


async def get_metrics(request: Request) -> ServiceMetrics:
    metrics: ServiceMetrics = request.app.state.metrics
    return metrics


async def get_drain(request: Request) -> Drain:
    drain: Drain = request.app.state.drain
    return drain


async def get_versions(request: Request) -> ModelVersions:
    return services_of(request).versions


async def get_catalog(request: Request) -> Catalog:
    return services_of(request).catalog


async def get_browser(request: Request) -> RegistryBrowser:
    return services_of(request).browser


async def get_rollouts(request: Request) -> Rollouts:
    return services_of(request).rollouts


async def get_feedback(request: Request) -> FeedbackService:
    """The feedback service, 403 when this server has it turned off."""
    service = services_of(request).feedback
    service.check_enabled()
    return service


async def get_feedback_status(request: Request) -> FeedbackService:
    """The feedback service whether it is on or off (for what it reports of its spool)."""
    return services_of(request).feedback


async def get_reloader(request: Request) -> Reloader:
    return services_of(request).reloader


@dataclass(frozen=True)
class PredictionContext:
    pipeline: PredictionPipeline
    deadline: float  # time.monotonic(): stamped on arrival by admission (serving/http/admission.py)
    record: RequestRecord | None = None  # the request's log line and trace (observability/requests.py)


def prediction_context_of(scope: Scope) -> PredictionContext:
    """What a prediction needs, from the ASGI scope (its app's state, its deadline); refuses new
    work once SIGTERM has been received. Also what the direct prediction path asks."""
    state = scope["app"].state
    if state.drain.active:
        raise ShuttingDownError("the server is shutting down; retry on another replica")
    deadline = scope["state"].get(DEADLINE) if "state" in scope else None
    if not isinstance(deadline, float):  # a route reached without the edge middleware (feedback)
        deadline = time.monotonic() + state.settings.requests.request_timeout_s
    return PredictionContext(state.services.pipeline, deadline, prediction_record(scope))


async def prediction_context(request: Request) -> PredictionContext:
    """What a prediction route needs, in one dependency."""
    return prediction_context_of(request.scope)


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


MetricsDep = Annotated[ServiceMetrics, Depends(get_metrics)]
DrainDep = Annotated[Drain, Depends(get_drain)]
VersionsDep = Annotated[ModelVersions, Depends(get_versions)]
CatalogDep = Annotated[Catalog, Depends(get_catalog)]
BrowserDep = Annotated[RegistryBrowser, Depends(get_browser)]
RolloutsDep = Annotated[Rollouts, Depends(get_rollouts)]
FeedbackDep = Annotated[FeedbackService, Depends(get_feedback)]
FeedbackStatusDep = Annotated[FeedbackService, Depends(get_feedback_status)]
ReloaderDep = Annotated[Reloader, Depends(get_reloader)]
PredictionDep = Annotated[PredictionContext, Depends(prediction_context)]
