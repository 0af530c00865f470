"""POST /v1/admin/reload: re-read aliases now. Mounted only when an admin token is configured."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query

from digitserve.serving.deps import ManagerDep, require_admin

router = APIRouter(prefix="/v1/admin", tags=["admin"], dependencies=[Depends(require_admin)])


@router.post("/reload", summary="Re-read aliases and hot-swap now")
async def reload(manager: ManagerDep, model: str | None = Query(None)) -> dict[str, Any]:
    """Re-read the alias of each model (or one), and load, verify and swap any that moved.

    Also retries a version that failed before (polling does not).
    """
    if model is not None:
        return {"results": [await manager.refresh(model, force=True)]}
    return {"results": await manager.refresh_all(force=True)}
