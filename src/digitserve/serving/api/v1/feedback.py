"""POST /v1/feedback: a person says what a digit really is (serving/feedback/ keeps it safe)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from digitserve.serving.api.schemas import (
    ERROR_RESPONSES,
    ErrorResponse,
    FeedbackRequest,
    FeedbackResponse,
    inline_schema,
)
from digitserve.serving.deps import FeedbackDep, PredictionDep
from digitserve.serving.feedback.service import Correction
from digitserve.serving.http.routes import V1_FEEDBACK
from digitserve.serving.inference.inputs import decode_base64
from digitserve.serving.responses import JSONResponse

router = APIRouter(
    tags=["feedback"],
    responses={
        **ERROR_RESPONSES,
        403: {"model": ErrorResponse, "description": "feedback is turned off on this server"},
        429: {"model": ErrorResponse, "description": "this client sent too much feedback; see Retry-After"},
    },
)


FEEDBACK_BODY = {
    "requestBody": {"required": True, "content": {"application/json": {"schema": inline_schema(FeedbackRequest)}}}
}


async def read_body(request: Request) -> FeedbackRequest:
    """The body, read and checked only after the client's rate limit let it through (FastAPI would
    parse a declared body before any check)."""
    raw = await request.body()
    try:
        return FeedbackRequest.model_validate_json(raw)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors(include_url=False)) from None


@router.post(
    V1_FEEDBACK,
    status_code=201,
    response_model=FeedbackResponse,
    openapi_extra=FEEDBACK_BODY,
    summary="Correct a prediction",
)
async def send_feedback(request: Request, feedback: FeedbackDep, context: PredictionDep) -> JSONResponse:
    """Say what a digit really is after a prediction got it wrong (or right).

    Send the 28x28 model input the prediction returned (`return_input: true`) or the original
    image; only the 28x28 input is kept. The sample waits for a reviewer
    (`digitserve feedback accept ID`) before any training uses it. Each client may send
    `DIGITSERVE_FEEDBACK_PER_MINUTE` samples a minute.
    """
    client = feedback.check_rate(request.client.host if request.client else None)
    body = await read_body(request)
    feedback.check_model(body.model)
    image = decode_base64(body.image, "image", context.pipeline.limits.max_image_bytes)
    correction = Correction(body.model, body.version, body.predicted, body.label, image, body.alias)
    sample, new = await feedback.take(correction, client, context.deadline)
    return JSONResponse(
        {"id": sample.id, "duplicate": not new, "status": "spooled", "review": "pending"}, status_code=201
    )
