"""The Open Inference Protocol (/v2) of a real `digitserve serve`, spoken to by tritonclient (the
official client, binary tensor data by default) and by raw HTTP following the protocol's examples.

The models are smoke-trained (a few seconds, low accuracy), so outcomes are checked against
references rather than true labels: the probabilities the same weights give in this process, and
what /v1 answers for the same images; labels must be the argmax of the probabilities.
"""

from __future__ import annotations

import base64
import io
import json
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
import tritonclient.http as triton
from PIL import Image
from support.registries import png_bytes
from support.server import running_server
from tritonclient.utils import InferenceServerException

from digitserve import __version__
from digitserve.data import load_mnist
from digitserve.models.checkpoint import load_network, predict_logits
from digitserve.registry import ModelRegistry

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
MAX_IMAGES = 32
MAX_BODY_BYTES = 1024 * 1024
N = 8  # test digits per request


@pytest.fixture(scope="module")
def registry(smoke_copy: Path) -> Path:
    """cnn v1, v2 (another seed) and vit v1, smoke-trained (conftest.py); `production` -> v1 of each."""
    reg = ModelRegistry.open(str(smoke_copy))
    for model in ("cnn", "vit"):
        reg.move_alias(model, "production", 1)
    return smoke_copy


@pytest.fixture(scope="module")
def base_url(registry: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("v2-server")
    env = {
        "DIGITSERVE_REGISTRY": str(registry),
        "DIGITSERVE_MODELS": "cnn,vit",
        "DIGITSERVE_ALIAS": "production",
        "DIGITSERVE_MAX_IMAGES": str(MAX_IMAGES),
        "DIGITSERVE_MAX_BODY_BYTES": str(MAX_BODY_BYTES),
        "DIGITSERVE_RUNTIME_THREADS": "1",
        "DIGITSERVE_CACHE_DIR": str(tmp / "cache"),
        "DIGITSERVE_ADMIN_TOKEN": "",
    }
    with running_server(env, log_path=tmp / "server.log") as url:
        yield url


@pytest.fixture(scope="module")
def client(base_url: str) -> Iterator[triton.InferenceServerClient]:
    with triton.InferenceServerClient(base_url.removeprefix("http://")) as c:
        yield c


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    return load_mnist("test").images[:N]  # (N, 28, 28) uint8


def reference_probs(registry: Path, model: str, version: int, images: np.ndarray) -> np.ndarray:
    """The probabilities the published weights give for `images`, computed here, with the
    temperature the version's manifest records (what the server applies)."""
    manifest, module = load_network(ModelRegistry.open(str(registry)), model, version)
    temperature = manifest.extra["calibration"]["temperature"]
    return torch.softmax(predict_logits(module, images) / temperature, dim=1).numpy()


def v1_predict(base_url: str, pngs: list[bytes], **extra: Any) -> list[dict[str, Any]]:
    body = {"images": [base64.b64encode(p).decode() for p in pngs], **extra}
    response = httpx.post(f"{base_url}/v1/models/cnn/predict", json=body, timeout=60)
    assert response.status_code == 200, response.text
    return list(response.json()["predictions"])


def tensor(name: str, array: np.ndarray, datatype: str, binary: bool = True) -> triton.InferInput:
    return triton.InferInput(name, list(array.shape), datatype).set_data_from_numpy(array, binary_data=binary)


def check_outputs(result: triton.InferResult, expected: np.ndarray, threshold: float | None = None) -> None:
    """Probabilities as computed here; `label` their argmax, or -1 where `is_digit` is false."""
    probs, labels = result.as_numpy("probabilities"), result.as_numpy("label")
    assert probs.dtype == np.float32 and probs.shape == expected.shape
    np.testing.assert_allclose(probs, expected, atol=1e-5)
    is_digit = result.as_numpy("is_digit")
    if is_digit is not None:
        assert is_digit.dtype == np.bool_ and is_digit.shape == (len(probs),)
        if threshold is not None:
            assert is_digit.tolist() == (probs.max(axis=1) >= threshold).tolist()
        assert labels.tolist() == np.where(is_digit, probs.argmax(axis=1), -1).tolist()
    else:
        assert labels.dtype == np.int64 and labels.tolist() == probs.argmax(axis=1).tolist()


# --- tritonclient ----------------------------------------------------------------------------


def test_health_and_readiness(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("cnn") and client.is_model_ready("vit") and client.is_model_ready("cnn", "1")
    assert not client.is_model_ready("nope")


def test_server_and_model_metadata(client: triton.InferenceServerClient) -> None:
    server = client.get_server_metadata()
    assert server["name"] == "digitserve" and server["version"] == __version__
    assert "binary_tensor_data" in server["extensions"]
    cnn = client.get_model_metadata("cnn")
    assert cnn["name"] == "cnn" and cnn["versions"] == ["1", "2"] and cnn["platform"] == "onnxruntime_onnx"
    assert cnn["inputs"] == [
        {"name": "pixels", "datatype": "UINT8", "shape": [-1, 28, 28]},
        {"name": "images", "datatype": "BYTES", "shape": [-1]},
    ]
    assert cnn["outputs"] == [
        {"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]},
        {"name": "label", "datatype": "INT64", "shape": [-1]},
        {"name": "is_digit", "datatype": "BOOL", "shape": [-1]},
    ]
    assert client.get_model_metadata("vit")["versions"] == ["1"]
    assert client.get_model_metadata("cnn", "2")["versions"] == ["2"]
    with pytest.raises(InferenceServerException) as info:
        client.get_model_metadata("cnn", "7")
    assert info.value.status() == "404"


PIXEL_FORMS = [  # (model, datatype, shape after N, binary input)
    ("cnn", "UINT8", (28, 28), True),
    ("vit", "UINT8", (28, 28), False),
    ("cnn", "FP32", (1, 28, 28), False),
    ("vit", "FP32", (1, 28, 28), True),
    ("cnn", "FP32", (784,), True),
    ("vit", "FP32", (784,), False),
]


@pytest.mark.parametrize(("model", "datatype", "dims", "binary"), PIXEL_FORMS)
def test_pixel_inputs(
    client: triton.InferenceServerClient,
    registry: Path,
    digits: np.ndarray,
    model: str,
    datatype: str,
    dims: tuple[int, ...],
    binary: bool,
) -> None:
    pixels = digits.reshape(N, *dims)
    array = pixels if datatype == "UINT8" else (pixels / np.float32(255)).astype(np.float32)
    result = client.infer(model, [tensor("pixels", array, datatype, binary)])  # outputs: all, binary
    response = result.get_response()
    assert response["model_name"] == model and response["model_version"] == "1"
    assert [o["parameters"]["binary_data_size"] for o in response["outputs"]] == [N * 10 * 4, N * 8, N]
    threshold = ModelRegistry.open(str(registry)).manifest(model, 1).extra["not_a_digit"]["threshold"]
    check_outputs(result, reference_probs(registry, model, 1, digits), threshold)


@pytest.mark.parametrize("binary", [True, False], ids=["binary-raw-bytes", "json-base64"])
def test_png_images_match_v1(
    client: triton.InferenceServerClient, base_url: str, digits: np.ndarray, binary: bool
) -> None:
    pngs = [png_bytes(d) for d in digits]
    data = np.array(pngs if binary else [base64.b64encode(p).decode() for p in pngs], dtype=object)
    result = client.infer("cnn", [tensor("images", data, "BYTES", binary)])
    v1 = np.array([p["probabilities"] for p in v1_predict(base_url, pngs)], dtype=np.float32)
    check_outputs(result, v1)


def test_pixels_match_v1_on_the_image_v1_fed_the_model(
    client: triton.InferenceServerClient, base_url: str, digits: np.ndarray
) -> None:
    v1 = v1_predict(base_url, [png_bytes(d) for d in digits], return_input=True)
    seen = np.stack([np.asarray(Image.open(io.BytesIO(base64.b64decode(p["model_input"])))) for p in v1])
    result = client.infer("cnn", [tensor("pixels", seen.astype(np.uint8), "UINT8")])
    check_outputs(result, np.array([p["probabilities"] for p in v1], dtype=np.float32))


def test_json_outputs_subset_order_and_id(client: triton.InferenceServerClient, digits: np.ndarray) -> None:
    wanted = [triton.InferRequestedOutput("label", binary_data=False), triton.InferRequestedOutput("probabilities")]
    result = client.infer("cnn", [tensor("pixels", digits, "UINT8")], outputs=wanted, request_id="req-42")
    response = result.get_response()
    assert response["id"] == "req-42"
    assert [o["name"] for o in response["outputs"]] == ["label", "probabilities"]
    assert "data" in response["outputs"][0] and response["outputs"][1]["parameters"]["binary_data_size"] == N * 40
    assert result.as_numpy("label").tolist() == result.as_numpy("probabilities").argmax(axis=1).tolist()
    only = client.infer("cnn", [tensor("pixels", digits, "UINT8")], outputs=[triton.InferRequestedOutput("label")])
    assert [o["name"] for o in only.get_response()["outputs"]] == ["label"] and only.as_numpy("probabilities") is None
    assert only.as_numpy("label").tolist() == result.as_numpy("label").tolist()


def test_version_pinned_infer(client: triton.InferenceServerClient, registry: Path, digits: np.ndarray) -> None:
    assert not client.is_model_ready("cnn", "2")  # not loaded until an infer names it
    result = client.infer("cnn", [tensor("pixels", digits, "UINT8")], model_version="2")
    assert result.get_response()["model_version"] == "2"
    v2 = reference_probs(registry, "cnn", 2, digits)
    check_outputs(result, v2)
    assert np.abs(v2 - reference_probs(registry, "cnn", 1, digits)).max() > 1e-3  # really another version
    assert client.is_model_ready("cnn", "2")


def test_classification_and_gzip(client: triton.InferenceServerClient, registry: Path, digits: np.ndarray) -> None:
    wanted = [triton.InferRequestedOutput("probabilities", class_count=3)]
    inputs = [tensor("pixels", digits, "UINT8")]
    result = client.infer("vit", inputs, outputs=wanted, request_compression_algorithm="gzip")
    top = result.as_numpy("probabilities")
    assert top.shape == (N, 3)
    expected = reference_probs(registry, "vit", 1, digits)
    for row, probs in zip(top, expected, strict=True):
        scores = [(float(p), int(c)) for p, c in (item.decode().split(":") for item in row)]
        np.testing.assert_allclose([p for p, _ in scores], np.sort(probs)[::-1][:3], atol=1e-5)  # the top 3
        np.testing.assert_allclose([probs[c] for _, c in scores], [p for p, _ in scores], atol=1e-5)  # their classes


def mismatched(name: str, array: np.ndarray, datatype: str, shape: list[int], binary: bool) -> triton.InferInput:
    return tensor(name, array, datatype, binary).set_shape(shape)


ZEROS = np.zeros((2, 28, 28), np.uint8)
BAD_INFERS: dict[str, tuple[str, str, list[Any], list[Any] | None, int]] = {  # model, version, inputs, outputs, status
    "wrong datatype": ("cnn", "", [tensor("pixels", ZEROS.astype(np.int32), "INT32")], None, 422),
    "wrong shape": ("cnn", "", [tensor("pixels", np.zeros((2, 28, 27), np.uint8), "UINT8")], None, 422),
    "binary size mismatch": ("cnn", "", [mismatched("pixels", ZEROS, "UINT8", [3, 28, 28], True)], None, 422),
    "data length mismatch": ("cnn", "", [mismatched("pixels", ZEROS, "UINT8", [3, 28, 28], False)], None, 422),
    "FP32 out of range": ("cnn", "", [tensor("pixels", np.full((1, 784), 1.5, np.float32), "FP32")], None, 422),
    "FP32 NaN": ("cnn", "", [tensor("pixels", np.full((1, 784), np.nan, np.float32), "FP32")], None, 422),
    "unknown input": ("cnn", "", [tensor("x", ZEROS, "UINT8")], None, 422),
    "images not BYTES": ("cnn", "", [tensor("images", ZEROS, "UINT8")], None, 422),
    "not an image": ("cnn", "", [tensor("images", np.array([b"hello"], dtype=object), "BYTES")], None, 422),
    "too many images": ("cnn", "", [tensor("pixels", np.zeros((MAX_IMAGES + 1, 784), np.uint8), "UINT8")], None, 413),
    "unknown output": ("cnn", "", [tensor("pixels", ZEROS, "UINT8")], [triton.InferRequestedOutput("logits")], 422),
    "unknown model": ("nope", "", [tensor("pixels", ZEROS, "UINT8")], None, 404),
    "unknown version": ("cnn", "9", [tensor("pixels", ZEROS, "UINT8")], None, 404),
}


@pytest.mark.parametrize("case", BAD_INFERS, ids=list(BAD_INFERS))
def test_bad_infer_is_a_clear_4xx(client: triton.InferenceServerClient, case: str) -> None:
    model, version, inputs, outputs, status = BAD_INFERS[case]
    with pytest.raises(InferenceServerException) as info:
        client.infer(model, inputs, model_version=version, outputs=outputs)
    assert info.value.status() == str(status), info.value.message()
    assert "decoding the response" not in info.value.message()  # the body was {"error": ...}


# --- raw HTTP, as in the protocol's examples ------------------------------------------------


def test_protocol_json_example(base_url: str, digits: np.ndarray, registry: Path) -> None:
    """A plain JSON request: nested data, one requested output, id echoed."""
    body = {
        "id": "42",
        "inputs": [{"name": "pixels", "shape": [2, 28, 28], "datatype": "UINT8", "data": digits[:2].tolist()}],
        "outputs": [{"name": "label"}],
    }
    response = httpx.post(f"{base_url}/v2/models/cnn/infer", json=body, timeout=60)
    assert response.status_code == 200 and response.headers["content-type"] == "application/json"
    labels = reference_probs(registry, "cnn", 1, digits[:2]).argmax(axis=1).tolist()
    assert response.json() == {
        "model_name": "cnn",
        "model_version": "1",
        "id": "42",
        "outputs": [{"name": "label", "shape": [2], "datatype": "INT64", "data": labels}],
    }


def test_protocol_binary_example(base_url: str, digits: np.ndarray, registry: Path) -> None:
    """The binary tensor data extension, framed by hand: JSON header, then the tensor bytes."""
    head = (
        b'{"inputs":[{"name":"pixels","shape":[2,784],"datatype":"UINT8","parameters":{"binary_data_size":1568}}],'
        b'"outputs":[{"name":"probabilities","parameters":{"binary_data":true}}]}'
    )
    response = httpx.post(
        f"{base_url}/v2/models/vit/versions/1/infer",
        content=head + digits[:2].tobytes(),
        headers={"Inference-Header-Content-Length": str(len(head)), "Content-Type": "application/octet-stream"},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    size = int(response.headers["Inference-Header-Content-Length"])
    header = httpx.Response(200, content=response.content[:size]).json()
    assert header["outputs"] == [
        {"name": "probabilities", "shape": [2, 10], "datatype": "FP32", "parameters": {"binary_data_size": 80}}
    ]
    probs = np.frombuffer(response.content[size:], dtype="<f4").reshape(2, 10)
    np.testing.assert_allclose(probs, reference_probs(registry, "vit", 1, digits[:2]), atol=1e-5)


def test_health_endpoints(base_url: str) -> None:
    for path in ("/v2/health/live", "/v2/health/ready", "/v2/models/cnn/ready", "/v2/models/vit/versions/1/ready"):
        assert httpx.get(base_url + path).status_code == 200, path
    for path, status in (("/v2/models/cnn/versions/abc/ready", 404), ("/v2/models/cnn/versions/9", 404)):
        response = httpx.get(base_url + path)
        assert response.status_code == status and "error" in response.json(), path


def pixels_body(data: Any, shape: list[Any] | None = None, datatype: str = "UINT8", **extra: Any) -> dict[str, Any]:
    return {"inputs": [{"name": "pixels", "shape": shape or [1, 784], "datatype": datatype, "data": data}], **extra}


def images_body(data: Any, **parameters: Any) -> dict[str, Any]:
    return {"inputs": [{"name": "images", "shape": [len(data)], "datatype": "BYTES", "data": data, **parameters}]}


JSON_HEADER = {"Content-Type": "application/json"}
VALID_HEAD = json.dumps(pixels_body([0] * 784)).encode()
RAW_BAD: dict[str, tuple[bytes | dict[str, Any] | list[Any], dict[str, str], int]] = {
    "not JSON": (b"{inputs:", JSON_HEADER, 422),
    "JSON array": ([1, 2], JSON_HEADER, 422),
    "no inputs": ({"inputs": []}, JSON_HEADER, 422),
    "shape of strings": (pixels_body([0] * 784, shape=["1", "784"]), JSON_HEADER, 422),
    "UINT8 value 300": (pixels_body([300] * 784), JSON_HEADER, 422),
    "UINT8 negative": (pixels_body([-1] * 784), JSON_HEADER, 422),
    "booleans": (pixels_body([True] * 784), JSON_HEADER, 422),
    "strings": (pixels_body(["0"] * 784), JSON_HEADER, 422),
    "ragged nesting": (pixels_body([[0] * 783, [0]], shape=[1, 784]), JSON_HEADER, 422),
    "negative batch": (pixels_body([], shape=[-1, 784]), JSON_HEADER, 422),
    "empty batch": (pixels_body([], shape=[0, 784]), JSON_HEADER, 422),
    "two inputs": ({"inputs": [*pixels_body([0] * 784)["inputs"]] * 2}, JSON_HEADER, 422),
    "no data": ({"inputs": [{"name": "pixels", "shape": [1, 784], "datatype": "UINT8"}]}, JSON_HEADER, 422),
    "invalid base64": (images_body(["not base64!"]), JSON_HEADER, 422),
    "image as number": (images_body([5]), JSON_HEADER, 422),
    "shared memory": (images_body(["aGk="], parameters={"shared_memory_region": "r"}), JSON_HEADER, 422),
    "binary_data_output not bool": (pixels_body([0] * 784, parameters={"binary_data_output": "yes"}), {}, 422),
    "classification on label": (
        pixels_body([0] * 784, outputs=[{"name": "label", "parameters": {"classification": 2}}]),
        JSON_HEADER,
        422,
    ),
    "output twice": (pixels_body([0] * 784, outputs=[{"name": "label"}, {"name": "label"}]), {}, 422),
    "header length past the body": (pixels_body([0] * 784), {"Inference-Header-Content-Length": "999999"}, 422),
    "header length not a number": (pixels_body([0] * 784), {"Inference-Header-Content-Length": "12a"}, 422),
    "bytes but no binary_data_size": (
        VALID_HEAD + bytes(16),
        {"Inference-Header-Content-Length": str(len(VALID_HEAD))},
        422,
    ),
    "gzip garbage": (b"not gzip", {"Content-Encoding": "gzip"}, 422),
    "brotli": (b"{}", {"Content-Encoding": "br"}, 415),
    "body over the cap": (bytes(MAX_BODY_BYTES + 1), {}, 413),
}


@pytest.mark.parametrize("case", RAW_BAD, ids=list(RAW_BAD))
def test_raw_bad_request_is_a_clear_4xx(base_url: str, case: str) -> None:
    body, headers, status = RAW_BAD[case]
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = httpx.post(f"{base_url}/v2/models/cnn/infer", content=content, headers=headers, timeout=60)
    assert response.status_code == status, response.text
    error = response.json()
    assert isinstance(error["error"], str) and error["error"] and isinstance(error["code"], str)


def test_binary_bytes_framing_errors(base_url: str) -> None:
    """A BYTES element whose 4-byte length points past the data is refused, naming the element."""
    head = b'{"inputs":[{"name":"images","shape":[1],"datatype":"BYTES","parameters":{"binary_data_size":8}}]}'
    tail = struct.pack("<I", 100) + b"abcd"
    response = httpx.post(
        f"{base_url}/v2/models/cnn/infer",
        content=head + tail,
        headers={"Inference-Header-Content-Length": str(len(head))},
    )
    assert response.status_code == 422 and "images[0]" in response.json()["error"]
