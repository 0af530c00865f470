"""POST /v1/feedback against a real server: what is kept, duplicates, limits, live quality, review by the CLI."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image
from support.cli import digitserve, succeeded
from support.feedback import correction, pixels_of, predict_with_input, send, wait_for_samples
from support.photolike import make_photo
from support.registries import copy_shipped, png_bytes
from support.server import metric, model_info, running_server, wait_until

from digitserve.config import Settings
from digitserve.data import load_mnist
from digitserve.registry import ModelRegistry
from digitserve.registry.feedback import FeedbackStore
from digitserve.serving.app import create_app

pytestmark = pytest.mark.slow
PER_MINUTE = 6


@pytest.fixture(scope="module", params=[1, 2], ids=["1 worker", "2 workers"])
def workers(request: pytest.FixtureRequest) -> int:
    """One worker, and the default layout (two here): both workers share one spool and one set of
    rate-limit buckets, so every test below holds for the replica as a whole."""
    return int(request.param)


@pytest.fixture(scope="module")
def registry(workers: int, tmp_path_factory: pytest.TempPathFactory) -> ModelRegistry:
    return copy_shipped(tmp_path_factory.mktemp(f"registry-{workers}"))


@pytest.fixture(scope="module")
def server(workers: int, registry: ModelRegistry, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    env = {
        "DIGITSERVE_REGISTRY": registry.uri,
        "DIGITSERVE_WORKERS": str(workers),
        "FORWARDED_ALLOW_IPS": "127.0.0.1",  # the tests say which client they are
        "DIGITSERVE_MODELS": "cnn",
        "DIGITSERVE_FEEDBACK_PER_MINUTE": str(PER_MINUTE),
        "DIGITSERVE_FEEDBACK_SPOOL_DIR": str(tmp_path_factory.mktemp("spool")),
    }
    with running_server(env, log_path=tmp_path_factory.mktemp("logs") / "server.log") as url:
        yield url


def photo(index: int) -> tuple[bytes, int]:
    test = load_mnist("test")
    return make_photo(test.images[index], np.random.default_rng(index)), int(test.labels[index])


def test_a_correction_keeps_only_the_28x28_input_once(server: str, registry: ModelRegistry) -> None:
    image, label = photo(11)
    answer = predict_with_input(server, image)
    body = correction(answer, label)
    before = quality(server)
    counted = {v: metric(server, "digitserve_feedback_total", version="1", verdict=v) for v in ("right", "wrong")}
    first = send(server, body, client="192.0.2.10")
    assert first.status_code == 201, first.text
    sid = first.json()["id"]
    assert first.json() == {"id": sid, "duplicate": False, "status": "spooled", "review": "pending"}
    # The original photo is preprocessed as the prediction's was: the same input, so the same sample.
    again = send(server, {**body, "image": base64.b64encode(image).decode()}, client="192.0.2.10")
    assert again.status_code == 201 and again.json() == {**first.json(), "duplicate": True}

    store = wait_for_samples(registry, [sid])
    kept = store.sample(sid)
    assert np.array_equal(kept.pixels, pixels_of(body["image"])), "the sample is exactly the model input"
    assert (kept.model, kept.version, kept.label, kept.predicted) == ("cnn", 1, label, body["predicted"])
    doc = json.loads((Path(registry.uri) / "feedback" / "samples" / f"{sid}.json").read_bytes())
    assert set(doc) == {
        "id",
        "model",
        "version",
        "alias",
        "predicted",
        "label",
        "pixels_uint8_b64",
        "shape",
        "received_at",
        "client",
    }
    assert len(base64.b64decode(doc["pixels_uint8_b64"])) == 28 * 28, "the photo itself is never kept"
    now = {v: metric(server, "digitserve_feedback_total", version="1", verdict=v) - counted[v] for v in counted}
    assert now == {"right": int(kept.right), "wrong": int(not kept.right)}, "the duplicate is not counted again"

    views: list[dict[str, Any]] = []  # each worker refreshes its own view: judge one view at a time

    def counted() -> bool:
        views.append(seen := quality(server))
        return bool(seen["samples"] >= before["samples"] + 1 and seen["right"] >= before["right"] + kept.right)

    wait_until(counted, 30, "the sample counted in the listing")
    after = views[-1]
    assert after["accuracy"] == round(after["right"] / after["samples"], 4)
    succeeded(digitserve("feedback", "accept", sid[:10], "--reason", "checked", "--registry", registry.uri))
    reviewed: list[dict[str, Any]] = []

    def review_counted() -> bool:
        reviewed.append(seen := quality(server))
        return bool(seen["accepted"] >= before["accepted"] + 1)

    wait_until(review_counted, 30, "the review counted in the listing")
    assert reviewed[-1]["accepted_accuracy"] is not None


def quality(server: str) -> dict[str, Any]:
    """What GET /v1/models/cnn says of the feedback about v1 (refreshed every couple of seconds)."""
    return dict(model_info(server, "cnn")["versions"][0]["feedback"])


def test_a_not_a_digit_correction(server: str, registry: ModelRegistry) -> None:
    image, _ = photo(12)
    answer = predict_with_input(server, image)
    response = send(server, correction(answer, "not_a_digit"), client="192.0.2.11")
    assert response.status_code == 201, response.text
    sid = response.json()["id"]
    assert wait_for_samples(registry, [sid]).sample(sid).label is None


def blank_png() -> str:
    return base64.b64encode(png_bytes(np.full((40, 40), 255, np.uint8))).decode()


SEVEN = base64.b64encode(png_bytes(load_mnist("test").images[0])).decode()
GOOD = {"image": SEVEN, "model": "cnn", "version": 1, "predicted": 7, "label": 7}


@pytest.mark.parametrize(
    ("change", "status", "words"),
    [
        ({"label": 10}, 422, "label"),
        ({"label": "seven"}, 422, "label"),
        ({"label": True}, 422, "label"),
        ({"predicted": 3.5}, 422, "predicted"),
        ({"version": 0}, 422, "version"),
        ({"colour": "red"}, 422, "the fields are image, model, version, predicted, label and alias"),
        ({"model": "nope"}, 404, "unknown model 'nope'"),
        ({"version": 99}, 404, "has no version 99"),
        ({"image": "!!!"}, 422, "image is not valid base64"),
        ({"image": ""}, 422, "image is empty"),
        ({"image": blank_png()}, 422, "no digit"),
        ({"image": base64.b64encode(b"GIF89a nonsense").decode()}, 422, "image"),
    ],
)
def test_bad_feedback_is_a_clear_4xx(server: str, change: dict[str, object], status: int, words: str) -> None:
    response = send(server, {**GOOD, **change}, client=f"198.51.100.{abs(hash(words)) % 250}")
    assert response.status_code == status, response.text
    assert words in response.json()["error"], response.json()


def test_oversized_and_unparsable_bodies(server: str) -> None:
    big = httpx.post(f"{server}/v1/feedback", content=b"x" * (2 * 1024 * 1024), timeout=30)
    assert big.status_code == 413 and "byte limit" in big.json()["error"]
    junk = httpx.post(f"{server}/v1/feedback", content=b"{not json", headers={"content-type": "application/json"})
    assert junk.status_code == 422, junk.text


def test_each_client_has_its_own_rate_limit(server: str) -> None:
    images = load_mnist("test").images[100 : 100 + PER_MINUTE + 1]
    bodies = [{**GOOD, "image": base64.b64encode(png_bytes(i)).decode()} for i in images]
    answers = [send(server, body, client="203.0.113.7") for body in bodies]
    assert [a.status_code for a in answers] == [201] * PER_MINUTE + [429], [a.text for a in answers]
    refused = answers[-1]
    assert int(refused.headers["retry-after"]) >= 1
    assert "too much feedback from this client" in refused.json()["error"]
    assert send(server, bodies[-1], client="203.0.113.8").status_code == 201  # someone else is not limited
    ok = httpx.post(
        f"{server}/v1/models/cnn/predict", json={"images": [SEVEN]}, headers={"X-Forwarded-For": "203.0.113.7"}
    )
    assert ok.status_code == 200, "the limit is on feedback only: predictions still answer"


def test_feedback_can_be_turned_off(tmp_path: Path) -> None:
    registry = copy_shipped(tmp_path / "registry")

    async def scenario() -> httpx.Response:
        settings = Settings(
            registry=registry.uri,
            models=["cnn"],
            feedback_enabled=False,
            feedback_spool_dir=tmp_path / "spool",
            poll_seconds=3600,
            shutdown_grace_s=0,
        )
        app = create_app(settings)
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                return await client.post("/v1/feedback", json=GOOD)

    response = asyncio.run(scenario())
    assert response.status_code == 403 and "turned off" in response.json()["error"]
    assert not (Path(registry.uri) / "feedback").exists()


def test_the_cli_lists_shows_reviews_and_exports(server: str, registry: ModelRegistry, tmp_path: Path) -> None:
    images = load_mnist("test").images[200:203]
    sent = [
        send(server, {**GOOD, "image": base64.b64encode(png_bytes(i)).decode()}, client="192.0.2.30") for i in images
    ]
    ids = [r.json()["id"] for r in sent]
    store = FeedbackStore(registry.store)
    wait_until(lambda: set(ids) <= set(store.ids()), 60, "the samples in the registry")
    uri = registry.uri

    lines = succeeded(digitserve("feedback", "list", "--registry", uri)).splitlines()
    assert len(lines) == len(store.ids()) and all(" cnn v1  answered " in line for line in lines)
    stamps = [line.split()[2] for line in lines]
    assert stamps == sorted(stamps, reverse=True), "newest first"
    pending = succeeded(digitserve("feedback", "list", "--state", "pending", "--registry", uri))
    assert all(sid[:12] in pending for sid in ids)

    succeeded(digitserve("feedback", "accept", ids[0], "--reason", "a clear 7", "--registry", uri))
    out = succeeded(digitserve("feedback", "reject", ids[1][:8], "--reason", "unsure", "--registry", uri))
    assert out.startswith(f"{ids[1][:12]} rejected by ")
    accepted = succeeded(digitserve("feedback", "list", "--state", "accepted", "--registry", uri))
    assert ids[0][:12] in accepted and ids[1][:12] not in accepted
    shown = succeeded(digitserve("feedback", "show", ids[1][:8], "--registry", uri))
    assert '"state": "rejected"' in shown and '"reason": "unsure"' in shown and "@@" in shown  # the digit, in text

    out = succeeded(digitserve("feedback", "export", str(tmp_path / "accepted"), "--registry", uri))
    rows = (tmp_path / "accepted" / "samples.csv").read_text().splitlines()
    assert rows[0].startswith("id,file,state,label") and all(",accepted," in row for row in rows[1:])
    assert ids[0] in "".join(rows) and ids[1] not in "".join(rows)
    succeeded(digitserve("feedback", "export", str(tmp_path / "all"), "--state", "all", "--registry", uri))
    rows = (tmp_path / "all" / "samples.csv").read_text().splitlines()[1:]
    assert len(rows) == len(store.ids())
    for row in rows:
        assert Image.open(tmp_path / "all" / row.split(",")[1]).size == (28, 28)
