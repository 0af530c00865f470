"""LocalStore and ModelRegistry behaviour that the store contract tests do not cover."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from support.registries import publish_network

from digitserve.models import create_model
from digitserve.registry import (
    AlreadyExistsError,
    ConflictError,
    LocalStore,
    Manifest,
    ManifestError,
    ModelRegistry,
    RegistryError,
    open_store,
)


def race(n: int, attempt: Callable[[int], str]) -> list[str]:
    """Run `attempt(i)` in n threads released together; their outcomes."""
    barrier, outcomes = threading.Barrier(n), []

    def run(i: int) -> None:
        barrier.wait()
        outcomes.append(attempt(i))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(outcomes) == n, f"{n - len(outcomes)} attempts raised instead of returning an outcome"
    return outcomes


def test_concurrent_creates_have_one_winner(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)

    def attempt(i: int) -> str:
        try:
            store.create("m/versions/1/manifest.json", f"writer {i}".encode())
            return "won"
        except AlreadyExistsError:
            return "lost"

    outcomes = race(8, attempt)
    assert sorted(outcomes) == ["lost"] * 7 + ["won"]
    assert store.read("m/versions/1/manifest.json")[0].startswith(b"writer ")


def test_concurrent_compare_and_swaps_have_one_winner(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    etag = store.replace("m/aliases/production.json", b"start", None)

    def attempt(i: int) -> str:
        try:
            store.replace("m/aliases/production.json", f"mover {i}".encode(), etag)
            return "won"
        except ConflictError:
            return "lost"

    assert sorted(race(8, attempt)) == ["lost"] * 7 + ["won"]
    assert store.list("m/aliases/") == ["m/aliases/production.json"]  # the lock file is hidden


def test_uris_open_the_right_store(tmp_path: Path) -> None:
    for uri in (str(tmp_path), f"file://{tmp_path}"):
        store = open_store(uri)
        assert isinstance(store, LocalStore) and store.root == tmp_path.resolve()
    with pytest.raises(RegistryError, match="unsupported registry URI 'gs://bucket'"):
        open_store("gs://bucket")


@pytest.mark.parametrize("name", ["CNN", "has space", "../up", "", "-dash-first"])
def test_invalid_model_names_are_refused(tmp_path: Path, name: str) -> None:
    registry = ModelRegistry(LocalStore(tmp_path))
    net = create_model("cnn", channels=[4, 8, 8])
    with pytest.raises(RegistryError, match="invalid name"):
        publish_network(registry, name, net)
    assert list(tmp_path.iterdir()) == []


def test_identical_weights_share_one_blob(tmp_path: Path) -> None:
    registry = ModelRegistry(LocalStore(tmp_path))
    torch.manual_seed(0)
    net = create_model("cnn", channels=[4, 8, 8])
    v1 = publish_network(registry, "digits", net, {"note": "a"})
    v2 = publish_network(registry, "digits", net, {"note": "b"})
    assert (v1, v2) == (1, 2)
    # One blob per artifact: the weights and the (deterministically exported) ONNX graph.
    blobs = registry.store.list("digits/blobs/")
    assert len(blobs) == 2 and {b.rsplit(".", 1)[1] for b in blobs} == {"safetensors", "onnx"}
    first, second = registry.manifest("digits", 1), registry.manifest("digits", 2)
    assert first.weights == second.weights
    assert first.onnx is not None and first.onnx == second.onnx
    assert (first.extra["note"], second.extra["note"]) == ("a", "b")


# --- damaged or hand-edited records -----------------------------------------------------------


@pytest.mark.parametrize(
    "document",
    [
        b'{"version": 1e999}',  # json reads it as inf: int() of it would be an OverflowError
        b'{"version": 18446744073709551616}',  # 2^64: past JSON's exact integers
        b'{"version": 9007199254740993}',  # 2^53 + 1
        b'{"version": true}',  # a bool is an int to Python
        b'{"version": 2.0}',
        b'{"version": 0}',
        b'{"version": -1}',
        b'{"version": "2"}',
        b'{"reason": "no version"}',
        b'{"version": 2, "previous": 1e999}',
        b'{"version": 2, "previous": true}',
    ],
)
def test_a_damaged_alias_is_a_clear_registry_error(tmp_path: Path, document: bytes) -> None:
    registry = ModelRegistry(LocalStore(tmp_path))
    registry.store.put("digits/aliases/production.json", document)
    unreadable = r"^alias digits/production is unreadable: .*must be a version number \(an integer from 1\)"
    with pytest.raises(RegistryError, match=unreadable) as info:
        registry.get_alias("digits", "production")
    assert isinstance(info.value, ManifestError)
    assert "\n" not in str(info.value)
    for call in (lambda: registry.resolve_alias("digits", "production"), lambda: registry.list_aliases("digits")):
        with pytest.raises(ManifestError, match="alias digits/production is unreadable"):
            call()


@pytest.mark.parametrize("document", [b"[1, 2]", b"{not json", b'{"version": 1' + b"0" * 5000 + b"}", b"\xff"])
def test_an_alias_that_is_not_a_json_object_is_a_clear_registry_error(tmp_path: Path, document: bytes) -> None:
    registry = ModelRegistry(LocalStore(tmp_path))
    registry.store.put("digits/aliases/production.json", document)
    unreadable = r"^alias digits/production is unreadable: .*(not valid JSON|not a JSON object|must be a version)"
    with pytest.raises(ManifestError, match=unreadable):
        registry.get_alias("digits", "production")


def test_the_largest_exact_version_is_accepted(tmp_path: Path) -> None:
    registry = ModelRegistry(LocalStore(tmp_path))
    registry.store.put("digits/aliases/production.json", b'{"version": 9007199254740992, "previous": 1}')
    state = registry.get_alias("digits", "production")
    assert state is not None and (state.version, state.previous) == (2**53, 1)


def manifest_doc(weights_sha: str = "ab" * 32, onnx_sha: str = "cd" * 32) -> dict:
    return {
        "model": "digits",
        "version": 1,
        "architecture": "cnn",
        "config": {"channels": [4, 8, 8]},
        "weights": {"sha256": weights_sha, "size": 10, "format": "safetensors"},
        "onnx": {"sha256": onnx_sha, "size": 20, "format": "onnx", "opset": 18},
        "metrics": {"accuracy": 0.5},
        "created_at": "2026-01-01T00:00:00.000Z",
        "seed": 3,
    }


def test_a_well_formed_manifest_round_trips() -> None:
    manifest = Manifest.from_dict(manifest_doc(), "digits", 1)
    assert manifest.weights.key("digits") == f"digits/blobs/{'ab' * 32}.safetensors"
    assert manifest.onnx is not None and manifest.onnx.key("digits") == f"digits/blobs/{'cd' * 32}.onnx"
    assert (manifest.onnx.opset, manifest.accuracy, manifest.extra) == (18, 0.5, {"seed": 3})
    assert Manifest.from_dict(manifest.to_dict(), "digits", 1) == manifest


@pytest.mark.parametrize("kind", ["weights", "onnx"])
@pytest.mark.parametrize(
    "sha256", ["../../../escape", "AB" * 32, "ab" * 31, "ab" * 33, "g" * 64, ("ab" * 32) + "/../x", "", 12]
)
def test_a_manifest_with_a_bad_sha256_is_refused(tmp_path: Path, kind: str, sha256: object) -> None:
    doc = manifest_doc(**{f"{kind}_sha": sha256})  # type: ignore[arg-type]
    with pytest.raises(ManifestError, match=f"'{kind}.sha256' must be 64 lowercase hex digits"):
        Manifest.from_dict(doc, "digits", 1)
    # Read from a registry, it is refused before any blob key is built from it.
    registry = ModelRegistry(LocalStore(tmp_path))
    registry.store.create("digits/versions/1/manifest.json", json.dumps(doc).encode())
    with pytest.raises(ManifestError, match="digits v1: the manifest"):
        registry.read_artifact("digits", 1, kind)
