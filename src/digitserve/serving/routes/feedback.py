"""POST /v1/feedback: a person says what a digit really is (serving/feedback.py keeps it safe)."""

from __future__ import annotations

import hashlib
import ipaddress
from dataclasses import dataclass
from typing import Annotated

from fastapi import APIRouter, Depends, Request

from digitserve.registry.feedback import NOT_A_DIGIT, FeedbackSample, Label
from digitserve.registry.records import now_iso
from digitserve.serving.catalog import Catalog
from digitserve.serving.decoding import decode_base64
from digitserve.serving.deps import CatalogDep, PredictionDep
from digitserve.serving.errors import ForbiddenError, ModelNotReadyError, RateLimitedError, UnknownVersionError
from digitserve.serving.feedback import FeedbackSpool, RateLimiter
from digitserve.serving.responses import JSONResponse
from digitserve.serving.schemas import ERROR_RESPONSES, ErrorResponse, FeedbackRequest, FeedbackResponse

router = APIRouter(
    prefix="/v1",
    tags=["feedback"],
    responses={
        **ERROR_RESPONSES,
        403: {"model": ErrorResponse, "description": "feedback is turned off on this server"},
        429: {"model": ErrorResponse, "description": "this client sent too much feedback; see Retry-After"},
    },
)


@dataclass
class FeedbackService:
    """What the feedback route needs: the spool, the rate limit, and whether it is on at all."""

    enabled: bool
    spool: FeedbackSpool
    limiter: RateLimiter


async def get_feedback(request: Request) -> FeedbackService:
    service: FeedbackService = request.app.state.feedback
    if not service.enabled:
        raise ForbiddenError("feedback is turned off on this server (DIGITSERVE_FEEDBACK_ENABLED=false)")
    return service


FeedbackDep = Annotated[FeedbackService, Depends(get_feedback)]


def client_of(request: Request) -> tuple[str, str]:
    """(the key the rate limit counts by, the pseudonym a sample records) for the client's address.

    The address is the connection's, or behind a load balancer what `FORWARDED_ALLOW_IPS` lets
    X-Forwarded-For say. IPv6 clients are counted by their /64, which one client can fill. The
    pseudonym is a hash of the network (/24, /48), not of the address: enough to see one sender's
    flood, and not the person."""
    host = request.client.host if request.client else "unknown"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host, _hash(host)
    if address.version == 6:
        key = str(ipaddress.ip_network(f"{address}/64", strict=False))
        return key, _hash(str(ipaddress.ip_network(f"{address}/48", strict=False)))
    return host, _hash(str(ipaddress.ip_network(f"{address}/24", strict=False)))


def _hash(text: str) -> str:
    return hashlib.sha256(f"digitserve-client:{text}".encode()).hexdigest()[:16]


def _label(value: int | str | None) -> Label:
    return None if value is None or value == NOT_A_DIGIT else int(value)


async def _check_version(catalog: Catalog, loaded: list[int], model: str, version: int) -> None:
    if version in loaded:  # a version this server runs: no registry read
        return
    known = await catalog.has_version(model, version)
    if known is False:
        raise UnknownVersionError(f"model {model!r} has no version {version}; send the version that answered")
    if known is None:  # only a version the registry confirms may name a sample (and a metrics series)
        raise ModelNotReadyError(f"cannot check {model} v{version} in the registry now; retry shortly")


@router.post("/feedback", status_code=201, response_model=FeedbackResponse, summary="Correct a prediction")
async def send_feedback(
    body: FeedbackRequest, request: Request, feedback: FeedbackDep, context: PredictionDep, catalog: CatalogDep
) -> JSONResponse:
    """Say what a digit really is after a prediction got it wrong (or right).

    Send the 28x28 model input the prediction returned (`return_input: true`) or the original
    image; only the 28x28 input is kept. The sample waits for a reviewer
    (`digitserve feedback accept ID`) before any training uses it. Each client may send
    `DIGITSERVE_FEEDBACK_PER_MINUTE` samples a minute.
    """
    key, client = client_of(request)
    wait = feedback.limiter.take(key)
    if wait is not None:
        raise RateLimitedError(f"too much feedback from this client; send again in {wait:.0f} s", wait)
    pipeline = context.pipeline
    pipeline.manager.state(body.model)  # 404 for a model this server does not serve
    blob = decode_base64(body.image, "image", pipeline.settings.max_image_bytes)
    pixels = (await pipeline.decoder.prepare([blob], ["image"], context.deadline))[0]
    await _check_version(catalog, pipeline.manager.resident_versions(body.model), body.model, body.version)
    sample = FeedbackSample(
        model=body.model,
        version=body.version,
        predicted=_label(body.predicted),
        label=_label(body.label),
        pixels=pixels,
        received_at=now_iso(),
        alias=body.alias,
        client=client,
    )
    new = await feedback.spool.put(sample)
    if new:
        pipeline.manager.metrics.count_feedback(sample.model, sample.version, sample.right)
    return JSONResponse(
        {"id": sample.id, "duplicate": not new, "status": "spooled", "review": "pending"}, status_code=201
    )
