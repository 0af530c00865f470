"""Registry faults injected into a real server: the registry folder missing at start or taken away
while serving, an alias naming a version that does not exist, a manifest pointing its weights
outside the registry, and reloads that fail at the build step. In each case the version already
serving keeps answering (clients see no 5xx), and the error is visible in `GET /v1/models/{model}`
and in /metrics. test_server.py covers corrupt, truncated and missing blobs and golden mismatches.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image
from support.registries import blob_path, copy_shipped, publish_variant
from support.server import metric, model_info, start_server, stop_server, wait_for_polls, wait_until
from support.steady import Answer, steady_load

from digitserve.registry import ModelRegistry
from digitserve.serving.api.schemas import EXAMPLE_PNG_B64

pytestmark = pytest.mark.slow

TOKEN = "faults-admin-token"
PREDICT = "/v1/models/cnn/predict"
POLL_S = 0.5
EXAMPLE_DIGIT = np.asarray(Image.open(io.BytesIO(base64.b64decode(EXAMPLE_PNG_B64))).convert("L"))


def serve(registry: str, log: Path) -> tuple[Any, str]:
    """A server on `registry` that polls it twice a second; it may start unready (/healthz only)."""
    env = {
        "DIGITSERVE_REGISTRY": registry,
        "DIGITSERVE_MODELS": "cnn",
        "DIGITSERVE_POLL_SECONDS": str(POLL_S),
        "DIGITSERVE_ADMIN_TOKEN": TOKEN,
    }
    return start_server(env, log_path=log, wait_path="/healthz")


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> ModelRegistry:
    return copy_shipped(tmp_path_factory.mktemp("faults") / "registry")


@pytest.fixture(scope="module")
def server(registry: ModelRegistry, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    process, url = serve(registry.uri, tmp_path_factory.mktemp("logs") / "server.log")
    wait_until(lambda: httpx.get(f"{url}/readyz").status_code == 200, 120, "server ready")
    yield url
    assert stop_server(process) == 0


def reload(url: str) -> dict[str, Any]:
    r = httpx.post(f"{url}/v1/admin/reload", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)
    assert r.status_code == 200, r.text
    return dict(r.json()["results"][0])


@contextmanager
def steady_traffic(url: str) -> Iterator[list[Answer]]:
    """Predictions sent back to back (one client) while the block runs; a request that got no
    answer is recorded as a failed one, and a failure of the loop itself fails the test."""
    with steady_load([url], np.asarray([EXAMPLE_DIGIT]), clients=1, pause_s=0.01) as answers:
        yield answers


def assert_all_served_by(answers: list[Answer], version: int) -> None:
    assert len(answers) >= 5, f"only {len(answers)} answers: the traffic did not run"
    others = [a for a in answers if (a.status, a.version) != (200, version)]
    assert not others, f"{len(others)} of {len(answers)} answers not 200 from v{version}: {others[:3]}"


def healthy_again(url: str) -> None:
    """After a fault is repaired: the error clears, the registry counts as reachable, v1 serves."""
    wait_until(lambda: model_info(url, "cnn")["last_reload_error"] is None, 30, "reload error cleared")
    assert metric(url, "digitserve_model_reload_error", model="cnn") == 0
    assert metric(url, "digitserve_registry_reachable") == 1
    assert model_info(url, "cnn")["serving"]["version"] == 1


# --- the registry missing at start ----------------------------------------------------------


@pytest.mark.parametrize("absent_as", ["missing folder", "a file, not a folder"])
def test_registry_unreachable_at_start_keeps_the_server_up_and_unready(tmp_path: Path, absent_as: str) -> None:
    root = tmp_path / "registry"
    if absent_as != "missing folder":
        root.write_text("not a registry")
    process, url = serve(str(root), tmp_path / "s.log")
    try:
        assert httpx.get(f"{url}/healthz").status_code == 200
        assert httpx.get(f"{url}/readyz").status_code == 503
        r = httpx.post(f"{url}{PREDICT}", json={"images": [EXAMPLE_PNG_B64]})
        assert r.status_code == 503 and r.json()["code"] == "model_not_ready" and r.headers["retry-after"]
        info = model_info(url, "cnn")
        assert info["ready"] is False and info["serving"] is None
        assert info["last_reload_error"]["step"] == "resolve" and str(root) in info["last_reload_error"]["message"]
        assert str(root) in info["registry_error"]
        assert metric(url, "digitserve_registry_reachable") == 0
        assert metric(url, "digitserve_model_reload_error", model="cnn") == 1

        if root.is_file():
            root.unlink()
        copy_shipped(root)  # the registry arrives: the next poll loads and serves it
        wait_until(lambda: httpx.get(f"{url}/readyz").status_code == 200, 60, "ready once the registry is there")
        r = httpx.post(f"{url}{PREDICT}", json={"images": [EXAMPLE_PNG_B64]})
        assert r.status_code == 200 and r.json()["version"] == 1 and r.json()["predictions"][0]["label"] == 7
        healthy_again(url)
    finally:
        assert stop_server(process) == 0


# --- the registry going away while serving --------------------------------------------------


def test_registry_taken_away_while_serving(server: str, registry: ModelRegistry) -> None:
    root = Path(registry.uri)
    away = root.with_name("registry-away")
    assert model_info(server, "cnn")["registry_error"] is None  # a listing to fall back on
    with steady_traffic(server) as answers:
        wait_until(lambda: len(answers) >= 3, 30, "traffic flowing before the registry goes")
        root.rename(away)
        try:
            wait_until(lambda: metric(server, "digitserve_registry_reachable") == 0, 15, "registry seen as unreachable")
            info = model_info(server, "cnn")
            assert info["serving"]["version"] == 1 and info["ready"] is True
            assert info["last_reload_error"]["step"] == "resolve" and "does not exist" in info["registry_error"]
            assert info["versions"] and info["aliases"] == {"production": 1}  # the last listing, kept
            listing = httpx.get(f"{server}/v1/models").json()
            assert listing[0]["registry_error"] and listing[0]["last_reload_error"]
            assert metric(server, "digitserve_model_reload_error", model="cnn") == 1
            assert httpx.get(f"{server}/readyz").status_code == 200  # it still serves what it verified
            while_away = len(answers)
            wait_until(lambda: len(answers) >= while_away + 10, 30, "answers while the registry is away")
        finally:
            away.rename(root)
        healthy_again(server)
    assert_all_served_by(answers, 1)


# --- bad versions behind the alias ----------------------------------------------------------


def alias_file(registry: ModelRegistry) -> Path:
    return Path(registry.uri) / "cnn" / "aliases" / "production.json"


def write_alias(registry: ModelRegistry, content: str) -> None:
    """Point `production` anywhere, past the checks of `move_alias`, atomically as the registry writes."""
    tmp = alias_file(registry).with_name(".production.json.test")
    tmp.write_text(content)
    tmp.replace(alias_file(registry))


ALIAS_FAULTS = {  # what the alias file holds, the step that refuses it, words in the error
    "a version that does not exist": ('{"version": 99, "previous": 1}', "fetch", "no version 99"),
    "not JSON": ('{"version": 9', "resolve", "unreadable"),
    "no version in it": ('{"previous": 1}', "resolve", "unreadable"),
}


@pytest.mark.parametrize("case", ALIAS_FAULTS, ids=list(ALIAS_FAULTS))
def test_an_alias_that_names_nothing_servable(server: str, registry: ModelRegistry, case: str) -> None:
    content, step, words = ALIAS_FAULTS[case]
    original = alias_file(registry).read_bytes()
    with steady_traffic(server) as answers:
        write_alias(registry, content)
        try:
            result = reload(server)
            assert result["changed"] is False and words in result["error"], result
            info = model_info(server, "cnn")
            assert info["serving"]["version"] == 1 and info["ready"] is True
            assert info["last_reload_error"]["step"] == step and words in info["last_reload_error"]["message"]
            assert metric(server, "digitserve_model_reload_error", model="cnn") == 1
            failures = metric(server, "digitserve_model_reload_failures_total", model="cnn", step=step)
            wait_for_polls(server, "cnn", polls=3)
            if step == "fetch":  # a refused version is not retried by polling
                assert metric(server, "digitserve_model_reload_failures_total", model="cnn", step=step) == failures
        finally:
            alias_file(registry).write_bytes(original)
        healthy_again(server)
    assert_all_served_by(answers, 1)


def publish_damaged(registry: ModelRegistry, damage: Callable[[dict[str, Any], Path], str]) -> int:
    """A new version whose manifest file is replaced by what `damage(manifest, manifest_path)` returns."""
    version = publish_variant(registry, "cnn", 1, nudge=1e-3)
    path = Path(registry.uri) / "cnn" / "versions" / str(version) / "manifest.json"
    path.write_text(damage(json.loads(path.read_text()), path))
    return version


def graph_that_is_not_onnx(manifest: dict[str, Any], path: Path) -> str:
    """A blob whose sha256 and size match the manifest, but whose bytes are no ONNX graph."""
    junk = b"not an onnx graph " * 100
    sha = hashlib.sha256(junk).hexdigest()
    (path.parents[2] / "blobs" / f"{sha}.onnx").write_bytes(junk)
    return json.dumps({**manifest, "onnx": {**manifest["onnx"], "sha256": sha, "size": len(junk)}})


def graph_of_another_version(manifest: dict[str, Any], path: Path) -> str:
    """A real, intact ONNX graph -- of version 1 -- where this version's should be."""
    served = json.loads((path.parents[1] / "1" / "manifest.json").read_text())
    return json.dumps({**manifest, "onnx": served["onnx"]})


def graph_only_outside_the_registry(manifest: dict[str, Any], path: Path) -> str:
    """The ONNX blob moves out of the registry; the manifest's `key` names where it went."""
    blob = path.parents[2] / "blobs" / f"{manifest['onnx']['sha256']}.onnx"
    outside = path.parents[4] / "outside" / blob.name
    outside.parent.mkdir(exist_ok=True)
    shutil.move(blob, outside)
    return json.dumps({**manifest, "onnx": {**manifest["onnx"], "key": str(outside)}})


def sha_that_climbs_out(manifest: dict[str, Any], path: Path) -> str:
    return json.dumps({**manifest, "onnx": {**manifest["onnx"], "sha256": "../../../outside/escape"}})


def manifest_not_json(manifest: dict[str, Any], path: Path) -> str:
    return json.dumps(manifest)[:-40]


def manifest_without_weights(manifest: dict[str, Any], path: Path) -> str:
    return json.dumps({k: v for k, v in manifest.items() if k != "weights"})


def manifest_without_onnx(manifest: dict[str, Any], path: Path) -> str:
    """A version published before ONNX serving: weights only."""
    return json.dumps({k: v for k, v in manifest.items() if k != "onnx"})


BAD_VERSIONS = {  # damage, the step that refuses it, words in the error
    "graph that is not ONNX": (graph_that_is_not_onnx, "build", "ONNX Runtime cannot load the graph"),
    "graph of another version": (graph_of_another_version, "golden", "differ from the recorded golden logits"),
    "graph only outside the registry": (graph_only_outside_the_registry, "verify", "missing"),
    "sha256 that climbs out of the registry": (sha_that_climbs_out, "fetch", "64 lowercase hex digits"),
    "manifest that is not JSON": (manifest_not_json, "fetch", "not valid JSON"),
    "manifest without weights": (manifest_without_weights, "fetch", "'weights' must be an object"),
    "version without an ONNX artifact": (manifest_without_onnx, "fetch", "has no onnx artifact"),
}


@pytest.mark.parametrize("case", BAD_VERSIONS, ids=list(BAD_VERSIONS))
def test_a_reload_that_fails_half_way_keeps_the_old_version(server: str, registry: ModelRegistry, case: str) -> None:
    damage, step, words = BAD_VERSIONS[case]
    bad = publish_damaged(registry, damage)
    failures = metric(server, "digitserve_model_reload_failures_total", model="cnn", step=step)
    with steady_traffic(server) as answers:
        write_alias(registry, json.dumps({"version": bad, "previous": 1}))  # move_alias refuses some of these
        try:
            wait_until(lambda: model_info(server, "cnn")["last_reload_error"] is not None, 15, "the refusal seen")
            error = model_info(server, "cnn")["last_reload_error"]
            assert error["version"] == bad and error["step"] == step and words in error["message"], error
            assert model_info(server, "cnn")["serving"]["version"] == 1
            assert metric(server, "digitserve_model_reload_error", model="cnn") == 1
            count = metric(server, "digitserve_model_reload_failures_total", model="cnn", step=step)
            assert count == failures + 1
            assert reload(server)["changed"] is False  # an explicit retry is refused the same way
        finally:
            registry.move_alias("cnn", "production", 1, reason="test: restore")
        healthy_again(server)
    assert_all_served_by(answers, 1)
    versions = {v["version"]: v for v in model_info(server, "cnn")["versions"]}
    assert bad in versions and 1 in versions  # the listing shows the damaged version, and the others
    if case == "graph only outside the registry":
        assert blob_path(registry, "cnn", bad).exists() is False  # nothing copied it back in
