"""What the Open Inference Protocol answers, whichever transport carries it: the REST routes
(routes.py) and the gRPC service (serving/grpc/) both ask here whether the server and a model are
ready and what a model's metadata is, so the two can never disagree."""

from __future__ import annotations

import re
from typing import Any

from digitserve.serving.api.v2.schemas import INPUTS, OUTPUTS, PLATFORM
from digitserve.serving.browsing.catalog import Catalog
from digitserve.serving.errors import ModelNotReadyError, UnknownVersionError, quoted
from digitserve.serving.http.shutdown import Drain
from digitserve.serving.inference.versions import ModelVersions

VERSION = re.compile(r"[1-9][0-9]{0,17}", re.ASCII)


def parse_version(model: str, version: str) -> int:
    if not VERSION.fullmatch(version):
        raise UnknownVersionError(
            f"model {quoted(model)} has no version {quoted(version)}; versions are positive integers"
        )
    return int(version)


async def registry_versions(catalog: Catalog, versions: ModelVersions, model: str) -> list[int]:
    """The model's versions in the registry (404 for an unknown model)."""
    versions.state(model)
    listing = await catalog.describe(model)
    if listing.registry_error and not listing.versions:
        raise ModelNotReadyError(f"cannot list the versions of {model!r} now: {listing.registry_error}")
    return [int(v["version"]) for v in listing.versions]


async def check_version(catalog: Catalog, versions: ModelVersions, model: str, version: str) -> int:
    """The version as an int, or 404 when the registry does not hold it."""
    number = parse_version(model, version)
    if number not in await registry_versions(catalog, versions, model):
        raise UnknownVersionError(f"model {model!r} has no version {number}")
    return number


def metadata(model: str, versions: list[int]) -> dict[str, Any]:
    return {
        "name": model,
        "versions": [str(v) for v in versions],
        "platform": PLATFORM,
        "inputs": [t.model_dump() for t in INPUTS],
        "outputs": [t.model_dump() for t in OUTPUTS],
    }


async def describe_model(catalog: Catalog, versions: ModelVersions, model: str, version: str = "") -> dict[str, Any]:
    """A model's metadata: every registry version, or only `version` (404 when it has none such)."""
    if version:
        return metadata(model, [await check_version(catalog, versions, model, version)])
    return metadata(model, await registry_versions(catalog, versions, model))


def server_not_ready(versions: ModelVersions, drain: Drain) -> str | None:
    """Why the server is not ready, or None when it is."""
    if drain.active:
        return "the server is shutting down"
    waiting = [name for name, state in versions.states.items() if state.served is None]
    return f"no verified version loaded yet for {', '.join(waiting)}" if waiting else None


async def model_not_ready(
    catalog: Catalog, versions: ModelVersions, drain: Drain, model: str, version: str = ""
) -> tuple[int, str | None]:
    """The version asked about (the served one when `version` is empty; 404 for an unknown model
    or version) and why it is not ready, or None when it is."""
    if not version:
        state = versions.state(model)
        if drain.active:
            return 0, "the server is shutting down"
        if state.served is None:
            return 0, f"model {model!r} has no verified version loaded yet"
        return state.served.version, None
    number = await check_version(catalog, versions, model, version)
    if drain.active:
        return number, "the server is shutting down"
    if not versions.is_loaded(model, number):
        return number, f"{model} v{number} is not loaded; the first infer that names it loads it"
    return number, None
