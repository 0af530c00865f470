"""Sending feedback to a running server and waiting for it to reach the registry."""

from __future__ import annotations

import base64
import io
from typing import Any

import httpx
import numpy as np
from PIL import Image

from digitserve.registry import ModelRegistry
from digitserve.registry.feedback import FeedbackStore
from support.server import wait_until


def predict_with_input(url: str, image: bytes, model: str = "cnn") -> dict[str, Any]:
    """A /v1 prediction of one image that returns the 28x28 input the model saw."""
    body = {"images": [base64.b64encode(image).decode()], "return_input": True}
    response = httpx.post(f"{url}/v1/models/{model}/predict", json=body, timeout=30)
    assert response.status_code == 200, response.text
    return dict(response.json())


def correction(answer: dict[str, Any], label: int | str) -> dict[str, Any]:
    """The feedback body for a /v1 answer: its model input, model, version and answer, and the right label."""
    prediction = answer["predictions"][0]
    return {
        "image": prediction["model_input"],
        "model": answer["model"],
        "version": answer["version"],
        "predicted": prediction["label"],
        "label": label,
    }


def send(url: str, body: dict[str, Any], client: str = "192.0.2.1") -> httpx.Response:
    """POST /v1/feedback as `client` (X-Forwarded-For: the server must trust loopback, FORWARDED_ALLOW_IPS)."""
    return httpx.post(f"{url}/v1/feedback", json=body, headers={"X-Forwarded-For": client}, timeout=30)


def pixels_of(png_b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(png_b64))))


def wait_for_samples(registry: ModelRegistry, ids: list[str], timeout_s: float = 60) -> FeedbackStore:
    """Until the registry holds the feedback samples `ids`."""
    store = FeedbackStore(registry.store)
    wait_until(lambda: set(ids) <= set(store.ids()), timeout_s, f"{len(ids)} feedback samples in {registry.uri}")
    return store
