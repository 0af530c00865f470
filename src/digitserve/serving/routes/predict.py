"""POST /v1/models/{model}/predict (JSON base64) and /predict/upload (multipart)."""

from __future__ import annotations

import base64
import io
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends, Query, Request
from PIL import Image
from starlette.datastructures import UploadFile

from digitserve.serving.deps import ManagerDep, SettingsDep, accepting, predict, refuse_if_full
from digitserve.serving.errors import (
    InvalidInputError,
    PayloadTooLargeError,
    UnsupportedMediaTypeError,
)
from digitserve.serving.inputs import check_count, decode_base64, prepare_images
from digitserve.serving.loading import LoadedVersion
from digitserve.serving.responses import JSONResponse
from digitserve.serving.schemas import ERROR_RESPONSES, PredictRequest, PredictResponse

router = APIRouter(prefix="/v1/models", tags=["predict"], dependencies=[Depends(accepting)], responses=ERROR_RESPONSES)

VersionQuery = Annotated[int | None, Query(ge=1, description="pin a registry version")]
AliasQuery = Annotated[
    str | None, Query(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$", description="use the version another alias points to")
]
TopKQuery = Annotated[int, Query(ge=1, le=10, description="how many top classes to return")]


def _png_b64(image: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def render_predictions(
    loaded: LoadedVersion, alias: str | None, probs: np.ndarray, top_k: int, inputs: np.ndarray | None = None
) -> dict[str, Any]:
    order = np.argsort(-probs, axis=1)[:, :top_k].tolist()
    predictions = []
    for i, row in enumerate(probs.tolist()):  # plain floats: indexing numpy scalars is slow
        rounded = [round(p, 6) for p in row]
        top = [{"label": c, "probability": rounded[c]} for c in order[i]]
        predictions.append(
            {
                "label": top[0]["label"],
                "confidence": top[0]["probability"],
                "top_k": top,
                "probabilities": rounded,
                "model_input": _png_b64(inputs[i]) if inputs is not None else None,
            }
        )
    return {
        "model": loaded.model,
        "version": loaded.version,
        "alias": alias,
        "predictions": predictions,
    }


def _check_selector(version: int | None, alias: str | None, default_alias: str) -> str | None:
    if version is not None and alias is not None:
        raise InvalidInputError("give either ?version= or ?alias=, not both")
    return None if version is not None else (alias or default_alias)


@router.post("/{model}/predict", response_model=PredictResponse, summary="Predict digits (JSON, base64)")
async def predict_json(
    model: str,
    body: PredictRequest,
    manager: ManagerDep,
    settings: SettingsDep,
    version: VersionQuery = None,
    alias: AliasQuery = None,
) -> JSONResponse:
    """Classify one or more base64-encoded images. The answer names the version that computed it."""
    used_alias = _check_selector(version, alias, settings.alias)
    manager.state(model)  # unknown model: 404 before any decoding work
    check_count(len(body.images), settings)
    refuse_if_full(manager, model, len(body.images), version, alias)
    blobs = [decode_base64(s, i, settings.max_image_bytes) for i, s in enumerate(body.images)]
    images = await prepare_images(blobs, settings, [f"images[{i}]" for i in range(len(blobs))])
    loaded, probs = await predict(manager, settings, model, images, version, alias)
    inputs = images if body.return_input else None
    return JSONResponse(render_predictions(loaded, used_alias, probs, body.top_k, inputs))


UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["files"],
                    "properties": {
                        "files": {
                            "type": "array",
                            "items": {"type": "string", "format": "binary"},
                            "description": "one or more image files",
                        }
                    },
                }
            }
        },
    }
}


async def _read_uploads(request: Request, settings: SettingsDep) -> tuple[list[bytes], list[str]]:
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise UnsupportedMediaTypeError("send multipart/form-data with one or more image files")
    form = await request.form(
        max_files=settings.max_upload_files, max_fields=16, max_part_size=settings.max_image_bytes
    )
    try:
        files = [(k, v) for k, v in form.multi_items() if isinstance(v, UploadFile)]
        check_count(len(files), settings, "files")
        blobs = [await f.read() for _, f in files]
    finally:
        await form.close()
    return blobs, [f"{key}[{i}] ({f.filename or 'unnamed'})" for i, (key, f) in enumerate(files)]


@router.post(
    "/{model}/predict/upload",
    response_model=PredictResponse,
    openapi_extra=UPLOAD_BODY,
    summary="Predict digits (multipart file upload)",
)
async def predict_upload(
    model: str,
    request: Request,
    manager: ManagerDep,
    settings: SettingsDep,
    version: VersionQuery = None,
    alias: AliasQuery = None,
    top_k: TopKQuery = 3,
    return_input: bool = False,
) -> JSONResponse:
    """Classify uploaded image files (form field `files`, repeatable)."""
    used_alias = _check_selector(version, alias, settings.alias)
    manager.state(model)
    blobs, names = await _read_uploads(request, settings)
    for name, blob in zip(names, blobs, strict=True):
        if len(blob) > settings.max_image_bytes:
            raise PayloadTooLargeError(f"{name} is over the {settings.max_image_bytes} byte limit")
    refuse_if_full(manager, model, len(blobs), version, alias)
    images = await prepare_images(blobs, settings, names)
    loaded, probs = await predict(manager, settings, model, images, version, alias)
    return JSONResponse(render_predictions(loaded, used_alias, probs, top_k, images if return_input else None))
