"""The server as a real uvicorn process: load, hot-swap, refused versions, shutdown, bad input."""

from __future__ import annotations

import asyncio
import base64
import io
import re
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image
from support.registries import blob_path, copy_shipped, png_b64, png_bytes, publish_variant
from support.server import metric, start_server, stop_server

from digitserve.data import load_mnist
from digitserve.registry import ModelRegistry

TOKEN = "test-admin-token"


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    test = load_mnist("test")
    return test.images, test.labels


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> ModelRegistry:
    """A copy of the shipped cnn: v1 production, plus v2 (a slightly different version)."""
    reg = copy_shipped(tmp_path_factory.mktemp("registry"))
    assert reg.resolve_alias("cnn", "production") == 1
    assert publish_variant(reg, "cnn", 1) == 2
    return reg


@pytest.fixture(scope="module")
def server(registry: ModelRegistry, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    env = {
        "DIGITSERVE_REGISTRY": registry.uri,
        "DIGITSERVE_MODELS": "cnn",
        "DIGITSERVE_ADMIN_TOKEN": TOKEN,
        "DIGITSERVE_POLL_SECONDS": "3600",
        "DIGITSERVE_MAX_BATCH_DELAY_MS": "5",
    }
    process, url = start_server(env, log_path=tmp_path_factory.mktemp("logs") / "server.log")
    yield url
    assert stop_server(process) == 0


def reload(url: str) -> dict[str, Any]:
    response = httpx.post(f"{url}/v1/admin/reload", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()


async def fire(url: str, bodies: list[dict[str, Any]], concurrency: int) -> list[httpx.Response | Exception]:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:
        tasks = [client.post("/v1/models/cnn/predict", json=b) for b in bodies]
        return await asyncio.gather(*tasks, return_exceptions=True)


# --- load and batching ------------------------------------------------------------------------


@pytest.mark.solo  # 500 requests against the default deadline
def test_500_concurrent_requests_are_all_answered_and_batched(server: str, digits: tuple) -> None:
    images, labels = digits
    before_count = metric(server, "digitserve_batch_size_count", model="cnn")
    before_sum = metric(server, "digitserve_batch_size_sum", model="cnn")
    bodies = [{"images": [png_b64(images[i])]} for i in range(500)]
    answers = asyncio.run(fire(server, bodies, concurrency=500))
    assert all(isinstance(a, httpx.Response) and a.status_code == 200 for a in answers), answers[:3]
    predicted = np.array([a.json()["predictions"][0]["label"] for a in answers])  # type: ignore[union-attr]
    assert (predicted == labels[:500]).mean() >= 0.99
    assert {a.json()["version"] for a in answers} == {1}  # type: ignore[union-attr]
    batches = metric(server, "digitserve_batch_size_count", model="cnn") - before_count
    batched_images = metric(server, "digitserve_batch_size_sum", model="cnn") - before_sum
    assert batched_images == 500 and batched_images / batches > 1


# --- hot-swap ---------------------------------------------------------------------------------


@pytest.mark.solo  # answers counted in fixed windows
def test_alias_move_under_load_switches_versions_without_a_failure(
    server: str, registry: ModelRegistry, digits: tuple
) -> None:
    images, _ = digits
    unpromoted = publish_variant(registry, "cnn", 1, nudge=2e-4)  # exists, never promoted
    results: list[tuple[float, float, int]] = []  # (sent, answered, version)
    errors: list[str] = []
    stop = asyncio.Event()

    async def client_loop(client: httpx.AsyncClient, i: int) -> None:
        while not stop.is_set():
            sent = time.perf_counter()
            r = await client.post("/v1/models/cnn/predict", json={"images": [png_b64(images[i % 100])]})
            if r.status_code != 200:
                errors.append(f"{r.status_code} {r.text}")
            else:
                results.append((sent, time.perf_counter(), r.json()["version"]))

    async def scenario() -> float:
        async with httpx.AsyncClient(base_url=server, timeout=60) as client:
            workers = [asyncio.create_task(client_loop(client, i)) for i in range(16)]
            await asyncio.sleep(1.5)
            moved_at = time.perf_counter()
            await asyncio.to_thread(registry.move_alias, "cnn", "production", 2, reason="test: hot-swap")
            await asyncio.to_thread(reload, server)
            swapped_at = time.perf_counter()
            await asyncio.sleep(1.5)
            stop.set()
            await asyncio.gather(*workers)
            return moved_at, swapped_at

    try:
        moved_at, swapped_at = asyncio.run(scenario())
    finally:
        registry.move_alias("cnn", "production", 1, reason="test: restore")
        reload(server)
    assert errors == []
    versions = [v for _, _, v in results]
    assert set(versions) == {1, 2} and unpromoted not in versions
    after = [v for sent, _, v in results if sent > swapped_at]  # sent once the reload had answered
    before = [v for _, answered, v in results if answered < moved_at]  # answered before the alias moved
    assert len(after) >= 10 and set(after) == {2}, Counter(after)
    assert len(before) >= 10 and set(before) == {1}, Counter(before)


@pytest.mark.parametrize("damage", ["corrupt", "truncated", "missing", "golden"])
def test_a_bad_version_behind_the_alias_never_serves(
    server: str, registry: ModelRegistry, digits: tuple, damage: str
) -> None:
    images, labels = digits
    bad = publish_variant(
        registry, "cnn", 1, nudge=1e-3 * (1 + len(damage)), golden_offset=0.5 if damage == "golden" else 0.0
    )
    blob = blob_path(registry, "cnn", bad)
    if damage == "corrupt":
        data = bytearray(blob.read_bytes())
        data[-100] ^= 0xFF
        blob.write_bytes(bytes(data))
    elif damage == "truncated":
        blob.write_bytes(blob.read_bytes()[:-1000])
    elif damage == "missing":
        blob.unlink()
    failures_before = metric(server, "digitserve_model_reload_failures_total", model="cnn")
    registry.move_alias("cnn", "production", bad, reason=f"test: {damage} blob")
    try:
        result = reload(server)["results"][0]
        assert result["changed"] is False and result["error"]
        info = httpx.get(f"{server}/v1/models/cnn").json()
        assert info["serving"]["version"] == 1 and info["aliases"]["production"] == bad
        expected_step = {"corrupt": "verify", "truncated": "verify", "missing": "verify", "golden": "golden"}[damage]
        assert info["last_reload_error"]["version"] == bad and info["last_reload_error"]["step"] == expected_step
        assert metric(server, "digitserve_model_reload_error", model="cnn") == 1
        assert metric(server, "digitserve_model_reload_failures_total", model="cnn") == failures_before + 1
        r = httpx.post(f"{server}/v1/models/cnn/predict", json={"images": [png_b64(images[0])]})
        assert r.status_code == 200 and r.json()["version"] == 1
        assert r.json()["predictions"][0]["label"] == labels[0]
    finally:
        registry.move_alias("cnn", "production", 1, reason="test: restore")
        reload(server)
    assert metric(server, "digitserve_model_reload_error", model="cnn") == 0


# --- API behaviour ----------------------------------------------------------------------------


def test_prediction_names_model_version_and_top_k(server: str, digits: tuple) -> None:
    images, labels = digits
    data_url = "data:image/png;base64," + png_b64(images[1])
    r = httpx.post(
        f"{server}/v1/models/cnn/predict",
        json={"images": [png_b64(images[0]), data_url], "top_k": 4, "return_input": True},
    )
    assert r.status_code == 200
    body = r.json()
    assert body["model"] == "cnn" and body["version"] == 1 and body["alias"] == "production"
    for pred, label in zip(body["predictions"], labels[:2], strict=True):
        assert pred["label"] == label and len(pred["top_k"]) == 4 and pred["top_k"][0]["label"] == label
        assert abs(sum(pred["probabilities"]) - 1) < 1e-3
        assert Image.open(io.BytesIO(base64.b64decode(pred["model_input"]))).size == (28, 28)


def test_pinned_version_and_alias(server: str, registry: ModelRegistry, digits: tuple) -> None:
    images, _ = digits
    body = {"images": [png_b64(images[0])]}
    pinned = httpx.post(f"{server}/v1/models/cnn/predict?version=2", json=body, timeout=60)
    assert pinned.status_code == 200 and pinned.json()["version"] == 2 and pinned.json()["alias"] is None
    registry.move_alias("cnn", "staging", 2, reason="test")
    staged = httpx.post(f"{server}/v1/models/cnn/predict?alias=staging", json=body, timeout=60)
    assert staged.status_code == 200 and staged.json()["version"] == 2 and staged.json()["alias"] == "staging"
    info = httpx.get(f"{server}/v1/models/cnn").json()
    assert 2 in info["resident_versions"] and info["serving"]["version"] == 1


def test_multipart_upload_of_several_files(server: str, digits: tuple) -> None:
    images, labels = digits
    files = [("files", (f"d{i}.png", png_bytes(images[i]), "image/png")) for i in range(3)]
    r = httpx.post(f"{server}/v1/models/cnn/predict/upload?top_k=2", files=files)
    assert r.status_code == 200, r.text
    assert [p["label"] for p in r.json()["predictions"]] == list(labels[:3])


def _tiff() -> str:
    buf = io.BytesIO()
    Image.new("L", (28, 28)).save(buf, format="TIFF")
    return base64.b64encode(buf.getvalue()).decode()


BAD_JSON_CASES = [
    ("cnn", {"images": ["not base64!!"]}, 422, "not valid base64"),
    ("cnn", {"images": [base64.b64encode(b"hello, not an image").decode()]}, 422, "images[0]"),
    ("cnn", {"images": ["TIFF"]}, 415, "TIFF"),
    ("cnn", {"images": []}, 422, "images"),
    ("cnn", {"images": "abc"}, 422, "images"),
    ("cnn", {"images": ["x"], "top_k": 11}, 422, "top_k"),
    ("cnn", {"imgs": ["x"]}, 422, "images"),
    ("cnn", {"images": ["QUJD"] * 257}, 413, "limit is 256"),
    ("resnet", {"images": ["QUJD"]}, 404, "unknown model 'resnet'"),
]


@pytest.mark.parametrize("model,body,status,message", BAD_JSON_CASES)
def test_bad_input_gets_a_clear_4xx(server: str, model: str, body: dict, status: int, message: str) -> None:
    if body.get("images") == ["TIFF"]:
        body = {"images": [_tiff()]}
    r = httpx.post(f"{server}/v1/models/{model}/predict", json=body)
    assert r.status_code == status, r.text
    assert message in r.json()["error"] and r.json()["code"]


@pytest.mark.parametrize(
    "query,status,message",
    [
        ("?version=99", 404, "no version 99"),
        ("?alias=nope", 404, "no alias 'nope'"),
        ("?version=1&alias=production", 422, "not both"),
        ("?version=0", 422, "version"),
    ],
)
def test_unknown_versions_and_selectors(server: str, digits: tuple, query: str, status: int, message: str) -> None:
    r = httpx.post(f"{server}/v1/models/cnn/predict{query}", json={"images": [png_b64(digits[0][0])]}, timeout=60)
    assert r.status_code == status, r.text
    assert message in r.json()["error"]


def test_malformed_requests_are_4xx_json(server: str) -> None:
    url = f"{server}/v1/models/cnn/predict"
    cases = [
        httpx.post(url, content=b"{not json", headers={"content-type": "application/json"}),
        httpx.post(url, content=b"[1, 2]", headers={"content-type": "application/json"}),
        httpx.post(f"{url}/upload", content=b"plain", headers={"content-type": "text/plain"}),
        httpx.post(f"{url}/upload", files=[("files", ("a.txt", b"no image here", "text/plain"))]),
        httpx.get(url),
        httpx.post(f"{server}/v1/nothing-here", json={}),
    ]
    assert [r.status_code for r in cases] == [422, 422, 415, 422, 405, 404]
    assert all(r.json()["error"] for r in cases)
    assert httpx.get(f"{server}/healthz").status_code == 200


def test_admin_needs_the_token(server: str) -> None:
    assert httpx.post(f"{server}/v1/admin/reload").status_code == 401
    wrong = httpx.post(f"{server}/v1/admin/reload", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and "Bearer" in wrong.json()["error"]


def test_health_docs_and_metrics(server: str) -> None:
    assert httpx.get(f"{server}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{server}/readyz").json()["models"] == {"cnn": 1}
    assert "swagger-ui" in httpx.get(f"{server}/docs").text
    schema = httpx.get(f"{server}/openapi.json").json()
    example = schema["components"]["schemas"]["PredictRequest"]["examples"][0]
    tried = httpx.post(f"{server}/v1/models/cnn/predict", json=example)  # what "Try it out" sends
    assert tried.status_code == 200 and tried.json()["predictions"][0]["label"] == 7
    text = httpx.get(f"{server}/metrics").text
    for name in (
        "digitserve_requests_total",
        "digitserve_request_latency_seconds_bucket",
        "digitserve_queue_depth",
        "digitserve_batch_size_bucket",
        'digitserve_model_version_info{alias="production",model="cnn"',
    ):
        assert name in text, name
    assert re.search(
        r'digitserve_requests_total\{method="POST",route="/v1/models/\{model\}/predict",status="200"\}', text
    )


# --- lifecycle --------------------------------------------------------------------------------


def test_admin_routes_are_off_without_a_token(registry: ModelRegistry, tmp_path: Path) -> None:
    process, url = start_server(
        {"DIGITSERVE_REGISTRY": registry.uri, "DIGITSERVE_MODELS": "cnn", "DIGITSERVE_ADMIN_TOKEN": ""},
        log_path=tmp_path / "s.log",
    )
    try:
        assert httpx.post(f"{url}/v1/admin/reload", headers={"Authorization": "Bearer x"}).status_code == 404
    finally:
        assert stop_server(process) == 0
