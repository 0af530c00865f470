"""Property-based hostile input against a real server: whatever a client sends, the answer is a 4xx
JSON error (or a 200 when the input happens to be a readable digit), never a 5xx, and the server
answers the next good request. Covers /v1 JSON, /v1 multipart and /v2 infer: random bytes, any
JSON value, truncated, mutated and lying images, odd unicode, huge numbers, deep nesting, wrong
content types and encodings. `DIGITSERVE_FUZZ_EXAMPLES` sets the examples per property.
"""

from __future__ import annotations

import base64
import gzip
import io
import json
import os
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from support.hostile import assert_healthy, png_with_header, v2_images
from support.registries import copy_shipped
from support.server import start_server, stop_server

from digitserve.config import MiB
from digitserve.serving.api.schemas import EXAMPLE_PNG_B64

pytestmark = pytest.mark.slow

EXAMPLES = int(os.environ.get("DIGITSERVE_FUZZ_EXAMPLES", "120"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large],
)
MAX_IMAGES = 8
PATHS = ["/v1/models/cnn/predict", "/v1/models/cnn/predict/upload", "/v2/models/cnn/infer"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    registry = copy_shipped(tmp_path_factory.mktemp("registry"))
    log = tmp_path_factory.mktemp("logs") / "server.log"
    env = {
        "DIGITSERVE_REGISTRY": registry.uri,
        "DIGITSERVE_MODELS": "cnn",
        "DIGITSERVE_POLL_SECONDS": "3600",
        "DIGITSERVE_MAX_BODY_BYTES": str(MiB),
        "DIGITSERVE_MAX_IMAGES": str(MAX_IMAGES),
        "DIGITSERVE_MAX_IMAGE_PIXELS": "4000000",
    }
    process, url = start_server(env, log_path=log)
    yield url, log
    assert stop_server(process) == 0
    text = log.read_text(errors="replace")
    assert "Traceback" not in text and "unexpected error" not in text, text[-3000:]


@pytest.fixture(scope="module")
def client(server: tuple[str, Path]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server[0], timeout=60) as c:
        yield c


@pytest.fixture(autouse=True)
def still_healthy(server: tuple[str, Path]) -> Iterator[None]:
    yield
    assert_healthy(server[0])


# uvicorn's HTTP parser refuses a malformed request (e.g. bytes a header may not hold) in plain
# text, before any application code runs.
HTTP_PARSER_REFUSAL = (400, "Invalid HTTP request received.")


def assert_clean_answer(r: httpx.Response) -> None:
    """A 200, or a 4xx whose JSON body says what is wrong; never a 5xx."""
    assert r.status_code < 500, f"{r.status_code} for {r.request.method} {r.request.url}: {r.text[:500]}"
    if (r.status_code, r.text) == HTTP_PARSER_REFUSAL:
        return
    if r.status_code >= 400:
        assert r.headers.get("content-type") == "application/json", f"{r.status_code} {r.headers}: {r.text[:300]}"
        body = r.json()
        assert isinstance(body["error"], str) and body["error"], body
        assert isinstance(body["code"], str) and body["code"], body
    else:
        assert r.status_code == 200


# --- strategies -----------------------------------------------------------------------------


def _encode(fmt: str) -> bytes:
    seven = Image.open(io.BytesIO(base64.b64decode(EXAMPLE_PNG_B64)))
    buf = io.BytesIO()
    seven.convert("RGB" if fmt == "JPEG" else "L").save(buf, format=fmt)
    return buf.getvalue()


VALID = {fmt: _encode(fmt) for fmt in ("PNG", "JPEG", "WEBP", "BMP", "GIF")}
MAGIC = [b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xe0", b"GIF89a", b"BM", b"RIFF\x00\x00\x00\x00WEBPVP8 ", b"II*\x00"]

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=10**18, max_value=10**400)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text()
)
json_values = st.recursive(
    json_scalars, lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5)
)


@st.composite
def image_bytes(draw: st.DrawFn) -> bytes:
    """Valid, truncated, mutated, lying-header and random images."""
    kind = draw(st.sampled_from(["valid", "truncated", "mutated", "lying png", "magic + random", "random"]))
    if kind == "random":
        return draw(st.binary(max_size=512))
    if kind == "magic + random":
        return draw(st.sampled_from(MAGIC)) + draw(st.binary(max_size=512))
    if kind == "lying png":
        width, height = draw(st.integers(0, 2**31 - 1) | st.integers(0, 64)), draw(st.integers(0, 2**31 - 1))
        small = width <= 64 and height <= 64  # small enough to write every row: a complete image
        idat = None if small and draw(st.booleans()) else draw(st.binary(max_size=64))
        return png_with_header(width, height, idat, draw(st.sampled_from([0, 2, 4, 6])))
    data = VALID[draw(st.sampled_from(sorted(VALID)))]
    if kind == "truncated":
        return data[: draw(st.integers(0, len(data) - 1))]
    if kind == "mutated":
        mutable = bytearray(data)
        for _ in range(draw(st.integers(1, 8))):
            mutable[draw(st.integers(0, len(mutable) - 1))] = draw(st.integers(0, 255))
        return bytes(mutable)
    return data


@st.composite
def image_texts(draw: st.DrawFn) -> str:
    """What a client might put in an `images` string: base64 in many guises, or any text."""
    b64 = base64.b64encode(draw(image_bytes())).decode()
    return draw(
        st.sampled_from(
            [
                b64,
                "data:image/png;base64," + b64,
                "data:;base64," + b64,
                b64.rstrip("="),
                b64[: len(b64) // 2],
                "\n".join(b64[i : i + 76] for i in range(0, len(b64), 76)),
                base64.urlsafe_b64encode(base64.b64decode(b64)).decode(),
            ]
        )
        | st.text(max_size=64)
    )


def dumps(value: Any, ascii_only: bool) -> bytes:
    return json.dumps(value, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


# --- /v1 JSON ---------------------------------------------------------------------------------


@FUZZ
@given(body=json_values, ascii_only=st.booleans())
def test_predict_json_any_json_value(client: httpx.Client, body: Any, ascii_only: bool) -> None:
    r = client.post(PATHS[0], content=dumps(body, ascii_only), headers={"Content-Type": "application/json"})
    assert_clean_answer(r)


@FUZZ
@given(
    images=st.lists(image_texts(), min_size=1, max_size=4) | json_values,
    top_k=st.integers(-3, 12) | json_values,
    extra=st.dictionaries(st.sampled_from(["return_input", "model", "x"]), json_values, max_size=2),
)
def test_predict_json_hostile_images(client: httpx.Client, images: Any, top_k: Any, extra: dict[str, Any]) -> None:
    body = dumps({"images": images, "top_k": top_k, **extra}, ascii_only=True)  # NaN and Infinity included
    r = client.post(PATHS[0], content=body, headers={"Content-Type": "application/json"})
    assert_clean_answer(r)


@FUZZ
@given(depth=st.integers(1, 200_000), opener=st.sampled_from([b"[", b'{"a":', b'{"images":[']))
def test_deep_nesting(client: httpx.Client, depth: int, opener: bytes) -> None:
    body = opener * depth
    for path in (PATHS[0], PATHS[2]):
        assert_clean_answer(client.post(path, content=body, headers={"Content-Type": "application/json"}))


# --- any body, any content type, every endpoint ---------------------------------------------

CONTENT_TYPES = [
    "application/json",
    "application/json; charset=utf-16",
    "application/octet-stream",
    "multipart/form-data",
    "multipart/form-data; boundary=",
    "multipart/form-data; boundary=xyz",
    "multipart/mixed; boundary=xyz",
    "application/x-www-form-urlencoded",
    "text/plain",
    "image/png",
    "",
]


@FUZZ
@given(
    path=st.sampled_from(PATHS),
    content_type=st.sampled_from(CONTENT_TYPES)
    | st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126)).map(str.strip),
    body=st.binary(max_size=2048) | image_bytes(),
    encoding=st.sampled_from([None, "gzip", "deflate", "br", "identity", "gzip, gzip"]),
)
def test_random_bytes_and_content_types(
    client: httpx.Client, path: str, content_type: str, body: bytes, encoding: str | None
) -> None:
    headers = {"Content-Type": content_type}
    if encoding:
        headers["Content-Encoding"] = encoding
    assert_clean_answer(client.post(path, content=body, headers=headers))


# --- /v1 multipart ----------------------------------------------------------------------------

header_text = st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=40)


@st.composite
def multipart_bodies(draw: st.DrawFn) -> tuple[bytes, str]:
    """A multipart body built by hand, so names, file names and part headers can be anything."""
    boundary = draw(st.text(alphabet="abcdefghijklmnop0123456789-'()+_,./:=?", min_size=1, max_size=70))
    parts = []
    for _ in range(draw(st.integers(0, 5))):
        name = draw(st.sampled_from(["files", "file", "images"]) | header_text)
        head = f'Content-Disposition: form-data; name="{name}"'
        if draw(st.booleans()):
            head += f'; filename="{draw(header_text)}"'
        if draw(st.booleans()):
            head += f"\r\nContent-Type: {draw(st.sampled_from(['image/png', 'text/plain']) | header_text)}"
        parts.append(b"--" + boundary.encode() + b"\r\n" + head.encode("utf-8") + b"\r\n\r\n" + draw(image_bytes()))
    body = b"\r\n".join(parts) + (b"\r\n--" + boundary.encode() + b"--\r\n" if draw(st.booleans()) else b"")
    return body, boundary


@FUZZ
@given(case=multipart_bodies(), quoted=st.booleans())
def test_upload_hostile_multipart(client: httpx.Client, case: tuple[bytes, str], quoted: bool) -> None:
    body, boundary = case
    content_type = (
        f'multipart/form-data; boundary="{boundary}"' if quoted else f"multipart/form-data; boundary={boundary}"
    )
    assert_clean_answer(client.post(PATHS[1], content=body, headers={"Content-Type": content_type}))


@FUZZ
@given(files=st.lists(st.tuples(image_bytes(), header_text), min_size=1, max_size=MAX_IMAGES + 2))
def test_upload_hostile_files(client: httpx.Client, files: list[tuple[bytes, str]]) -> None:
    upload = [("files", (name or "x", data, "image/png")) for data, name in files]
    assert_clean_answer(client.post(PATHS[1], files=upload))


# --- /v2 infer --------------------------------------------------------------------------------

dims = st.integers(-2, 40) | st.integers(min_value=2**31, max_value=2**70) | st.sampled_from([28, 784, 1])


@st.composite
def infer_inputs(draw: st.DrawFn) -> dict[str, Any]:
    name = draw(st.sampled_from(["pixels", "images"]) | st.text(max_size=8))
    tensor: dict[str, Any] = {
        "name": name,
        "shape": draw(st.lists(dims, max_size=4) | json_values),
        "datatype": draw(st.sampled_from(["UINT8", "FP32", "BYTES", "INT64", "FP16"]) | json_values),
    }
    if draw(st.booleans()):
        tensor["data"] = draw(
            st.lists(image_texts(), max_size=3)
            | st.lists(st.integers(-1, 300) | st.floats(), max_size=1600)
            | st.lists(st.lists(st.integers(0, 255), max_size=30), max_size=30)
            | json_values
        )
    if draw(st.booleans()):
        tensor["parameters"] = draw(
            st.dictionaries(st.sampled_from(["binary_data_size", "binary_data", "shared_memory_region"]), json_scalars)
        )
    return tensor


@st.composite
def infer_requests(draw: st.DrawFn) -> tuple[bytes, dict[str, str]]:
    doc: dict[str, Any] = {"inputs": draw(st.lists(infer_inputs(), max_size=2) | json_values)}
    if draw(st.booleans()):
        doc["outputs"] = draw(
            st.lists(
                st.fixed_dictionaries(
                    {"name": st.sampled_from(["label", "probabilities", "logits"])},
                    optional={
                        "parameters": st.dictionaries(st.sampled_from(["binary_data", "classification"]), json_scalars)
                    },
                ),
                max_size=3,
            )
            | json_values
        )
    if draw(st.booleans()):
        doc["id"], doc["parameters"] = draw(json_values), draw(st.dictionaries(st.text(max_size=8), json_scalars))
    head = dumps(doc, draw(st.booleans()))
    tail = draw(st.binary(max_size=256) | st.builds(lambda n: struct.pack("<I", n), st.integers(0, 2**32 - 1)))
    headers: dict[str, str] = {"Content-Type": "application/json"}
    body = head
    if draw(st.booleans()):
        body = head + tail
        length = draw(
            st.sampled_from([str(len(head)), "0", "-1", str(len(body) + 1), "1e3", "٣"]) | st.text(max_size=6)
        )
        headers["Inference-Header-Content-Length"] = length
    if draw(st.booleans()):
        body, headers["Content-Encoding"] = gzip.compress(body), "gzip"
    return body, headers


@FUZZ
@given(case=infer_requests(), versioned=st.booleans())
def test_v2_infer_hostile_requests(client: httpx.Client, case: tuple[bytes, dict[str, str]], versioned: bool) -> None:
    body, headers = case
    path = "/v2/models/cnn/versions/1/infer" if versioned else PATHS[2]
    try:  # header values as UTF-8 bytes: a Unicode digit is as good a lie as any
        r = client.post(path, content=body, headers={k: v.encode() for k, v in headers.items()})
    except httpx.LocalProtocolError:  # a header value the client itself will not send
        return
    assert_clean_answer(r)


@FUZZ
@given(images=st.lists(image_bytes(), min_size=1, max_size=4))
def test_v2_binary_bytes_tensors(client: httpx.Client, images: list[bytes]) -> None:
    """The binary BYTES framing: each element a 4-byte length and the bytes, as tritonclient sends."""
    blob = b"".join(struct.pack("<I", len(x)) + x for x in images)
    tensor = {
        "name": "images",
        "shape": [len(images)],
        "datatype": "BYTES",
        "parameters": {"binary_data_size": len(blob)},
    }
    head = json.dumps({"inputs": [tensor]}).encode()
    r = client.post(PATHS[2], content=head + blob, headers={"Inference-Header-Content-Length": str(len(head))})
    assert_clean_answer(r)
    assert_clean_answer(client.post(PATHS[2], json=v2_images([base64.b64encode(x).decode() for x in images])))


# --- odd paths and query strings --------------------------------------------------------------


@FUZZ
@given(
    model=st.text(min_size=1, max_size=20).filter(lambda s: "/" not in s and "?" not in s and "#" not in s),
    query=st.dictionaries(st.sampled_from(["version", "alias", "top_k", "return_input"]), st.text(max_size=30)),
)
def test_odd_model_names_and_queries(client: httpx.Client, model: str, query: dict[str, str]) -> None:
    body = {"images": [EXAMPLE_PNG_B64]}
    for method, path in (
        ("POST", f"/v1/models/{model}/predict"),
        ("POST", f"/v2/models/{model}/infer"),
        ("GET", f"/v1/models/{model}"),
        ("GET", f"/v2/models/{model}/ready"),
    ):
        try:
            r = client.request(method, path, params=query, json=body if method == "POST" else None)
        except httpx.InvalidURL:
            continue
        assert_clean_answer(r)
