"""Each endpoint as a `Call`: the request to send and how to read its answer, written once for
`Client` and `AsyncClient`, which only send it (and retry, as `Retry` decides)."""

from __future__ import annotations

import base64
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar
from urllib.parse import quote

import httpx

from digitserve.client.errors import DigitserveError, NoAnswerError, ServerUnreachableError, error_for
from digitserve.client.images import ImageInput, encode_image, image_list
from digitserve.client.results import FeedbackReceipt, Label, ModelInfo, PredictResult
from digitserve.config import read_group
from digitserve.config.groups import Group

T = TypeVar("T")
DEFAULT_URL = "http://127.0.0.1:8000"


class ClientSettings(Group):
    """The client's defaults from the environment: `DIGITSERVE_URL`."""

    url: str = DEFAULT_URL


def base_url(url: str | None) -> str:
    """The server's URL: `url`, else `DIGITSERVE_URL`, else http://127.0.0.1:8000; `http://` is
    assumed when no scheme is given (`localhost:8000`)."""
    url = url or read_group(ClientSettings).url or DEFAULT_URL
    url = (url if "://" in url else f"http://{url}").rstrip("/")
    try:
        httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise DigitserveError(f"{url!r} is not a server's URL: {exc}", code="invalid_url") from None
    return url


@dataclass(frozen=True)
class Call(Generic[T]):
    """One request and how its answer reads: `parse` takes an answer whose status is in `ok`;
    any other status is the server's refusal (`error_for`). `retry` False: one attempt, whatever
    happens (a probe's 503 is its answer); `unreachable`: the answer when nothing listens, if any."""

    method: str
    path: str
    parse: Callable[[httpx.Response], T]
    json: Any = None
    params: dict[str, Any] | None = None
    ok: tuple[int, ...] = (200,)
    retry: bool = True
    unreachable: Callable[[], T] | None = None

    def answer(self, outcome: httpx.Response | httpx.RequestError, url: str) -> T:
        """What the caller gets for the last attempt's outcome: the parsed answer, or the error."""
        if isinstance(outcome, httpx.ConnectError | httpx.ConnectTimeout):
            if self.unreachable is not None:
                return self.unreachable()
            raise ServerUnreachableError(url) from outcome
        if isinstance(outcome, httpx.RequestError):
            raise NoAnswerError(f"no answer from {url}: {type(outcome).__name__} {outcome}".strip()) from outcome
        if outcome.status_code not in self.ok:
            raise error_for(outcome)
        try:
            return self.parse(outcome)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:  # a 200 that is not digitserve's
            what = f"{type(exc).__name__}: {exc}"
            raise NoAnswerError(f"the answer from {url} is not a digitserve answer ({what})") from exc


def predict(
    images: ImageInput | Sequence[ImageInput], model: str, top_k: int | None, version: int | None, alias: str | None
) -> Call[PredictResult]:
    encoded = [base64.b64encode(encode_image(image)).decode() for image in image_list(images)]
    body: dict[str, Any] = {"images": encoded}
    if top_k is not None:
        body["top_k"] = top_k
    params = {k: v for k, v in (("version", version), ("alias", alias)) if v is not None}
    path = f"/v1/models/{quote(model, safe='')}/predict"
    return Call("POST", path, _json(PredictResult.from_json), body, params or None)


def models() -> Call[list[ModelInfo]]:
    return Call("GET", "/v1/models", lambda r: [ModelInfo.from_json(doc) for doc in r.json()])


def model(name: str) -> Call[ModelInfo]:
    return Call("GET", f"/v1/models/{quote(name, safe='')}", _json(ModelInfo.from_json))


def feedback(
    image: ImageInput, model: str, version: int, predicted: Label | None, label: Label, alias: str | None
) -> Call[FeedbackReceipt]:
    body = {
        "image": base64.b64encode(encode_image(image)).decode(),
        "model": model,
        "version": version,
        "predicted": predicted,
        "label": label,
        "alias": alias,
    }
    return Call("POST", "/v1/feedback", _json(FeedbackReceipt.from_json), body, ok=(200, 201))


def health(path: Literal["/healthz", "/readyz"]) -> Call[bool]:
    """A probe, never retried: True for 200; False for 503 (not ready, draining) or when nothing
    listens; any other status is an error."""
    return Call("GET", path, lambda r: r.status_code == 200, ok=(200, 503), retry=False, unreachable=lambda: False)


def _json(parse: Callable[[dict[str, Any]], T]) -> Callable[[httpx.Response], T]:
    return lambda response: parse(response.json())
