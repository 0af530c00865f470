"""Answers people can trust, through a real server: `is_digit`, `label: null` and its reason,
`?abstain=false`, the /v2 `is_digit` output, and the manifest's calibration and threshold applied
as recorded (issue 15). The served versions are the shipped production CNN and ViT."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont
from support.registries import copy_shipped, png_bytes, publish_with_rule
from support.server import running_server

from digitserve.data import load_mnist
from digitserve.registry import ModelRegistry
from digitserve.synthetic.negatives import font_dir

MODELS = ("cnn", "vit")


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> ModelRegistry:
    return copy_shipped(tmp_path_factory.mktemp("registry"), MODELS)


@pytest.fixture(scope="module")
def server(registry: ModelRegistry, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    env = {
        "DIGITSERVE_REGISTRY": registry.uri,
        "DIGITSERVE_MODELS": ",".join(MODELS),
        "DIGITSERVE_RUNTIME_THREADS": "1",
        "DIGITSERVE_POLL_SECONDS": "30",
    }
    with running_server(env, log_path=tmp_path_factory.mktemp("server") / "serve.log") as base_url:
        yield base_url


def digit_png(index: int = 0) -> tuple[bytes, int]:
    test = load_mnist("test")
    return png_bytes(test.images[index]), int(test.labels[index])


def letter_png(text: str = "A") -> bytes:
    """A letter as someone would photograph or upload it: black on white, a bold font."""
    image = Image.new("L", (200, 200), 255)
    font = ImageFont.truetype(str(font_dir() / "DejaVuSans-Bold.ttf"), 150)
    ImageDraw.Draw(image).text((100, 100), text, fill=0, font=font, anchor="mm")
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def predict(server: str, model: str, images: list[bytes], **params: str) -> dict:
    response = httpx.post(
        f"{server}/v1/models/{model}/predict", json={"images": [b64(i) for i in images]}, params=params, timeout=30
    )
    assert response.status_code == 200, response.text
    return response.json()


@pytest.mark.parametrize("model", MODELS)
def test_a_digit_is_a_digit_and_a_letter_is_not(server: str, model: str) -> None:
    digit, label = digit_png(0)
    body = predict(server, model, [digit, letter_png("A"), letter_png("#")])
    first, *others = body["predictions"]
    assert (first["is_digit"], first["label"], first["best_guess"], first["reason"]) == (True, label, label, None)
    assert first["confidence"] > 0.9
    for answer in others:
        assert answer["is_digit"] is False and answer["label"] is None
        assert answer["reason"].startswith("does not look like a digit: no digit reaches")
        assert answer["best_guess"] == int(np.argmax(answer["probabilities"]))
        assert answer["confidence"] == max(answer["probabilities"])


def test_abstain_false_gives_the_best_guess_as_label(server: str) -> None:
    body = predict(server, "cnn", [letter_png("A")], abstain="false")
    (answer,) = body["predictions"]
    assert answer["is_digit"] is False  # still said
    assert answer["label"] == answer["best_guess"] == int(np.argmax(answer["probabilities"]))
    bad = httpx.post(f"{server}/v1/models/cnn/predict", json={"images": [b64(letter_png())]}, params={"abstain": "x"})
    assert bad.status_code == 422 and "abstain" in bad.text


def test_multipart_upload_answers_is_digit(server: str) -> None:
    digit, label = digit_png(1)
    files = [("files", ("digit.png", digit, "image/png")), ("files", ("letter.png", letter_png("K"), "image/png"))]
    response = httpx.post(f"{server}/v1/models/vit/predict/upload", files=files, timeout=30)
    assert response.status_code == 200, response.text
    a, b = response.json()["predictions"]
    assert (a["is_digit"], a["label"]) == (True, label)
    assert (b["is_digit"], b["label"]) == (False, None)


def infer_v2(server: str, model: str, images: list[bytes], **parameters: object) -> httpx.Response:
    body = {
        "inputs": [{"name": "images", "shape": [len(images)], "datatype": "BYTES", "data": [b64(i) for i in images]}],
        "parameters": parameters,
    }
    return httpx.post(f"{server}/v2/models/{model}/infer", json=body, timeout=30)


def test_v2_has_an_is_digit_output_and_label_minus_one(server: str) -> None:
    digit, label = digit_png(0)
    response = infer_v2(server, "cnn", [digit, letter_png("A")])
    assert response.status_code == 200, response.text
    outputs = {o["name"]: o for o in response.json()["outputs"]}
    assert list(outputs) == ["probabilities", "label", "is_digit"]
    assert (outputs["is_digit"]["datatype"], outputs["is_digit"]["shape"]) == ("BOOL", [2])
    assert outputs["is_digit"]["data"] == [True, False]
    assert outputs["label"]["data"] == [label, -1]
    probabilities = np.array(outputs["probabilities"]["data"]).reshape(2, 10)
    guess = int(probabilities[1].argmax())
    kept = infer_v2(server, "cnn", [digit, letter_png("A")], abstain=False).json()
    assert {o["name"]: o["data"] for o in kept["outputs"]}["label"] == [label, guess]
    metadata = httpx.get(f"{server}/v2/models/cnn", timeout=10).json()
    assert {"name": "is_digit", "datatype": "BOOL", "shape": [-1]} in metadata["outputs"]
    refused = infer_v2(server, "cnn", [digit], abstain="no")
    assert refused.status_code == 422 and "'abstain' must be true or false" in refused.json()["error"]


def test_v2_binary_is_digit_is_one_byte_each(server: str) -> None:
    digit, _ = digit_png(0)
    body = {
        "inputs": [{"name": "images", "shape": [2], "datatype": "BYTES", "data": [b64(digit), b64(letter_png("A"))]}],
        "outputs": [{"name": "is_digit", "parameters": {"binary_data": True}}],
    }
    response = httpx.post(f"{server}/v2/models/cnn/infer", json=body, timeout=30)
    assert response.status_code == 200, response.text
    head = int(response.headers["Inference-Header-Content-Length"])
    assert response.content[head:] == b"\x01\x00"


def test_the_manifest_rule_is_what_the_server_applies(server: str, registry: ModelRegistry) -> None:
    """A version whose manifest records T=20 and threshold 0.5 flattens every answer below 0.5
    and so answers "not a digit" even for a clean 7; one with no rule never abstains."""
    flat = publish_with_rule(
        registry,
        "cnn",
        1,
        {"calibration": {"temperature": 20}, "not_a_digit": {"score": "confidence", "threshold": 0.5}},
    )
    bare = publish_with_rule(registry, "cnn", 1, {})
    digit, label = digit_png(0)
    production = predict(server, "cnn", [digit])["predictions"][0]
    flattened = predict(server, "cnn", [digit], version=str(flat))["predictions"][0]
    assert flattened["confidence"] < 0.5 < production["confidence"]
    assert (flattened["is_digit"], flattened["label"], flattened["best_guess"]) == (False, None, label)
    letter = predict(server, "cnn", [letter_png("A")], version=str(bare))["predictions"][0]
    assert letter["is_digit"] is True and letter["label"] == letter["best_guess"] and letter["reason"] is None
    served = httpx.get(f"{server}/v1/models/cnn", timeout=10).json()["serving"]
    assert served["calibration"]["not_a_digit_threshold"] is not None


def test_an_unusable_rule_is_a_load_error_not_a_500(server: str, registry: ModelRegistry) -> None:
    damaged = publish_with_rule(registry, "cnn", 1, {"calibration": {"temperature": -1}})
    digit, _ = digit_png(0)
    response = httpx.post(
        f"{server}/v1/models/cnn/predict", json={"images": [b64(digit)]}, params={"version": damaged}, timeout=30
    )
    assert 400 <= response.status_code < 600 and response.status_code != 500, response.text
    assert "calibration.temperature must be a number" in response.json()["error"]
    assert predict(server, "cnn", [digit])["predictions"][0]["is_digit"] is True  # production unharmed


def test_shipped_versions_record_how_they_were_calibrated() -> None:
    shipped = ModelRegistry.open(str(Path(__file__).resolve().parents[2] / "registry"))
    for model in MODELS:
        manifest = shipped.manifest(model, shipped.resolve_alias(model, "production"))
        assert manifest.extra["calibration"]["method"] == "temperature"
        assert "validation split" in manifest.extra["calibration"]["fitted_on"]
        rule = manifest.extra["not_a_digit"]
        assert rule["score"] == "confidence" and 0.1 <= rule["threshold"] < 1
        assert rule["chosen_on"].startswith("validation data")
