"""Read-only JSON behind the models pages: /v1/registry/... (versions, alias histories, reports, the
digits of a confusion-matrix cell, two versions compared) and /v1/live (the server's own numbers).
Every listing is paginated (`offset`, `limit` at most 100)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Path, Query, Request, Response

from digitserve.registry import NotFoundError, RegistryError
from digitserve.registry.records import MAX_VERSION
from digitserve.serving import analysis
from digitserve.serving.browse import RegistryBrowser
from digitserve.serving.errors import InvalidInputError, ModelNotReadyError, UnknownVersionError
from digitserve.serving.live import live_numbers
from digitserve.serving.responses import JSONResponse
from digitserve.serving.schemas import ERROR_RESPONSES

router = APIRouter(prefix="/v1", tags=["registry"], responses={k: ERROR_RESPONSES[k] for k in (404, 422, 503)})
T = TypeVar("T")
NAME = r"^[a-z0-9][a-z0-9_-]{0,63}$"
ModelPath = Annotated[str, Path(pattern=NAME, description="model name")]
VersionPath = Annotated[int, Path(ge=1, le=MAX_VERSION, description="registry version")]
DigitPath = Annotated[int, Path(ge=0, le=9)]
Offset = Annotated[int, Query(ge=0, le=1_000_000, description="items to skip")]
Limit = Annotated[int, Query(ge=1, le=100, description="items to return (at most 100)")]
VersionRef = Annotated[str, Query(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}:[1-9][0-9]{0,15}$", description="MODEL:VERSION")]
MEDIA = {"png": "image/png", "json": "application/json"}


async def read(request: Request, fn: Callable[..., T], *args: Any) -> T:
    """Run blocking work (registry reads, image encoding) in the browsing threads; registry failures
    become 404 / 503."""
    browser: RegistryBrowser = request.app.state.browser
    loop = asyncio.get_running_loop()
    try:
        return await loop.run_in_executor(request.app.state.browsing, fn, *args)
    except NotFoundError as exc:
        raise UnknownVersionError(str(exc)) from None
    except RegistryError as exc:
        raise ModelNotReadyError(f"cannot read {browser.registry.uri} now: {exc}") from None


def browser_of(request: Request) -> RegistryBrowser:
    return request.app.state.browser


@router.get("/registry/models", summary="Models in the registry, with their aliases")
async def models(request: Request, offset: Offset = 0, limit: Limit = 20) -> dict[str, Any]:
    found = await read(request, browser_of(request).models)
    return {"total": len(found), "offset": offset, "limit": limit, "items": found[offset : offset + limit]}


@router.get("/registry/models/{model}/versions", summary="A model's versions, newest first")
async def versions(
    request: Request,
    model: ModelPath,
    offset: Offset = 0,
    limit: Limit = 20,
    before: Annotated[int | None, Query(ge=1, le=MAX_VERSION, description="only versions below this one")] = None,
) -> dict[str, Any]:
    return await read(request, browser_of(request).versions, model, offset, limit, before)


@router.get("/registry/models/{model}/versions/{version}", summary="One version: numbers, metrics, report files")
async def version(request: Request, model: ModelPath, version: VersionPath) -> dict[str, Any]:
    return await read(request, browser_of(request).version, model, version)


@router.get(
    "/registry/models/{model}/versions/{version}/report/{name}",
    summary="A report file (PNG plot or JSON)",
    response_class=Response,
    responses={200: {"content": {"image/png": {}, "application/json": {}}}},
)
async def report_file(
    request: Request, model: ModelPath, version: VersionPath, name: Annotated[str, Path(max_length=80)]
) -> Response:
    data = await read(request, browser_of(request).report_file, model, version, name)
    headers = {"Cache-Control": "public, max-age=86400, immutable"}  # a version's report does not change
    return Response(data, media_type=MEDIA[name.rsplit(".", 1)[1]], headers=headers)


@router.get(
    "/registry/models/{model}/versions/{version}/confusion/{true}/{predicted}",
    summary="The test digits in one confusion-matrix cell, with the version's confidence for each",
)
async def confusion_cell(
    request: Request,
    model: ModelPath,
    version: VersionPath,
    true: DigitPath,
    predicted: DigitPath,
    offset: Offset = 0,
    limit: Limit = 40,
) -> dict[str, Any]:
    samples = await read(request, browser_of(request).samples, model, version)
    if samples is None:
        raise UnknownVersionError(f"{model} v{version} was published before per-digit test samples were kept")
    return await read(request, analysis.cell, samples, true, predicted, offset, limit)


@router.get("/registry/models/{model}/events", summary="Alias moves, newest first")
async def events(
    request: Request,
    model: ModelPath,
    alias: Annotated[str | None, Query(pattern=NAME)] = None,
    offset: Offset = 0,
    limit: Limit = 20,
    before: Annotated[
        str | None, Query(pattern=r"^[0-9A-Za-z._-]{1,80}$", description="only events older than this key")
    ] = None,
) -> dict[str, Any]:
    return await read(request, browser_of(request).events, model, alias, offset, limit, before)


def _ref(ref: str) -> tuple[str, int]:
    name, _, number = ref.partition(":")
    if int(number) > MAX_VERSION:
        raise InvalidInputError(f"{ref[:40]}: versions are at most {MAX_VERSION}")
    return name, int(number)


@router.get("/registry/compare", summary="Two versions (of one model or two) compared digit by digit")
async def compare(request: Request, a: VersionRef, b: VersionRef, limit: Limit = 40) -> JSONResponse:
    browser = browser_of(request)
    sides = [_ref(a), _ref(b)]
    cards = [await read(request, browser.version, *side) for side in sides]
    samples = [await read(request, browser.samples, *side) for side in sides]
    if samples[0] is None or samples[1] is None:
        missing = [f"{m} v{v}" for (m, v), s in zip(sides, samples, strict=True) if s is None]
        raise InvalidInputError(f"{' and '.join(missing)} keep no per-digit test samples; compare newer versions")
    try:
        digits = await read(request, analysis.compare, samples[0], samples[1], limit)
    except ValueError as exc:
        raise InvalidInputError(str(exc)) from None
    return JSONResponse({"a": cards[0], "b": cards[1], **digits})


@router.get("/live", summary="The server's own numbers now (counters; two readings give rates)")
async def live(request: Request) -> dict[str, Any]:
    state = request.app.state
    return await read(request, live_view, state.metrics, state.manager, state.catalog)


def live_view(metrics: Any, manager: Any, catalog: Any) -> dict[str, Any]:
    """The metrics, and per served model its version and the feedback about it (no listing)."""
    numbers = live_numbers(metrics)
    with contextlib.suppress(RegistryError):  # a registry away leaves the last feedback figures
        catalog.feedback.refresh()  # at most every few seconds, a bounded number of reads
    for name, state in manager.states.items():
        served = state.served.version if state.served else None
        feedback = catalog.feedback.by_version(name).get(served) if served else None
        entry = numbers["models"].setdefault(name, {"routes": {}, "batch": {"sum": 0.0, "count": 0.0}, "queue": {}})
        entry.update(serving=served, alias=manager.settings.alias, feedback=feedback)
    return numbers
