"""`Client`: the /v1 API from blocking code, on one `httpx.Client` (its connections kept alive)."""

from __future__ import annotations

import time
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


class Client(ClientBase):
    """A digitserve server's /v1 API.

        with Client() as client:                  # $DIGITSERVE_URL, else http://127.0.0.1:8000
            answer = client.predict("seven.png")
            answer.predictions[0].label           # 7

    `url` is the server's base URL; `timeout` (seconds, or an `httpx.Timeout`) bounds each
    attempt; `retry` says which failures are tried again (`Retry`: a 503 after its Retry-After,
    a connection that failed before sending, 3 attempts in all); `headers` go with every request
    (an `X-Request-ID` is echoed back, and names the request in the server's log). A refusal
    raises the `DigitserveError` subclass of its code (`digitserve.client.errors`).
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
        self._http = httpx.Client(**self._options(timeout, headers))

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def predict(
        self,
        images: ImageInput | Sequence[ImageInput],
        model: str = "cnn",
        *,
        top_k: int | None = None,
        version: int | None = None,
        alias: str | None = None,
    ) -> PredictResult:
        """Classify one image, or a list of them (one `Prediction` each, in order).

        An image is an encoded file's bytes (PNG, JPEG, WebP, BMP, GIF), a path to one, a PIL
        image, or a numpy array (H, W) of uint8 0..255 or float 0..1. The models want an
        MNIST-style digit, white on black; the server finds the ink and its polarity itself, so
        a dark digit on light paper works too. `top_k`: how many of the likeliest classes each
        prediction lists (server default 3, at most 10); `version` pins a registry version,
        `alias` follows another alias (say "staging") instead of the served one.
        """
        return self._send(calls.predict(images, model, top_k, version, alias))

    def models(self) -> list[ModelInfo]:
        """Every model the server serves: its versions, aliases, the version serving, readiness."""
        return self._send(calls.models())

    def model(self, name: str) -> ModelInfo:
        """One served model (`NotFoundError` if the server does not serve it)."""
        return self._send(calls.model(name))

    def feedback(
        self,
        image: ImageInput,
        *,
        model: str,
        version: int,
        predicted: Label | None,
        label: Label,
        alias: str | None = None,
    ) -> FeedbackReceipt:
        """Tell the server what a digit really is after a prediction: the image the model saw
        (as for `predict`), the model and version that answered (and its alias), what it answered
        (`predicted`: a digit, or None / "not_a_digit") and the right `label` (a digit, or
        `NOT_A_DIGIT`). The sample waits for a reviewer before any training uses it."""
        return self._send(calls.feedback(image, model, version, predicted, label, alias))

    def live(self) -> bool:
        """Whether the server process answers (`/healthz`); False when nothing listens."""
        return self._send(calls.health("/healthz"))

    def ready(self) -> bool:
        """Whether every configured model has a verified version loaded (`/readyz`); False while
        it loads, drains, or when nothing listens."""
        return self._send(calls.health("/readyz"))

    def _send(self, call: Call[T]) -> T:
        attempt = 1
        while True:
            try:
                outcome: httpx.Response | httpx.RequestError = self._http.request(**self._request(call))
            except httpx.RequestError as exc:  # a transport failure, an undecodable body
                outcome = exc
            delay = self._delay(call, attempt, outcome)
            if delay is None:
                return call.answer(outcome, self.url)
            time.sleep(delay)
            attempt += 1
