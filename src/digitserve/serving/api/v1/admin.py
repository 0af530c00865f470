"""POST /v1/admin/reload: re-read aliases now. Mounted only when an admin token is configured."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query

from digitserve.serving.deps import ReloaderDep, VersionsDep, require_admin

router = APIRouter(prefix="/v1/admin", tags=["admin"], dependencies=[Depends(require_admin)])
WORKER_WAIT_S = 30.0


@router.post("/reload", summary="Re-read aliases and hot-swap now (in every worker)")
async def reload(reloader: ReloaderDep, versions: VersionsDep, model: str | None = Query(None)) -> dict[str, Any]:
    """Re-read the alias of each model (or one), and load, verify and swap any that moved.

    Also retries a version that failed before (polling does not). With several workers, every
    worker reloads; `workers` says how many confirmed it within 30 s.
    """
    if model is not None:
        versions.state(model)  # 404 for a model this server does not serve
    results = [r.to_dict() for r in await reloader.reload(model, force=True)]
    broadcast = reloader.broadcast
    if broadcast is None:
        return {"results": results, "workers": {"expected": 1, "reloaded": 1}}
    reloaded = await broadcast.wait(broadcast.request(), WORKER_WAIT_S)
    return {"results": results, "workers": {"expected": broadcast.workers, "reloaded": reloaded}}
