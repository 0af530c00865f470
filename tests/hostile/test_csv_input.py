"""The 28x28 pixel CSV over HTTP, against a real server: in JSON (`csv`), as a multipart file, and
as a text/csv body; and the CSVs a hostile client sends, each a 4xx that says what to fix."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from PIL import Image
from support.registries import copy_shipped
from support.server import start_server, stop_server

from digitserve.serving.api.schemas import EXAMPLE_PNG_B64

pytestmark = pytest.mark.slow

SEVEN = np.asarray(Image.open(io.BytesIO(base64.b64decode(EXAMPLE_PNG_B64))).convert("L")).astype(int)
CSV_INTS = "\n".join(",".join(str(v) for v in row) for row in SEVEN)
CSV_FLOATS = "\n".join(",".join(f"{v / 255:.4f}" for v in row) for row in SEVEN)
CSV_HEADER = ",".join(f"pixel{i}" for i in range(784)) + "\n" + ",".join(str(v) for v in SEVEN.ravel())


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    registry = copy_shipped(tmp_path_factory.mktemp("registry"))
    env = {"DIGITSERVE_REGISTRY": registry.uri, "DIGITSERVE_MODELS": "cnn"}
    process, url = start_server(env, log_path=tmp_path_factory.mktemp("logs") / "server.log")
    yield url
    assert stop_server(process) == 0


def post_json(server: str, body: dict[str, object]) -> httpx.Response:
    return httpx.post(f"{server}/v1/models/cnn/predict", json=body, timeout=30)


def test_csv_in_json_is_read_like_the_png(server: str) -> None:
    r = post_json(server, {"images": [EXAMPLE_PNG_B64], "csv": [CSV_INTS, CSV_FLOATS, CSV_HEADER]})
    assert r.status_code == 200, r.text
    predictions = r.json()["predictions"]
    assert [p["label"] for p in predictions] == [7, 7, 7, 7]
    png = predictions[0]["probabilities"]
    for p in predictions[1:]:
        np.testing.assert_allclose(p["probabilities"], png, atol=1e-6)
    only_csv = post_json(server, {"csv": [CSV_INTS]})
    assert only_csv.status_code == 200 and only_csv.json()["predictions"][0]["label"] == 7


def test_csv_uploads(server: str) -> None:
    files = [
        ("files", ("seven.csv", CSV_INTS.encode(), "text/csv")),
        ("files", ("seven.png", base64.b64decode(EXAMPLE_PNG_B64), "image/png")),
    ]
    r = httpx.post(f"{server}/v1/models/cnn/predict/upload", files=files, timeout=30)
    assert r.status_code == 200 and [p["label"] for p in r.json()["predictions"]] == [7, 7], r.text
    body = httpx.post(
        f"{server}/v1/models/cnn/predict/upload",
        content=CSV_FLOATS.encode(),
        headers={"Content-Type": "text/csv; charset=utf-8"},
        timeout=30,
    )
    assert body.status_code == 200 and body.json()["predictions"][0]["label"] == 7, body.text


def row_of(value: str) -> str:
    return "\n".join(",".join([value] + ["0"] * 27) for _ in range(28))


@pytest.mark.parametrize(
    ("csv", "status", "message"),
    [
        (row_of("300"), 422, "csv[0]: row 1, column 1 of the CSV values is 300; whole-number values must be 0-255"),
        (row_of("-5"), 422, "whole-number values must be 0-255"),
        (row_of("2.5"), 422, "values with a decimal point must be 0-1"),
        (row_of("1e999"), 422, "not a number"),
        (row_of("NaN"), 422, "not a number"),
        ("\n".join(["0," * 27 + "0"] * 27), 422, "27 rows of values"),
        ("0,0\n0,0", 422, "2 rows of values"),
        ("no commas here", 422, "csv[0] is not CSV text"),
        ("\x00\x01,\x02", 422, "csv[0] is not CSV text"),
        ("0," * 40000, 413, "byte limit for one 28x28 CSV"),
        ("\n" * 70000 + "0,0", 413, "byte limit"),
    ],
    ids=["256+", "negative", "float>1", "1e999", "nan", "27-rows", "2x2", "no-commas", "binary", "huge", "newlines"],
)
def test_hostile_csv_in_json(server: str, csv: str, status: int, message: str) -> None:
    r = post_json(server, {"csv": [csv]})
    assert r.status_code == status and message in r.json()["error"], r.text


@pytest.mark.parametrize(
    ("content", "content_type", "status", "message"),
    [
        (base64.b64decode(EXAMPLE_PNG_B64), "text/csv", 422, "not CSV text"),  # a PNG labelled CSV
        (b"0," * 40000, "text/csv", 413, "byte limit"),
        (b"\xff\xfe0,0,0", "text/csv", 422, "not CSV text"),
        (b"", "text/csv", 422, "not CSV text"),
        (CSV_INTS.encode(), "text/plain", 415, "text/csv"),
    ],
    ids=["png", "huge", "utf16", "empty", "text-plain"],
)
def test_hostile_csv_bodies(server: str, content: bytes, content_type: str, status: int, message: str) -> None:
    r = httpx.post(
        f"{server}/v1/models/cnn/predict/upload", content=content, headers={"Content-Type": content_type}, timeout=30
    )
    assert r.status_code == status and message in r.json()["error"], r.text


def test_a_bad_csv_file_among_uploads_is_named(server: str) -> None:
    files = [
        ("files", ("good.csv", CSV_INTS.encode(), "text/csv")),
        ("files", ("bad.csv", row_of("999").encode(), "text/csv")),
    ]
    r = httpx.post(f"{server}/v1/models/cnn/predict/upload", files=files, timeout=30)
    assert r.status_code == 422, r.text
    assert "files[1] (bad.csv): row 1, column 1 of the CSV values is 999" in r.json()["error"]
    assert httpx.get(f"{server}/healthz", timeout=30).status_code == 200
