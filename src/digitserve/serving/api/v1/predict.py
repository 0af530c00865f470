"""POST /v1/models/{model}/predict (JSON base64) and /predict/upload (multipart)."""

from __future__ import annotations

from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends, Header, Query, Request
from starlette.datastructures import UploadFile

from digitserve.config import RequestLimits
from digitserve.config.groups import ALIAS_NAME
from digitserve.imaging.encode import png_base64
from digitserve.imaging.pixelcsv import MAX_CSV_BYTES, looks_like_csv
from digitserve.registry.records import MAX_VERSION
from digitserve.serving.api.schemas import ERROR_RESPONSES, PredictRequest, PredictResponse
from digitserve.serving.deps import PredictionContext, PredictionDep
from digitserve.serving.errors import InvalidInputError, PayloadTooLargeError, UnsupportedMediaTypeError
from digitserve.serving.http.routes import V1_PREDICT, V1_UPLOAD
from digitserve.serving.inference.inputs import decode_base64
from digitserve.serving.pipeline import PredictionResult, Selector
from digitserve.serving.responses import JSONResponse
from digitserve.serving.rollouts.routing import MAX_STICKY, STICKY_HEADER

router = APIRouter(tags=["predict"], responses=ERROR_RESPONSES)

VersionQuery = Annotated[int | None, Query(ge=1, le=MAX_VERSION, description="pin a registry version")]
AliasQuery = Annotated[str | None, Query(pattern=ALIAS_NAME, description="use the version another alias points to")]
TopKQuery = Annotated[int, Query(ge=1, le=10, description="how many top classes to return")]
AbstainQuery = Annotated[
    bool,
    Query(
        description="answer `label: null` for what does not look like a digit (default); false: always give the "
        "most likely digit as `label` (`is_digit` still says what the model thinks)"
    ),
]


StickyHeader = Annotated[
    str | None,
    Header(
        alias=STICKY_HEADER,
        max_length=MAX_STICKY,
        description="any stable id of the user (a session id): during a canary rollout the same id is always "
        "answered by the same side",
    ),
]


def client_host(request: Request) -> str | None:
    """The client's address as the server sees it (after `FORWARDED_ALLOW_IPS`)."""
    return request.client.host if request.client else None


async def selector(version: VersionQuery = None, alias: AliasQuery = None, sticky: StickyHeader = None) -> Selector:
    """Which version answers: `?version=` pins one, `?alias=` follows another alias (not both);
    otherwise the served alias, or its canary for a share of the requests."""
    return Selector(version, alias, sticky)


SelectorDep = Annotated[Selector, Depends(selector)]


def render_predictions(
    result: PredictionResult, top_k: int, return_input: bool, abstain: bool = True
) -> dict[str, Any]:
    probs = result.probabilities
    order = np.argsort(-probs, axis=1)[:, :top_k].tolist()
    is_digit = result.is_digit.tolist()
    predictions = []
    for i, row in enumerate(probs.tolist()):  # plain floats: indexing numpy scalars is slow
        rounded = [round(p, 6) for p in row]
        top = [{"label": c, "probability": rounded[c]} for c in order[i]]
        predictions.append(
            {
                "label": top[0]["label"] if is_digit[i] or not abstain else None,
                "is_digit": is_digit[i],
                "reason": None if is_digit[i] else result.reason(i),
                "best_guess": top[0]["label"],
                "confidence": top[0]["probability"],
                "top_k": top,
                "probabilities": rounded,
                "model_input": png_base64(result.images[i]) if return_input else None,
            }
        )
    return {
        "model": result.loaded.model,
        "version": result.loaded.version,
        "alias": result.alias,
        "predictions": predictions,
    }


@router.post(V1_PREDICT, response_model=PredictResponse, summary="Predict digits (JSON, base64)")
async def predict_json(
    model: str,
    body: PredictRequest,
    request: Request,
    context: PredictionDep,
    selector: SelectorDep,
    abstain: AbstainQuery = True,
) -> JSONResponse:
    """Classify one or more base64-encoded images. The answer names the version that computed it."""
    # A plain request is answered by direct.py, past FastAPI's routing; this route answers the rest.
    return JSONResponse(await predict_json_body(context, model, body, selector, client_host(request), abstain))


async def predict_json_body(
    context: PredictionContext, model: str, body: PredictRequest, selector: Selector, client: str | None, abstain: bool
) -> dict[str, Any]:
    """A JSON prediction request's answer, whichever path read it (this route or `direct.py`)."""
    pipeline = context.pipeline
    if not body.images and not body.csv:
        raise InvalidInputError("no images sent; send `images` (base64 image files) or `csv` (pixel CSV text)")
    target = pipeline.target(model, selector, client, context.record)
    pipeline.admit(len(body.images) + len(body.csv))
    max_bytes = pipeline.limits.max_image_bytes
    blobs = [decode_base64(s, i, max_bytes) for i, s in enumerate(body.images)]
    blobs += [csv_blob(text.encode(), f"csv[{i}]") for i, text in enumerate(body.csv)]
    names = [f"images[{i}]" for i in range(len(body.images))] + [f"csv[{i}]" for i in range(len(body.csv))]
    result = await pipeline.predict_encoded(target, blobs, names, context.deadline)
    return render_predictions(result, body.top_k, body.return_input, abstain)


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


def csv_blob(data: bytes, name: str) -> bytes:
    """A CSV sent as such: within its size limit, and text (not an image file under a CSV label)."""
    if len(data) > MAX_CSV_BYTES:
        raise PayloadTooLargeError(f"{name} is over the {MAX_CSV_BYTES:,} byte limit for one 28x28 CSV")
    if not looks_like_csv(data):
        raise InvalidInputError(f"{name} is not CSV text; send 28 rows of 28 comma-separated pixel values")
    return data


async def _read_uploads(request: Request, limits: RequestLimits) -> tuple[list[bytes], list[str]]:
    content_type = request.headers.get("content-type", "")
    if content_type.split(";")[0].strip().lower() == "text/csv":  # one digit as a CSV body
        return [csv_blob(await request.body(), "the text/csv body")], ["the text/csv body"]
    if not content_type.startswith("multipart/form-data"):
        raise UnsupportedMediaTypeError(
            "send multipart/form-data with one or more image or CSV files, or one CSV as text/csv"
        )
    form = await request.form(max_files=limits.max_upload_files, max_fields=16, max_part_size=limits.max_image_bytes)
    try:
        files = [(k, v) for k, v in form.multi_items() if isinstance(v, UploadFile)]
        blobs = [await f.read() for _, f in files]
    finally:
        await form.close()
    names = [f"{key}[{i}] ({(f.filename or 'unnamed')[:100]})" for i, (key, f) in enumerate(files)]
    for name, blob in zip(names, blobs, strict=True):
        if len(blob) > limits.max_image_bytes:
            raise PayloadTooLargeError(f"{name} is over the {limits.max_image_bytes} byte limit")
    return blobs, names


@router.post(
    V1_UPLOAD,
    response_model=PredictResponse,
    openapi_extra=UPLOAD_BODY,
    summary="Predict digits (multipart file upload)",
)
async def predict_upload(
    model: str,
    request: Request,
    context: PredictionDep,
    selector: SelectorDep,
    top_k: TopKQuery = 3,
    return_input: bool = False,
    abstain: AbstainQuery = True,
) -> JSONResponse:
    """Classify uploaded image files (form field `files`, repeatable)."""
    pipeline = context.pipeline
    target = pipeline.target(model, selector, client_host(request), context.record)  # unknown model: 404 first
    blobs, names = await _read_uploads(request, pipeline.limits)
    pipeline.admit(len(blobs), "files")
    result = await pipeline.predict_encoded(target, blobs, names, context.deadline)
    return JSONResponse(render_predictions(result, top_k, return_input, abstain))
