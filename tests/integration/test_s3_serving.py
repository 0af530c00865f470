"""The server on an S3 registry (a real moto server): serving, its disk cache, and S3 outages.

Each test seeds a bucket with the shipped cnn (v1, production) and runs a real `digitserve
serve` against it. The outage tests take S3 away (an endpoint nobody listens on, or the moto
server stopped mid-run) and check that no client ever sees an error because of it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import uuid
from contextlib import ExitStack
from pathlib import Path
from urllib.parse import urlparse

import boto3
import httpx
import numpy as np
import pytest
from conftest import run_moto_server, set_fake_aws_env  # tests/conftest.py
from support.cli import digitserve, succeeded
from support.net import free_port
from support.proxy import cuttable_proxy
from support.registries import (
    SEED_SCRIPT,
    SHIPPED,
    add_shipped_version,
    copy_shipped,
    png_b64,
    publish_network,
    republish,
    seed_s3,
)
from support.scribbles import scribble_images
from support.server import metric, model_info, start_server, stop_server, wait_until
from support.steady import steady_load

from digitserve.data import load_mnist
from digitserve.models import create_model
from digitserve.registry import ModelRegistry, StoreUnavailableError, open_store
from digitserve.registry.cache import CachedRegistry, cache_folder
from digitserve.storage.s3 import S3Store

PREFIX = "registry"
MIB = 1024 * 1024
OUTAGE_TIMEOUT_S = 60.0  # a registry call fails only after boto3's bounded retries


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    test = load_mnist("test")
    return test.images[:64], test.labels[:64]


def seed_bucket(bucket: str | None = None) -> str:
    """A bucket (new unless named) holding a copy of the shipped cnn (v1, production); returns its registry URI."""
    uri = f"s3://{bucket or f'digitserve-serving-{uuid.uuid4().hex[:12]}'}/{PREFIX}"
    seed_s3(uri)
    return uri


def serve_env(registry_uri: str, cache_dir: Path, **extra: str) -> dict[str, str]:
    return {
        "DIGITSERVE_REGISTRY": registry_uri,
        "DIGITSERVE_MODELS": "cnn",
        "DIGITSERVE_CACHE_DIR": str(cache_dir),
        "DIGITSERVE_POLL_SECONDS": "1",
        **extra,
    }


def predict(url: str, image: np.ndarray) -> httpx.Response:
    return httpx.post(f"{url}/v1/models/cnn/predict", json={"images": [png_b64(image)]}, timeout=30)


def assert_answers_with_v1(url: str, digits: tuple[np.ndarray, np.ndarray]) -> None:
    images, labels = digits
    for i in range(3):
        r = predict(url, images[i])
        assert r.status_code == 200, r.text
        assert r.json()["version"] == 1 and r.json()["predictions"][0]["label"] == labels[i]


def seeded_production() -> dict[str, object]:
    """The production alias as seed_s3 wrote it (copy_shipped: v1 is the shipped production version)."""
    with tempfile.TemporaryDirectory() as tmp:
        copy_shipped(Path(tmp))
        return dict(json.loads((Path(tmp) / "cnn" / "aliases" / "production.json").read_text()))


@pytest.mark.slow  # real servers
@pytest.mark.usefixtures("moto_s3_env")
def test_serves_from_s3_and_fills_the_cache(tmp_path: Path, digits: tuple[np.ndarray, np.ndarray]) -> None:
    uri = seed_bucket()
    cache = tmp_path / "cache"
    process, url = start_server(serve_env(uri, cache), log_path=tmp_path / "server.log")
    try:
        assert_answers_with_v1(url, digits)
        info = model_info(url, "cnn")
        assert info["registry"] == uri and info["serving"]["version"] == 1
        assert info["aliases"] == {"production": 1} and [v["version"] for v in info["versions"]] == [1]
        assert info["serving_from_cache"] is False and info["registry_error"] is None
        assert metric(url, "digitserve_registry_reachable") == 1
    finally:
        assert stop_server(process) == 0

    # What was fetched from S3 is on disk: the served (ONNX) blob byte for byte, the manifest, the alias.
    sha = info["serving"]["onnx_sha256"]
    cached = cache_folder(cache, uri) / "cnn"
    shipped_blob = SHIPPED / "cnn" / "blobs" / f"{sha}.onnx"
    assert (cached / "blobs" / f"{sha}.onnx").read_bytes() == shipped_blob.read_bytes()
    assert json.loads((cached / "versions" / "1" / "manifest.json").read_text())["onnx"]["sha256"] == sha
    assert json.loads((cached / "aliases" / "production.json").read_text()) == seeded_production()


def test_one_cache_dir_never_mixes_up_two_registries(s3_bucket: str, tmp_path: Path) -> None:
    """cnn v1 in one bucket is not cnn v1 in another: servers sharing a cache dir keep them apart."""
    cache = tmp_path / "cache"
    shipped = CachedRegistry(open_store(seed_bucket()), cache)
    shipped.read_artifact("cnn", 1, "onnx")  # the shipped v1 and production alias are now cached
    assert shipped.resolve_alias("cnn", "production") == 1

    other = ModelRegistry.open(f"s3://{s3_bucket}/{PREFIX}")
    small = create_model("cnn", channels=[4, 8, 8], depths=[1, 1, 1])
    assert publish_network(other, "cnn", small) == 1
    other.move_alias("cnn", "production", 1)
    cached_other = CachedRegistry(other.store, cache)
    assert cached_other.read_artifact("cnn", 1, "onnx")[0].onnx == other.manifest("cnn", 1).onnx

    # Unreachable, the other registry has no alias cached: the shipped one's must not stand in for it.
    closed = boto3.session.Session().client("s3", endpoint_url=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(StoreUnavailableError):
        CachedRegistry(S3Store(s3_bucket, PREFIX, client=closed), cache).get_alias("cnn", "production")


@pytest.mark.slow  # real servers
@pytest.mark.usefixtures("moto_s3_env")
def test_starts_from_the_cache_when_s3_is_unreachable(tmp_path: Path, digits: tuple[np.ndarray, np.ndarray]) -> None:
    uri = seed_bucket()
    cache = tmp_path / "cache"
    process, _ = start_server(serve_env(uri, cache), log_path=tmp_path / "first.log")  # fills the cache
    assert stop_server(process) == 0

    closed = f"http://127.0.0.1:{free_port()}"  # nobody listens there: connection refused
    env = serve_env(uri, cache, AWS_ENDPOINT_URL=closed)
    process, url = start_server(env, log_path=tmp_path / "second.log")
    try:
        assert_answers_with_v1(url, digits)
        assert httpx.get(f"{url}/readyz").json()["models"] == {"cnn": 1}
        [info] = httpx.get(f"{url}/v1/models", timeout=60).json()
        assert info["serving"]["version"] == 1 and info["ready"] is True
        assert info["serving_from_cache"] is True
        assert info["registry_error"].startswith(f"cannot reach S3 endpoint {closed} for {uri}")
        assert metric(url, "digitserve_registry_reachable") == 0
    finally:
        assert stop_server(process) == 0
    log = (tmp_path / "second.log").read_text()
    assert "registry unreachable" in log and "using the cached alias cnn/production" in log


@pytest.mark.slow  # real servers
def test_s3_going_away_mid_run_fails_no_request_and_recovers(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, digits: tuple[np.ndarray, np.ndarray]
) -> None:
    with ExitStack() as first_moto:
        endpoint = first_moto.enter_context(run_moto_server(tmp_path / "moto-1.log"))
        set_fake_aws_env(monkeypatch, endpoint, tmp_path)
        uri = seed_bucket()
        log = tmp_path / "server.log"
        process, url = start_server(serve_env(uri, tmp_path / "cache"), log_path=log)
        try:
            with steady_load([url], digits[0]) as outcomes:
                wait_until(lambda: len(outcomes) >= 20, 30, "load is flowing")
                first_moto.close()  # S3 goes away mid-run
                answered_before_outage = len(outcomes)
                down_s = wait_until(
                    lambda: metric(url, "digitserve_registry_reachable") == 0, OUTAGE_TIMEOUT_S, "outage noticed"
                )
                info = model_info(url, "cnn")
                assert info["serving_from_cache"] is True and info["serving"]["version"] == 1
                assert info["registry_error"]
                polled_at = info["last_poll_at"]
                wait_until(lambda: model_info(url, "cnn")["last_poll_at"] > polled_at, OUTAGE_TIMEOUT_S, "polls retry")
                answered_during_outage = len(outcomes) - answered_before_outage

                port = urlparse(endpoint).port
                with run_moto_server(tmp_path / "moto-2.log", port=port):  # S3 is back, same endpoint
                    assert seed_bucket(urlparse(uri).netloc) == uri  # a new moto server starts empty
                    up_s = wait_until(
                        lambda: metric(url, "digitserve_registry_reachable") == 1, OUTAGE_TIMEOUT_S, "recovery"
                    )
                    info = model_info(url, "cnn")
                    assert info["serving_from_cache"] is False and info["registry_error"] is None
                    assert info["serving"]["version"] == 1
        finally:
            assert stop_server(process) == 0

    failed = [o for o in outcomes if o.status != 200]
    assert failed == [], failed[:5]
    assert {o.version for o in outcomes} == {1}
    assert answered_during_outage > 0
    assert log.read_text().count("using the cached alias cnn/production") >= 2
    print(
        f"outage noticed in {down_s:.1f}s, recovered {up_s:.1f}s after the re-seed; "
        f"{len(outcomes)} answers ({answered_during_outage} during the outage), none failed"
    )


@pytest.mark.solo  # the verdict needs idle-CPU comparisons
def test_a_rollback_while_s3_is_unreachable_is_retried_until_it_lands(moto_s3_env: str, tmp_path: Path) -> None:
    """A bad canary fails its watch while the way to S3 is cut: the server stops routing to it at
    once (production answers its share), the alias move fails and is retried, and it lands once S3
    is reachable again -- one rollback event, with the evidence. One worker: every client network
    in one watch, so that it judges (the two-worker rollback is test_canary_evidence.py's)."""
    local = copy_shipped(tmp_path / "local")
    assert add_shipped_version(local, "cnn", 2) == 2  # on scribbles v2 never agrees with v1
    uri = f"s3://digitserve-retire-{uuid.uuid4().hex[:12]}/{PREFIX}"
    seeded = subprocess.run([sys.executable, str(SEED_SCRIPT), str(tmp_path / "local"), uri], capture_output=True)
    assert seeded.returncode == 0, seeded.stderr
    why = ["--force", "--reason", "test: the shipped v2 as canary", "--registry", uri]
    succeeded(digitserve("registry", "promote", "cnn", "2", "--alias", "canary", *why))
    registry = ModelRegistry.open(uri)
    tangles = scribble_images(100)
    with cuttable_proxy(("127.0.0.1", int(urlparse(moto_s3_env).port or 0))) as proxy:
        env = serve_env(
            uri,
            tmp_path / "cache",
            AWS_ENDPOINT_URL=proxy.endpoint,  # the server reaches S3 only through the proxy
            DIGITSERVE_WORKERS="1",
            DIGITSERVE_CANARY_ALIAS="canary",
            DIGITSERVE_CANARY_PERCENT="50",
            DIGITSERVE_CANARY_COMPARE_PERCENT="100",
            DIGITSERVE_CANARY_MIN_COMPARED="150",  # no verdict before the cut, after 10 canary answers
            FORWARDED_ALLOW_IPS="127.0.0.1",
        )
        process, url = start_server(env, log_path=tmp_path / "server.log")
        try:
            with steady_load([url], tangles, clients=3, client_networks=True) as answers:
                wait_until(lambda: sum(a.alias == "canary" for a in answers) >= 10, 30, "the canary answers")
                proxy.set_cut(True)  # S3 unreachable from here on
                assert not metric(url, "digitserve_canary_rollbacks_total"), "judged before the cut"
                retrying = lambda: metric(url, "digitserve_canary_rollbacks_total", outcome="retrying")  # noqa: E731
                wait_until(lambda: retrying() >= 1, OUTAGE_TIMEOUT_S, "a rollback that could not move the alias")
                state = registry.get_alias("cnn", "canary")  # read past the proxy: nothing moved yet
                assert state is not None and (state.version, state.retired) == (2, False), state
                seen = len(answers)
                wait_until(lambda: len(answers) >= seen + 60, 30, "answers while S3 is away")
                assert {a.alias for a in answers[seen + 3 :]} == {"production"}, "production answers its share"
                proxy.set_cut(False)
                wait_until(lambda: registry.get_alias("cnn", "canary").retired, OUTAGE_TIMEOUT_S, "the retry lands")
        finally:
            assert stop_server(process) == 0
    events = [e for e in registry.events("cnn", "canary") if e["action"] == "rollback"]
    assert len(events) == 1 and (events[0]["from"], events[0]["to"]) == (2, 1), events
    assert str(events[0]["reason"]).startswith("automatic rollback: ")
    assert {a.status for a in answers} == {200}


def test_browsing_an_s3_registry_reads_each_report_file_once_within_the_cache_bound(
    moto_s3_env: str, tmp_path: Path
) -> None:
    """The models pages on an S3 registry: a report file is read from S3 once, then from the
    worker's cache, which keeps at most 32 MiB (least recently read first out) and never a file
    over 8 MiB. What S3 sends is counted at a proxy on the way. One worker: the cache is per
    process (with two, a second read could land on the other one and be a first read there)."""
    local = copy_shipped(tmp_path / "local")
    rng = np.random.default_rng(0)
    files = {f"plot-{i}.png": rng.bytes(7 * MIB) for i in range(5)}  # 35 MiB: over the bound
    files["huge.png"] = rng.bytes(9 * MIB)
    version = republish(local, "cnn", 1, report=files)
    uri = f"s3://digitserve-browse-{uuid.uuid4().hex[:12]}/{PREFIX}"
    seeded = subprocess.run([sys.executable, str(SEED_SCRIPT), str(tmp_path / "local"), uri], capture_output=True)
    assert seeded.returncode == 0, seeded.stderr
    with cuttable_proxy(("127.0.0.1", int(urlparse(moto_s3_env).port or 0))) as proxy:
        # the server reaches S3 only through the proxy; polls far apart, so S3 sends nothing else meanwhile
        extra = {"AWS_ENDPOINT_URL": proxy.endpoint, "DIGITSERVE_WORKERS": "1", "DIGITSERVE_POLL_SECONDS": "600"}
        env = serve_env(uri, tmp_path / "cache", **extra)
        process, url = start_server(env, log_path=tmp_path / "server.log")
        try:
            with httpx.Client(base_url=url, timeout=30) as client:
                card = client.get(f"/v1/registry/models/cnn/versions/{version}")
                assert card.status_code == 200, card.text
                assert set(files) <= set(card.json()["report"])

                def from_s3(name: str) -> int:
                    """Bytes S3 sent while the server answered one read of the report file `name`."""
                    before = proxy.received
                    r = client.get(f"/v1/registry/models/cnn/versions/{version}/report/{name}")
                    assert r.status_code == 200 and r.content == files[name], (r.status_code, r.text[:200])
                    return proxy.received - before

                assert from_s3("plot-0.png") >= 7 * MIB
                assert from_s3("plot-0.png") < MIB // 16, "read again from the cache"
                for i in range(1, 5):  # 35 MiB read: plot-0, the least recently read, is pushed out
                    assert from_s3(f"plot-{i}.png") >= 7 * MIB
                assert from_s3("plot-1.png") < MIB // 16 and from_s3("plot-4.png") < MIB // 16
                assert from_s3("plot-0.png") >= 7 * MIB, "pushed out, read from S3 again"
                assert from_s3("plot-2.png") >= 7 * MIB, "now the least recently read: pushed out by plot-0"
                assert from_s3("huge.png") >= 9 * MIB and from_s3("huge.png") >= 9 * MIB, "never kept"
                assert from_s3("plot-1.png") < MIB // 16, "the huge file pushed out nothing, not even the LRU's oldest"
        finally:
            assert stop_server(process) == 0
