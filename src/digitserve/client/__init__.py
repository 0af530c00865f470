"""A typed Python client of a digitserve server's /v1 API, and what `digitserve predict` uses.

    from digitserve.client import Client

    with Client("http://127.0.0.1:8000") as client:
        answer = client.predict("docs/img/seven.png")
        print(answer.predictions[0].label, answer.model, answer.version)   # 7 cnn 4

- `sync.py`: `Client` (httpx.Client); `asynchronous.py`: `AsyncClient` (httpx.AsyncClient), its
  twin. Both only send and wait: what they send and how answers read is written once, in
- `calls.py`: each endpoint as a `Call` (the request, how its answer parses); the default URL
  (`DIGITSERVE_URL`, read through `digitserve.config`);
- `retry.py`: `Retry`, when a call is tried again (503 + Retry-After, a connection never made);
- `images.py`: bytes, paths, PIL images and numpy arrays as the files the server decodes;
- `results.py`: the answers as frozen dataclasses (`PredictResult`, `Prediction`, `ModelInfo`, ...);
- `errors.py`: `DigitserveError` and a subclass per family of the server's error codes.

It talks to the server only over HTTP: it imports `digitserve.config` and `digitserve.imaging`
(numpy and Pillow), never the server, the registry or torch. Guide: docs/client.md.
"""

from digitserve.client.asynchronous import AsyncClient
from digitserve.client.errors import (
    DeadlineExceededError,
    DigitserveError,
    DisabledError,
    InvalidInputError,
    NoAnswerError,
    NotFoundError,
    PayloadTooLargeError,
    RateLimitedError,
    ServerUnreachableError,
    ServiceUnavailableError,
    UnauthorizedError,
    UnsupportedMediaTypeError,
)
from digitserve.client.images import ImageInput
from digitserve.client.results import (
    NOT_A_DIGIT,
    ClassScore,
    FeedbackReceipt,
    Label,
    ModelInfo,
    Prediction,
    PredictResult,
)
from digitserve.client.retry import Retry
from digitserve.client.sync import Client

__all__ = [
    "NOT_A_DIGIT",
    "AsyncClient",
    "ClassScore",
    "Client",
    "DeadlineExceededError",
    "DigitserveError",
    "DisabledError",
    "FeedbackReceipt",
    "ImageInput",
    "InvalidInputError",
    "Label",
    "ModelInfo",
    "NoAnswerError",
    "NotFoundError",
    "PayloadTooLargeError",
    "PredictResult",
    "Prediction",
    "RateLimitedError",
    "Retry",
    "ServerUnreachableError",
    "ServiceUnavailableError",
    "UnauthorizedError",
    "UnsupportedMediaTypeError",
]
