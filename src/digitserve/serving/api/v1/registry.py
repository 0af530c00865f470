"""Read-only JSON behind the models pages: /v1/registry/... (versions, alias histories, reports, the
digits of a confusion-matrix cell, two versions compared) and /v1/live (the server's own numbers).
Every listing is paginated (`offset`, `limit` at most 100)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Response

from digitserve.registry.records import MAX_VERSION
from digitserve.serving.api.schemas import ERROR_RESPONSES
from digitserve.serving.browsing import analysis
from digitserve.serving.browsing.browser import page
from digitserve.serving.browsing.live import live_view
from digitserve.serving.deps import BrowserDep, CatalogDep, MetricsDep, VersionsDep
from digitserve.serving.errors import InvalidInputError, UnknownVersionError
from digitserve.serving.responses import JSONResponse

router = APIRouter(prefix="/v1", tags=["registry"], responses={k: ERROR_RESPONSES[k] for k in (404, 422, 503)})
NAME = r"^[a-z0-9][a-z0-9_-]{0,63}$"
ModelPath = Annotated[str, Path(pattern=NAME, description="model name")]
VersionPath = Annotated[int, Path(ge=1, le=MAX_VERSION, description="registry version")]
DigitPath = Annotated[int, Path(ge=0, le=9)]
Offset = Annotated[int, Query(ge=0, le=1_000_000, description="items to skip")]
Limit = Annotated[int, Query(ge=1, le=100, description="items to return (at most 100)")]
VersionRef = Annotated[str, Query(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}:[1-9][0-9]{0,15}$", description="MODEL:VERSION")]
MEDIA = {"png": "image/png", "json": "application/json"}


@router.get("/registry/models", summary="Models in the registry, with their aliases")
async def models(browser: BrowserDep, offset: Offset = 0, limit: Limit = 20) -> dict[str, Any]:
    return page(await browser.run(browser.models), offset, limit)


@router.get("/registry/models/{model}/versions", summary="A model's versions, newest first")
async def versions(
    browser: BrowserDep,
    model: ModelPath,
    offset: Offset = 0,
    limit: Limit = 20,
    before: Annotated[int | None, Query(ge=1, le=MAX_VERSION, description="only versions below this one")] = None,
) -> dict[str, Any]:
    return await browser.run(browser.versions, model, offset, limit, before)


@router.get("/registry/models/{model}/versions/{version}", summary="One version: numbers, metrics, report files")
async def version(browser: BrowserDep, model: ModelPath, version: VersionPath) -> dict[str, Any]:
    return await browser.run(browser.version, model, version)


@router.get(
    "/registry/models/{model}/versions/{version}/report/{name}",
    summary="A report file (PNG plot or JSON)",
    response_class=Response,
    responses={200: {"content": {"image/png": {}, "application/json": {}}}},
)
async def report_file(
    browser: BrowserDep, model: ModelPath, version: VersionPath, name: Annotated[str, Path(max_length=80)]
) -> Response:
    data = await browser.run(browser.report_file, model, version, name)
    headers = {"Cache-Control": "public, max-age=86400, immutable"}  # a version's report does not change
    return Response(data, media_type=MEDIA[name.rsplit(".", 1)[1]], headers=headers)


@router.get(
    "/registry/models/{model}/versions/{version}/confusion/{true}/{predicted}",
    summary="The test digits in one confusion-matrix cell, with the version's confidence for each",
)
async def confusion_cell(
    browser: BrowserDep,
    model: ModelPath,
    version: VersionPath,
    true: DigitPath,
    predicted: DigitPath,
    offset: Offset = 0,
    limit: Limit = 40,
) -> dict[str, Any]:
    samples = await browser.run(browser.samples, model, version)
    if samples is None:
        raise UnknownVersionError(f"{model} v{version} was published before per-digit test samples were kept")
    return await browser.run(analysis.cell, samples, true, predicted, offset, limit)


@router.get("/registry/models/{model}/events", summary="Alias moves, newest first")
async def events(
    browser: BrowserDep,
    model: ModelPath,
    alias: Annotated[str | None, Query(pattern=NAME)] = None,
    offset: Offset = 0,
    limit: Limit = 20,
    before: Annotated[
        str | None, Query(pattern=r"^[0-9A-Za-z._-]{1,80}$", description="only events older than this key")
    ] = None,
) -> dict[str, Any]:
    return await browser.run(browser.events, model, alias, offset, limit, before)


def _ref(ref: str) -> tuple[str, int]:
    name, _, number = ref.partition(":")
    if int(number) > MAX_VERSION:
        raise InvalidInputError(f"{ref[:40]}: versions are at most {MAX_VERSION}")
    return name, int(number)


@router.get("/registry/compare", summary="Two versions (of one model or two) compared digit by digit")
async def compare(browser: BrowserDep, a: VersionRef, b: VersionRef, limit: Limit = 40) -> JSONResponse:
    sides = [_ref(a), _ref(b)]
    cards = [await browser.run(browser.version, *side) for side in sides]
    samples = [await browser.run(browser.samples, *side) for side in sides]
    if samples[0] is None or samples[1] is None:
        missing = [f"{m} v{v}" for (m, v), s in zip(sides, samples, strict=True) if s is None]
        raise InvalidInputError(f"{' and '.join(missing)} keep no per-digit test samples; compare newer versions")
    try:
        digits = await browser.run(analysis.compare, samples[0], samples[1], limit)
    except ValueError as exc:
        raise InvalidInputError(str(exc)) from None
    return JSONResponse({"a": cards[0], "b": cards[1], **digits})


@router.get("/live", summary="The server's own numbers now (counters; two readings give rates)")
async def live(browser: BrowserDep, metrics: MetricsDep, versions: VersionsDep, catalog: CatalogDep) -> dict[str, Any]:
    return await browser.run(live_view, metrics, versions, catalog)
