"""The one prediction pipeline: resolve, admit, decode, queue, answer -- written once for every protocol.

`/v1` JSON, `/v1` multipart and `/v2` infer only translate their wire formats into calls here
and the result back. In order, for every request:
1. `target`: the model is resolved once (404 for an unknown one) and handed on with how its
   version is chosen; queue room was checked on arrival (serving/http/admission.py);
2. `admit`: the image count is within limits (413);
3. encoded images are decoded within pixel budgets (`decoding.py`), raw pixels used as sent;
4. the images are queued on the chosen version's batcher (which checks room again, 503) and
   answered by that version within the request's deadline, which started when the request
   arrived (504 past it). A canary that fails, or has no room, is answered by production.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from digitserve.config import RequestLimits
from digitserve.serving.errors import (
    DeadlineExceededError,
    InvalidInputError,
    QueueFullError,
    RetiredError,
    ServiceError,
)
from digitserve.serving.inference.batching import BatchTiming
from digitserve.serving.inference.decoding import ImageDecoder
from digitserve.serving.inference.inputs import check_count
from digitserve.serving.inference.state import LoadedVersion, ModelState
from digitserve.serving.inference.versions import ModelVersions
from digitserve.serving.observability.metrics import ServiceMetrics
from digitserve.serving.observability.record import Answer, RequestRecord
from digitserve.serving.rollouts.routing import Rollouts, Route

log = logging.getLogger(__name__)
RecordOrNone = RequestRecord | None


@dataclass(frozen=True)
class Selector:
    """Which version answers: the served alias (default), a pinned version, or another alias."""

    version: int | None = None
    alias: str | None = None
    sticky: str | None = None  # X-Digitserve-Sticky: the same key, the same side of a canary rollout

    def __post_init__(self) -> None:
        if self.version is not None and self.alias is not None:
            raise InvalidInputError("give either ?version= or ?alias=, not both")

    @property
    def pinned(self) -> bool:
        return self.version is not None or self.alias is not None


@dataclass(frozen=True)
class Target:
    """A request's model, resolved once, how its version is chosen, and who asks (the client's
    address as the server sees it: a canary's evidence counts by client network)."""

    state: ModelState
    selector: Selector
    client: str | None = None
    record: RequestRecord | None = None  # what the request's log line and trace show


@dataclass(frozen=True)
class PredictionResult:
    loaded: LoadedVersion
    alias: str | None  # the alias that chose the version; None for a pinned version
    probabilities: np.ndarray  # (n, 10) float32, calibrated
    images: np.ndarray  # (n, 28, 28) uint8: what the model saw

    @cached_property  # read by more than one /v2 output: computed once
    def is_digit(self) -> np.ndarray:
        """(n,) bool: whether each input looks like a digit, under the version's threshold."""
        return self.loaded.servable.calibration.is_digit(self.probabilities)

    def reason(self, i: int) -> str:
        """Why input i is not a digit (only meaningful where `is_digit` is False)."""
        return self.loaded.servable.calibration.reason(self.probabilities[i])


@dataclass
class PredictionPipeline:
    versions: ModelVersions
    decoder: ImageDecoder
    rollouts: Rollouts
    metrics: ServiceMetrics
    limits: RequestLimits

    def target(
        self,
        model: str,
        selector: Selector = Selector(),
        client: str | None = None,
        record: RequestRecord | None = None,
    ) -> Target:
        """The model a request is for (404 for one this server does not serve)."""
        return Target(self.versions.state(model), selector, client, record)

    def admit(self, n: int, what: str = "images") -> None:
        """The check before any decoding: the count of images (413 past the limit)."""
        check_count(n, self.limits, what)

    async def prepare(self, blobs: Sequence[bytes], names: Sequence[str], deadline: float) -> np.ndarray:
        """Encoded images -> MNIST-style (n, 28, 28) uint8, within the decode budgets."""
        return await self.decoder.prepare(blobs, names, deadline)

    async def predict_encoded(
        self, target: Target, blobs: Sequence[bytes], names: Sequence[str], deadline: float
    ) -> PredictionResult:
        """Encoded images (PNG, JPEG, CSV, ...) -> predictions; `admit` must have passed."""
        started = time.monotonic()
        images = await self.prepare(blobs, names, deadline)
        if target.record is not None:
            target.record.stage("admission", target.record.arrived, started)
            target.record.stage("decode", started, time.monotonic(), images=len(blobs))
        return await self.predict_pixels(target, images, deadline)

    async def predict_pixels(self, target: Target, images: np.ndarray, deadline: float) -> PredictionResult:
        """MNIST-style uint8 (n, 28, 28) -> predictions of the version the selector picks (or the
        rollout routes to); a canary that fails is answered by production instead."""
        record = target.record
        timing = None
        if record is not None and record.stages is not None:  # traced
            timing = BatchTiming()
            if not record.stages:  # pixels sent as such: nothing was decoded
                record.stage("admission", record.arrived, time.monotonic())
        queued = time.monotonic()
        route, future = await self._submit(target, images, deadline, timing)
        try:
            probabilities = await self._answer(route, future, deadline)
        except Exception as exc:
            if route.side != "canary" or isinstance(exc, ServiceError):
                raise
            log.warning("%s canary v%d failed (%s); production answers", route.model, route.loaded.version, exc)
            route, future = self._instead_of_canary(route, images, deadline, timing=timing)
            probabilities = await self._answer(route, future, deadline)
        result = PredictionResult(route.loaded, route.alias, probabilities, images)
        self._observe(route, result, record, timing, queued)
        arrived = deadline - self.limits.request_timeout_s
        self.rollouts.answered(route, images, probabilities, time.monotonic() - arrived)
        return result

    def _observe(
        self, route: Route, result: PredictionResult, record: RequestRecord | None, timing: BatchTiming | None,
        queued: float,
    ) -> None:  # fmt: skip
        """The answer in the metrics (what it says, its inputs' ink, drift) and in the request's record."""
        servable, metrics = route.loaded.servable, self.metrics
        metrics.images.labels(route.model, str(servable.version)).inc(len(result.images))
        if metrics.per_request:
            metrics.answers.observe(
                route.model, servable.version, servable.reference, result.probabilities, result.is_digit, result.images
            )
        if record is None:
            return
        record.answered(Answer(route.model, servable.version, route.alias, result.probabilities, result.is_digit))
        if timing is not None:
            attributes = {"model": route.model, "version": servable.version}
            record.stage("queue wait", queued, timing.started, **attributes)
            record.stage("inference batch", timing.started, timing.ended, batch_size=timing.size, **attributes)

    async def _route(self, target: Target) -> Route:
        selector, state = target.selector, target.state
        if not selector.pinned:
            return self.rollouts.route(state, selector.sticky, target.client)
        loaded = await self.versions.pinned_version(state, selector.version, selector.alias)
        return Route(state, loaded, None if selector.version is not None else selector.alias, "pinned", target.client)

    async def _submit(
        self, target: Target, images: np.ndarray, deadline: float, timing: BatchTiming | None
    ) -> tuple[Route, asyncio.Future[np.ndarray]]:
        """Pick the version and queue the images on it, with no await in between (a hot-swap
        cannot retire the batcher in between; a version retired before the pick is picked again)."""
        for attempt in range(2):
            route = await self._route(target)
            try:
                return route, route.loaded.batcher.submit(images, deadline, timing)
            except QueueFullError:
                if route.side != "canary":
                    raise
                # a canary without room is not for clients; nor is it the canary's fault (a client
                # can fill it on purpose): counted apart, never judged as an error
                return self._instead_of_canary(route, images, deadline, error=False, timing=timing)
            except RetiredError:
                if attempt:  # the version was retired between lookup and submit twice: give up
                    raise
        raise AssertionError("unreachable")

    def _instead_of_canary(
        self, canary: Route, images: np.ndarray, deadline: float, error: bool = True, timing: BatchTiming | None = None
    ) -> tuple[Route, asyncio.Future[np.ndarray]]:
        """Production answers what the canary could not (a failure is counted against the canary)."""
        if error:
            self.rollouts.failed(canary, error=True)
        else:
            self.metrics.rollout_failure(canary.model, canary.alias or "", canary.loaded.version, "full")
        route = self.rollouts.production_route(canary.state, canary.client)
        return route, route.loaded.batcher.submit(images, deadline, timing)

    async def _answer(self, route: Route, future: asyncio.Future[np.ndarray], deadline: float) -> np.ndarray:
        try:
            return await asyncio.wait_for(future, max(0.0, deadline - time.monotonic()))
        except (TimeoutError, DeadlineExceededError):
            self.rollouts.failed(route, miss=True)
            raise DeadlineExceededError(
                f"no answer within {self.limits.request_timeout_s:g}s; the server is overloaded, retry later"
            ) from None
