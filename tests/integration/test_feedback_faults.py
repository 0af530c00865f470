"""Feedback when the registry is away: spooled on disk, written when it is back, nothing lost on SIGTERM.

Both against real servers: S3 on a moto server that is stopped and started again, and a local
registry folder that disappears while a server runs and then gets SIGTERM with a full spool.
"""

from __future__ import annotations

import base64
import uuid
from contextlib import ExitStack
from pathlib import Path
from urllib.parse import urlparse

import boto3
import httpx
import pytest
from conftest import run_moto_server, set_fake_aws_env  # tests/conftest.py
from support.feedback import send, wait_for_samples
from support.registries import copy_shipped, png_bytes, seed_s3
from support.server import metric, model_info, start_server, stop_server, wait_until

from digitserve.data import load_mnist
from digitserve.registry import ModelRegistry
from digitserve.registry.cache import cache_folder

pytestmark = pytest.mark.slow  # real servers
OUTAGE_TIMEOUT_S = 60.0  # a registry call fails only after boto3's bounded retries


def bodies(count: int, offset: int = 0) -> list[dict[str, object]]:
    test = load_mnist("test")
    return [
        {
            "image": base64.b64encode(png_bytes(test.images[offset + i])).decode(),
            "model": "cnn",
            "version": 1,
            "predicted": None,
            "label": int(test.labels[offset + i]),
        }
        for i in range(count)
    ]


def predict_ok(url: str) -> None:
    seven = base64.b64encode(png_bytes(load_mnist("test").images[0])).decode()
    response = httpx.post(f"{url}/v1/models/cnn/predict", json={"images": [seven]}, timeout=30)
    assert response.status_code == 200 and response.json()["predictions"][0]["label"] == 7, response.text


def test_feedback_while_s3_is_down_is_spooled_then_written(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with ExitStack() as first_moto:
        endpoint = first_moto.enter_context(run_moto_server(tmp_path / "moto-1.log"))
        set_fake_aws_env(monkeypatch, endpoint, tmp_path)
        uri = f"s3://digitserve-feedback-{uuid.uuid4().hex[:12]}/registry"
        seed_s3(uri)
        env = {
            "DIGITSERVE_REGISTRY": uri,
            "FORWARDED_ALLOW_IPS": "127.0.0.1",  # the tests say which client they are
            "DIGITSERVE_MODELS": "cnn",
            "DIGITSERVE_CACHE_DIR": str(tmp_path / "cache"),
            "DIGITSERVE_POLL_SECONDS": "1",
            "DIGITSERVE_FEEDBACK_SPOOL_DIR": str(tmp_path / "spool"),
        }
        process, url = start_server(env, log_path=tmp_path / "server.log")
        try:
            first_moto.close()  # S3 goes away
            sent = [send(url, body, client=f"192.0.2.{i}") for i, body in enumerate(bodies(5))]
            assert [r.status_code for r in sent] == [201] * 5, [r.text for r in sent]
            predict_ok(url)  # predictions never wait for feedback writes
            wait_until(
                lambda: model_info(url, "cnn")["feedback"]["last_error"] is not None,
                OUTAGE_TIMEOUT_S,
                "the failed write is reported",
            )
            info = model_info(url, "cnn")["feedback"]
            assert info["spooled"] == 5 and "S3" in info["last_error"], info
            assert metric(url, "digitserve_feedback_spooled") == 5

            with run_moto_server(tmp_path / "moto-2.log", port=urlparse(endpoint).port):  # S3 is back, empty
                boto3.session.Session().client("s3").create_bucket(Bucket=urlparse(uri).netloc)
                late = send(url, bodies(1, offset=5)[0], client="192.0.2.99")  # new feedback tries again at once
                assert late.status_code == 201
                ids = [r.json()["id"] for r in [*sent, late]]
                store = wait_for_samples(ModelRegistry.open(uri), ids, timeout_s=OUTAGE_TIMEOUT_S)
                assert sorted(store.ids()) == sorted(ids)
                wait_until(lambda: metric(url, "digitserve_feedback_spooled") == 0, 30, "the spool is empty")
                assert metric(url, "digitserve_feedback_written_total") == 6
                predict_ok(url)
        finally:
            assert stop_server(process) == 0


def test_sigterm_with_a_full_spool_loses_nothing(tmp_path: Path) -> None:
    registry = copy_shipped(tmp_path / "registry")
    spool = tmp_path / "spool"
    env = {
        "DIGITSERVE_REGISTRY": registry.uri,
        "FORWARDED_ALLOW_IPS": "127.0.0.1",  # the tests say which client they are
        "DIGITSERVE_MODELS": "cnn",
        "DIGITSERVE_FEEDBACK_SPOOL_DIR": str(spool),
        "DIGITSERVE_FEEDBACK_MAX_SPOOLED": "8",
    }
    process, url = start_server(env, log_path=tmp_path / "first.log")
    root, away = Path(registry.uri), tmp_path / "away"
    try:
        root.rename(away)  # the registry disappears; the loaded version keeps answering
        sent = [send(url, body, client=f"192.0.2.{i}") for i, body in enumerate(bodies(9))]
        assert [r.status_code for r in sent] == [201] * 8 + [503], [r.text for r in sent]
        assert "waiting for the registry" in sent[-1].json()["error"]
        predict_ok(url)
    finally:
        assert stop_server(process) == 0  # SIGTERM: the last attempt to write fails, the spool stays
    folder = cache_folder(spool, registry.uri)
    ids = sorted(r.json()["id"] for r in sent[:8])
    assert sorted(p.stem for p in folder.glob("*.json")) == ids, "every sample answered 201 is on disk"
    assert not root.exists(), "writing feedback never recreated the missing registry"

    away.rename(root)  # the registry is back; the next server, with the same spool, writes everything
    process, url = start_server(env, log_path=tmp_path / "second.log")
    try:
        store = wait_for_samples(registry, ids)
        assert sorted(store.ids()) == ids
        wait_until(lambda: not list(folder.glob("*.json")), 30, "the spool is empty")
    finally:
        assert stop_server(process) == 0
