"""GET /v1/models and /v1/models/{model}: what is served, from which version, and its health."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from digitserve.serving.api.schemas import ERROR_RESPONSES, ModelSummary
from digitserve.serving.browsing.catalog import Catalog
from digitserve.serving.deps import CatalogDep, FeedbackStatusDep, RolloutsDep, VersionsDep
from digitserve.serving.feedback.service import FeedbackService
from digitserve.serving.inference.versions import ModelVersions
from digitserve.serving.rollouts.routing import Rollouts

router = APIRouter(prefix="/v1/models", tags=["models"])


async def describe_model(
    model: str, versions: ModelVersions, catalog: Catalog, rollouts: Rollouts, feedback: FeedbackService
) -> dict[str, Any]:
    state = versions.state(model)
    listing = await catalog.describe(model)
    return {
        "name": model,
        "alias": versions.alias,
        "serving": state.served.servable.summary() if state.served else None,
        "ready": state.served is not None,
        "last_reload_error": state.last_error.to_dict() if state.last_error else None,
        "last_poll_at": state.last_poll_at,
        "registry": versions.registry.uri,
        "registry_error": listing.registry_error,
        "serving_from_cache": versions.registry_unavailable is not None,
        "aliases": listing.aliases,
        "versions": listing.versions,
        "resident_versions": versions.resident(model),
        "feedback": feedback_status(feedback),
        "rollouts": rollouts.status(model),
    }


def feedback_status(service: FeedbackService) -> dict[str, Any]:
    """Whether this server takes feedback, and how its spool stands (per-version accuracy is in `versions`)."""
    spool = service.spool
    return {
        "enabled": service.enabled,
        "spooled": spool.pending,
        "written": spool.written,
        "last_error": spool.last_error,
    }


@router.get("", response_model=list[ModelSummary], summary="Served models")
async def list_models(
    versions: VersionsDep, catalog: CatalogDep, rollouts: RolloutsDep, feedback: FeedbackStatusDep
) -> list[dict[str, Any]]:
    """Every configured model: aliases, versions with metrics, the version serving, last reload error."""
    return [await describe_model(m, versions, catalog, rollouts, feedback) for m in versions.states]


@router.get("/{model}", response_model=ModelSummary, responses={404: ERROR_RESPONSES[404]}, summary="One model")
async def get_model(
    model: str, versions: VersionsDep, catalog: CatalogDep, rollouts: RolloutsDep, feedback: FeedbackStatusDep
) -> dict[str, Any]:
    return await describe_model(model, versions, catalog, rollouts, feedback)
