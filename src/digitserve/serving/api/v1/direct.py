"""POST /v1/models/{model}/predict with a JSON body, answered without FastAPI's routing.

The route is declared in `predict.py`: FastAPI documents it, and answers whatever is not plain.
Its routing, dependency solving and request objects cost as much CPU per 1-image request as the
model's forward pass (bench/cpu_budget_results.json), so the edge middleware hands this route's
requests here first. The same function answers them (`predict_json_body`), with the body
validated by the same model (`PredictRequest`) and errors answered by the same mapping
(`handlers.error_answer`). Whatever is not plain -- another content type, a query parameter or
sticky key this reader would have to judge as FastAPI does, a body the model refuses -- goes on
to FastAPI with its body replayed, so every refusal is FastAPI's, in its words.

One difference is deliberate: an unexpected error (a bug) is answered 500 here through the edge,
so it carries `Connection: close` while the server drains; on the FastAPI route it escapes the
edge to Starlette's last-resort handler, which answers the same body without it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import parse_qsl

from pydantic import ValidationError
from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from digitserve.config.groups import ALIAS_NAME
from digitserve.registry.records import MAX_VERSION
from digitserve.serving.api.handlers import error_answer
from digitserve.serving.api.schemas import PredictRequest
from digitserve.serving.api.v1.predict import predict_json_body
from digitserve.serving.deps import prediction_context_of
from digitserve.serving.http.routes import prediction_of
from digitserve.serving.pipeline import Selector
from digitserve.serving.responses import JSONResponse
from digitserve.serving.rollouts.routing import MAX_STICKY, STICKY_HEADER

ALIAS = re.compile(ALIAS_NAME)  # as predict.py's AliasQuery
VERSION_DIGITS = len(str(MAX_VERSION))
STICKY = STICKY_HEADER.encode()


@dataclass(slots=True)
class Plain:
    """What a plain request asks: which version answers, and whether to abstain."""

    version: int | None = None
    alias: str | None = None
    abstain: bool = True
    sticky: str | None = None


def plain_request(scope: Scope) -> Plain | None:
    """The request's choices when each is plainly valid (as FastAPI would take it), else None."""
    asked = Plain()
    content_types = 0
    for name, value in scope["headers"]:
        if name == b"content-type":
            content_types += 1
            if value != b"application/json":
                return None
        elif name == STICKY:
            if asked.sticky is not None or len(value) > MAX_STICKY:
                return None
            asked.sticky = value.decode("latin-1")
    if content_types != 1:
        return None
    query = scope["query_string"]
    if query:
        seen = set()
        for key, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True):
            if key in seen:
                return None
            seen.add(key)
            if key == "version":
                if not (value.isascii() and value.isdigit() and len(value) <= VERSION_DIGITS and value[0] != "0"):
                    return None  # (and never int() of 5,000 digits: Python refuses past 4,300)
                asked.version = int(value)
                if asked.version > MAX_VERSION:
                    return None
            elif key == "alias":
                if ALIAS.fullmatch(value) is None:
                    return None
                asked.alias = value
            elif key == "abstain":
                if value not in ("true", "false"):
                    return None
                asked.abstain = value == "true"
    return asked  # other query parameters: FastAPI ignores them too


async def read_body(receive: Receive) -> bytes:
    """The whole body; as FastAPI does, a body that cannot be read is 400 (the edge's limits raise 413)."""
    chunks = []
    while True:
        try:
            message = await receive()
        except HTTPException:
            raise
        except Exception as exc:
            raise HTTPException(400, "There was an error parsing the body") from exc
        if message["type"] != "http.request":
            raise HTTPException(400, "There was an error parsing the body")  # the client left
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def replay(body: bytes, receive: Receive) -> Receive:
    """`receive` again, its body first: for FastAPI, after the body was read here."""
    sent = False

    async def again() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return again


async def direct_predict(scope: Scope, receive: Receive, send: Send, fallback: ASGIApp) -> None:
    """Answer a plain JSON prediction here; anything else goes to `fallback` (the FastAPI app)."""
    asked = plain_request(scope)
    if asked is None:
        await fallback(scope, receive, send)
        return
    try:
        body = await read_body(receive)
    except HTTPException as exc:
        await error_answer(exc, scope["method"], scope["path"])(scope, receive, send)
        return
    try:
        request = PredictRequest.model_validate_json(body)
    except ValidationError:  # FastAPI says what is wrong, in its words
        await fallback(scope, replay(body, receive), send)
        return
    prediction = prediction_of(scope)
    assert prediction is not None, "the edge hands only prediction routes here"
    client = scope.get("client")
    try:
        context = prediction_context_of(scope)
        selector = Selector(asked.version, asked.alias, asked.sticky)
        answer: Response = JSONResponse(
            await predict_json_body(
                context, prediction.model, request, selector, client[0] if client else None, asked.abstain
            )
        )
    except Exception as exc:
        answer = error_answer(exc, scope["method"], scope["path"])
    await answer(scope, receive, send)
