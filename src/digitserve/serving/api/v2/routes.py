"""The KServe / Triton Open Inference Protocol (v2 REST): health, metadata and inference under /v2.

Standard clients (tritonclient, KServe's) work as they are: JSON or binary tensor data, gzip or
deflate request bodies, requested outputs in JSON or binary, classification. Inference runs
through the same batcher, limits and version selection as /v1. Health answers 200 for true and
400 for false, as the protocol says; errors are `{"error": "...", "code": "..."}` with a 4xx.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Request
from starlette.responses import Response

from digitserve import __version__
from digitserve.serving.api.handlers import error_response
from digitserve.serving.api.schemas import ERROR_RESPONSES, ErrorResponse, inline_schema
from digitserve.serving.api.v1.predict import client_host
from digitserve.serving.api.v2.codec import read_request, render_response
from digitserve.serving.api.v2.oip import describe_model, model_not_ready, parse_version, server_not_ready
from digitserve.serving.api.v2.schemas import (
    EXTENSIONS,
    IMAGES,
    InferRequest,
    InferResponse,
    ModelMetadataResponse,
    ServerMetadataResponse,
)
from digitserve.serving.deps import CatalogDep, DrainDep, PredictionContext, PredictionDep, VersionsDep
from digitserve.serving.errors import InvalidInputError
from digitserve.serving.http.routes import V2_INFER, V2_VERSION_INFER
from digitserve.serving.pipeline import Selector
from digitserve.serving.responses import JSONResponse
from digitserve.serving.rollouts.routing import MAX_STICKY, STICKY_HEADER

router = APIRouter(tags=["v2 (Open Inference Protocol)"])

VersionPath = Annotated[str, Path(description="a registry version, e.g. `2`")]
UNKNOWN: dict[int | str, dict[str, Any]] = {404: ERROR_RESPONSES[404]}
SERVER_NOT_READY: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "not ready (the protocol's 'false')"}
}
NOT_READY = {**UNKNOWN, **SERVER_NOT_READY}
INFER_BODY = {
    "requestBody": {
        "required": True,
        "description": "`$inference_request` as JSON; with the binary tensor data extension, that JSON "
        "(its size in the `Inference-Header-Content-Length` header) followed by the binary tensors.",
        "content": {
            "application/json": {"schema": inline_schema(InferRequest)},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}


def not_ready(reason: str) -> Response:
    return error_response(400, reason, "not_ready", ready=False)


def model_ready_answer(model: str, version: int, reason: str | None) -> Response:
    if reason is not None:
        return not_ready(reason)
    return JSONResponse({"name": model, "version": str(version), "ready": True})


# --- health --------------------------------------------------------------------------------


@router.get("/v2/health/live", summary="Server live")
async def live() -> dict[str, bool]:
    return {"live": True}


@router.get(
    "/v2/health/ready", summary="Server ready: every model has a verified version loaded", responses=SERVER_NOT_READY
)
async def ready(versions: VersionsDep, drain: DrainDep) -> Response:
    reason = server_not_ready(versions, drain)
    return not_ready(reason) if reason is not None else JSONResponse({"ready": True})


@router.get("/v2/models/{model}/ready", summary="Model ready (the version its alias serves)", responses=NOT_READY)
async def model_ready(model: str, versions: VersionsDep, catalog: CatalogDep, drain: DrainDep) -> Response:
    number, reason = await model_not_ready(catalog, versions, drain, model)
    return model_ready_answer(model, number, reason)


@router.get(
    "/v2/models/{model}/versions/{version}/ready",
    summary="Model version ready: loaded (the served version, or one a pinned infer loaded)",
    responses=NOT_READY,
)
async def model_version_ready(
    model: str, version: VersionPath, versions: VersionsDep, catalog: CatalogDep, drain: DrainDep
) -> Response:
    number, reason = await model_not_ready(catalog, versions, drain, model, version)
    return model_ready_answer(model, number, reason)


# --- metadata ------------------------------------------------------------------------------


@router.get("/v2", response_model=ServerMetadataResponse, summary="Server metadata")
async def server_metadata() -> dict[str, Any]:
    return {"name": "digitserve", "version": __version__, "extensions": EXTENSIONS}


@router.get("/v2/models/{model}", response_model=ModelMetadataResponse, responses=UNKNOWN, summary="Model metadata")
async def model_metadata(model: str, versions: VersionsDep, catalog: CatalogDep) -> dict[str, Any]:
    """Inputs (send one): `pixels`, UINT8 0..255 or FP32 0..1 `[N, 28, 28]` (`[N, 1, 28, 28]` and
    `[N, 784]` too), MNIST-style white-on-black digits, no preprocessing; or `images`, BYTES `[N]`
    encoded images (base64 in JSON), preprocessed as in /v1."""
    return await describe_model(catalog, versions, model)


@router.get(
    "/v2/models/{model}/versions/{version}",
    response_model=ModelMetadataResponse,
    responses=UNKNOWN,
    summary="Model version metadata",
)
async def model_version_metadata(
    model: str, version: VersionPath, versions: VersionsDep, catalog: CatalogDep
) -> dict[str, Any]:
    return await describe_model(catalog, versions, model, version)


# --- inference -----------------------------------------------------------------------------


async def infer_with(request: Request, context: PredictionContext, model: str, selector: Selector) -> Response:
    pipeline, deadline, record = context.pipeline, context.deadline, context.record
    target = pipeline.target(model, selector, client_host(request), record)  # unknown model: 404 before the body
    decoded = await read_request(await request.body(), request.headers, pipeline.limits)
    if decoded.images is not None:
        names = [f"{IMAGES}[{i}]" for i in range(len(decoded.images))]
        result = await pipeline.predict_encoded(target, decoded.images, names, deadline)
    else:
        assert decoded.pixels is not None
        result = await pipeline.predict_pixels(target, decoded.pixels, deadline)
    return render_response(decoded, result, record.request_id if record is not None else None)


INFER_ROUTE: dict[str, Any] = {
    "response_model": InferResponse,
    "openapi_extra": INFER_BODY,
    "responses": ERROR_RESPONSES,
}


@router.post(V2_INFER, summary="Infer with the version the alias serves", **INFER_ROUTE)
async def infer(model: str, request: Request, context: PredictionDep) -> Response:
    """Classify digits. Send one input, `pixels` or `images` (see the model metadata); outputs are
    `probabilities` (FP32 `[N, 10]`) and `label` (INT64 `[N]`), JSON or binary as asked."""
    sticky = request.headers.get(STICKY_HEADER) or None
    if sticky is not None and len(sticky) > MAX_STICKY:  # as /v1 refuses it: never cut short, silently
        raise InvalidInputError(f"the {STICKY_HEADER} header is over {MAX_STICKY} characters; send a shorter id")
    selector = Selector(sticky=sticky)
    return await infer_with(request, context, model, selector)


@router.post(V2_VERSION_INFER, summary="Infer with a pinned registry version", **INFER_ROUTE)
async def infer_version(model: str, version: VersionPath, request: Request, context: PredictionDep) -> Response:
    selector = Selector(version=parse_version(model, version))
    return await infer_with(request, context, model, selector)
