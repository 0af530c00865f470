"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST

from digitserve.serving.deps import DrainDep, MetricsDep, VersionsDep
from digitserve.serving.responses import JSONResponse

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="Liveness")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.head("/healthz", include_in_schema=False)
async def healthz_head() -> Response:
    return Response(status_code=200)


@router.get("/readyz", summary="Readiness: every model has a verified version loaded")
async def readyz(versions: VersionsDep, drain: DrainDep) -> JSONResponse:
    served = {name: s.served.version if s.served else None for name, s in versions.states.items()}
    if drain.active:
        return JSONResponse({"ready": False, "reason": "shutting down", "models": served}, status_code=503)
    ready = versions.ready()
    return JSONResponse({"ready": ready, "models": served}, status_code=200 if ready else 503)


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(metrics: MetricsDep) -> Response:
    return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)
