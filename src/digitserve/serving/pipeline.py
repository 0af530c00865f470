"""The one prediction pipeline: admit, decode, queue, answer -- written once for every protocol.

`/v1` JSON, `/v1` multipart and `/v2` infer only translate their wire formats into a call here
and the result back. In order, for every request:
1. the model must exist (404) and the image count be within limits (413);
2. the version that will answer must have queue room for the images (503), checked before
   any decoding work is spent on a request that would be refused;
3. encoded images are decoded within pixel budgets (`decoding.py`), raw pixels used as sent;
4. the images are queued on the chosen version's batcher and answered by that version, within
   the request's deadline, which started when the request arrived (504 past it).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from digitserve.config import Settings
from digitserve.serving.batching import BatcherError, DeadlineExceededError, QueueFullError, RetiredError
from digitserve.serving.decoding import ImageDecoder, check_count
from digitserve.serving.errors import InvalidInputError
from digitserve.serving.manager import LoadedVersion, ModelManager
from digitserve.serving.rollout import Rollouts, Route

log = logging.getLogger(__name__)


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


class PredictionPipeline:
    def __init__(self, manager: ModelManager, decoder: ImageDecoder, settings: Settings, rollouts: Rollouts) -> None:
        self.manager = manager
        self.decoder = decoder
        self.settings = settings
        self.rollouts = rollouts

    def deadline(self) -> float:
        """A deadline starting now (for callers that did not get one on arrival)."""
        return time.monotonic() + self.settings.request_timeout_s

    def check_room(self, model: str, n: int, selector: Selector = Selector()) -> None:
        """QueueFullError now if the alias-served version cannot queue `n` more images. A request
        pinning a version or another alias is judged when it is queued."""
        if selector.pinned:
            return
        served = self.manager.state(model).served
        if served is not None:
            served.batcher.check_room(n)

    def admit(self, model: str, n: int, selector: Selector, what: str = "images") -> None:
        """The checks before any decoding: known model, image count, queue room."""
        self.manager.state(model)
        check_count(n, self.settings, what)
        self.check_room(model, n, selector)

    async def predict_encoded(
        self, model: str, blobs: Sequence[bytes], names: Sequence[str], selector: Selector, deadline: float
    ) -> PredictionResult:
        """Encoded images (PNG, JPEG, ...) -> predictions; `admit` must have passed."""
        images = await self.decoder.prepare(blobs, names, deadline)
        return await self.predict_pixels(model, images, selector, deadline)

    async def predict_pixels(
        self, model: str, images: np.ndarray, selector: Selector, deadline: float
    ) -> PredictionResult:
        """MNIST-style uint8 (n, 28, 28) -> predictions of the version the selector picks (or the
        rollout routes to); a canary that fails is answered by production instead."""
        route, future = await self._submit(model, images, selector, deadline)
        try:
            probabilities = await self._answer(route, future, deadline)
        except Exception as exc:
            if route.side != "canary" or isinstance(exc, BatcherError):
                raise
            log.warning("%s canary v%d failed (%s); production answers", model, route.loaded.version, exc)
            route, future = self._instead_of_canary(route, images, deadline)
            probabilities = await self._answer(route, future, deadline)
        self.manager.metrics.images.labels(model, str(route.loaded.version)).inc(len(images))
        arrived = deadline - self.settings.request_timeout_s
        self.rollouts.answered(route, images, probabilities, time.monotonic() - arrived)
        return PredictionResult(route.loaded, route.alias, probabilities, images)

    async def _route(self, model: str, selector: Selector) -> Route:
        if not selector.pinned:
            return self.rollouts.route(self.manager.state(model), selector.sticky)
        loaded = await self.manager.get(model, selector.version, selector.alias)
        return Route(loaded, None if selector.version is not None else selector.alias, "pinned")

    async def _submit(
        self, model: str, images: np.ndarray, selector: Selector, deadline: float
    ) -> tuple[Route, asyncio.Future[np.ndarray]]:
        """Pick the version and queue the images on it, with no await in between (a hot-swap
        cannot retire the batcher in between; a version retired before the pick is picked again)."""
        for attempt in range(2):
            route = await self._route(model, selector)
            try:
                return route, route.loaded.batcher.submit(images, deadline)
            except QueueFullError:
                if route.side != "canary":
                    raise
                return self._instead_of_canary(route, images, deadline)  # a canary without room is not for clients
            except RetiredError:
                if attempt:  # the version was retired between lookup and submit twice: give up
                    raise
        raise AssertionError("unreachable")

    def _instead_of_canary(
        self, canary: Route, images: np.ndarray, deadline: float
    ) -> tuple[Route, asyncio.Future[np.ndarray]]:
        """Production answers what the canary could not (counted against the canary)."""
        self.rollouts.failed(canary, error=True)
        route = self.rollouts.production_route(canary.loaded.model)
        return route, route.loaded.batcher.submit(images, deadline)

    async def _answer(self, route: Route, future: asyncio.Future[np.ndarray], deadline: float) -> np.ndarray:
        try:
            return await asyncio.wait_for(future, max(0.0, deadline - time.monotonic()))
        except (TimeoutError, DeadlineExceededError):
            self.rollouts.failed(route, miss=True)
            raise DeadlineExceededError(
                f"no answer within {self.settings.request_timeout_s:g}s; the server is overloaded, retry later"
            ) from None
