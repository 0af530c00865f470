"""POST /v1/admin/reload: re-read aliases now. Mounted only when an admin token is configured."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query, Request

from digitserve.serving.deps import ManagerDep, require_admin
from digitserve.serving.workers import ReloadBroadcast

router = APIRouter(prefix="/v1/admin", tags=["admin"], dependencies=[Depends(require_admin)])
WORKER_WAIT_S = 30.0


@router.post("/reload", summary="Re-read aliases and hot-swap now (in every worker)")
async def reload(request: Request, manager: ManagerDep, model: str | None = Query(None)) -> dict[str, Any]:
    """Re-read the alias of each model (or one), and load, verify and swap any that moved.

    Also retries a version that failed before (polling does not). With several workers, every
    worker reloads; `workers` says how many confirmed it within 30 s.
    """
    if model is not None:
        results = [await manager.refresh(model, force=True)]
    else:
        results = await manager.refresh_all(force=True)
    broadcast: ReloadBroadcast | None = request.app.state.broadcast
    if broadcast is None:
        return {"results": results, "workers": {"expected": 1, "reloaded": 1}}
    reloaded = await broadcast.wait(broadcast.request(), WORKER_WAIT_S)
    return {"results": results, "workers": {"expected": broadcast.workers, "reloaded": reloaded}}
