"""`AsyncClient`: the /v1 API from asyncio code, on one `httpx.AsyncClient`. The same calls,
answers, errors and retries as `Client` (`calls.py`, `retry.py`); only sending and waiting differ."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Self, TypeVar

import httpx

from digitserve.client import calls
from digitserve.client.base import ClientBase, Timeout
from digitserve.client.calls import Call
from digitserve.client.images import ImageInput
from digitserve.client.results import FeedbackReceipt, Label, ModelInfo, PredictResult
from digitserve.client.retry import Retry

T = TypeVar("T")


class AsyncClient(ClientBase):
    """`Client`'s async twin: the same arguments and methods, awaited.

        async with AsyncClient() as client:
            answer = await client.predict(["seven.png", image_array], model="vit")

    Images are encoded (and paths read) in the calling task, before the request is sent.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        timeout: Timeout = 30.0,
        retry: Retry | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(url, retry)
        self._http = httpx.AsyncClient(**self._options(timeout, headers))

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def predict(
        self,
        images: ImageInput | Sequence[ImageInput],
        model: str = "cnn",
        *,
        top_k: int | None = None,
        version: int | None = None,
        alias: str | None = None,
    ) -> PredictResult:
        """As `Client.predict`."""
        return await self._send(calls.predict(images, model, top_k, version, alias))

    async def models(self) -> list[ModelInfo]:
        """As `Client.models`."""
        return await self._send(calls.models())

    async def model(self, name: str) -> ModelInfo:
        """As `Client.model`."""
        return await self._send(calls.model(name))

    async def feedback(
        self,
        image: ImageInput,
        *,
        model: str,
        version: int,
        predicted: Label | None,
        label: Label,
        alias: str | None = None,
    ) -> FeedbackReceipt:
        """As `Client.feedback`."""
        return await self._send(calls.feedback(image, model, version, predicted, label, alias))

    async def live(self) -> bool:
        """As `Client.live`."""
        return await self._send(calls.health("/healthz"))

    async def ready(self) -> bool:
        """As `Client.ready`."""
        return await self._send(calls.health("/readyz"))

    async def _send(self, call: Call[T]) -> T:
        attempt = 1
        while True:
            try:
                outcome: httpx.Response | httpx.RequestError = await self._http.request(**self._request(call))
            except httpx.RequestError as exc:  # a transport failure, an undecodable body
                outcome = exc
            delay = self._delay(call, attempt, outcome)
            if delay is None:
                return call.answer(outcome, self.url)
            await asyncio.sleep(delay)
            attempt += 1
