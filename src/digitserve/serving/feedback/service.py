"""What happens to a correction a person sends (`POST /v1/feedback`), in order: the client's
rate limit (429), the model (404), the image decoded as a prediction's is, the version checked
against what this server runs or the registry holds (404, or 503 when it cannot be asked), then
the sample spooled to local disk (spool.py), which never waits for the registry."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import numpy as np

from digitserve.registry.feedback import NOT_A_DIGIT, FeedbackSample, Label
from digitserve.registry.records import now_iso
from digitserve.serving.errors import ForbiddenError, ModelNotReadyError, RateLimitedError, UnknownVersionError
from digitserve.serving.feedback.limits import RateLimiter, client_key
from digitserve.serving.feedback.spool import FeedbackSpool


@dataclass(frozen=True)
class Correction:
    """A person's correction of one answer, as sent."""

    model: str
    version: int
    predicted: int | str | None
    label: int | str | None
    image: bytes  # the model input the prediction returned, or the original image
    alias: str | None = None


@dataclass(frozen=True)
class Server:
    """What the service asks of the rest of the server."""

    check_model: Callable[[str], object]  # 404 for a model this server does not serve
    prepare: Callable[[bytes, float], Awaitable[np.ndarray]]  # (image, deadline) -> its 28x28 input
    resident: Callable[[str], list[int]]  # versions of a model this server has loaded
    has_version: Callable[[str, int], Awaitable[bool | None]]  # the registry's word; None: cannot ask now
    count: Callable[[FeedbackSample], None]  # a new sample, for the metrics


class FeedbackService:
    def __init__(self, enabled: bool, spool: FeedbackSpool, limiter: RateLimiter, server: Server) -> None:
        self.enabled = enabled
        self.spool = spool
        self.limiter = limiter
        self.server = server

    def check_enabled(self) -> None:
        if not self.enabled:
            raise ForbiddenError("feedback is turned off on this server (DIGITSERVE_FEEDBACK_ENABLED=false)")

    def check_rate(self, host: str | None) -> str:
        """429 past the client's share; returns the client's pseudonym for the sample."""
        _, client = client_key(host)
        wait = self.limiter.take(host or "")
        if wait is not None:
            raise RateLimitedError(f"too much feedback from this client; send again in {wait:.0f} s", wait)
        return client

    def check_model(self, model: str) -> None:
        self.server.check_model(model)

    async def take(self, correction: Correction, client: str, deadline: float) -> tuple[FeedbackSample, bool]:
        """Spool the correction (its model checked) as a sample; returns it and whether it is new."""
        server = self.server
        pixels = await server.prepare(correction.image, deadline)
        await self._check_version(correction.model, correction.version)
        sample = FeedbackSample(
            model=correction.model,
            version=correction.version,
            predicted=_label(correction.predicted),
            label=_label(correction.label),
            pixels=pixels,
            received_at=now_iso(),
            alias=correction.alias,
            client=client,
        )
        new = await self.spool.put(sample)
        if new:
            server.count(sample)
        return sample, new

    async def _check_version(self, model: str, version: int) -> None:
        if version in self.server.resident(model):  # a version this server runs: no registry read
            return
        known = await self.server.has_version(model, version)
        if known is False:
            raise UnknownVersionError(f"model {model!r} has no version {version}; send the version that answered")
        if known is None:  # only a version the registry confirms may name a sample (and a metrics series)
            raise ModelNotReadyError(f"cannot check {model} v{version} in the registry now; retry shortly")


def _label(value: int | str | None) -> Label:
    return None if value is None or value == NOT_A_DIGIT else int(value)
