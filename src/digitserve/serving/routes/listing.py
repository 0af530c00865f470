"""GET /v1/models and /v1/models/{model}: what is served, from which version, and its health."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from digitserve.serving.catalog import Catalog
from digitserve.serving.deps import CatalogDep, ManagerDep
from digitserve.serving.manager import ModelManager
from digitserve.serving.schemas import ERROR_RESPONSES, ModelSummary

router = APIRouter(prefix="/v1/models", tags=["models"])


async def describe_model(request: Request, manager: ModelManager, catalog: Catalog, model: str) -> dict[str, Any]:
    state = manager.state(model)
    listing = await catalog.describe(model)
    return {
        "name": model,
        "alias": manager.settings.alias,
        "serving": state.served.servable.summary() if state.served else None,
        "ready": state.served is not None,
        "last_reload_error": state.last_error,
        "last_poll_at": state.last_poll_at,
        "registry": manager.registry.uri,
        "registry_error": listing["registry_error"],
        "serving_from_cache": manager.registry_unavailable is not None,
        "aliases": listing["aliases"],
        "versions": listing["versions"],
        "resident_versions": manager.resident_versions(model),
        "feedback": feedback_status(request),
        "rollouts": request.app.state.rollouts.status(model),
    }


def feedback_status(request: Request) -> dict[str, Any]:
    """Whether this server takes feedback, and how its spool stands (per-version accuracy is in `versions`)."""
    service = request.app.state.feedback
    spool = service.spool
    return {
        "enabled": service.enabled,
        "spooled": spool.pending,
        "written": spool.written,
        "last_error": spool.last_error,
    }


@router.get("", response_model=list[ModelSummary], summary="Served models")
async def list_models(request: Request, manager: ManagerDep, catalog: CatalogDep) -> list[dict[str, Any]]:
    """Every configured model: aliases, versions with metrics, the version serving, last reload error."""
    return [await describe_model(request, manager, catalog, m) for m in manager.states]


@router.get("/{model}", response_model=ModelSummary, responses={404: ERROR_RESPONSES[404]}, summary="One model")
async def get_model(model: str, request: Request, manager: ManagerDep, catalog: CatalogDep) -> dict[str, Any]:
    return await describe_model(request, manager, catalog, model)
