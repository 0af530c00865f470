"""LocalStore and ModelRegistry behaviour that the store contract tests do not cover."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from digitserve.models import config_dict, create_model
from digitserve.registry import (
    AlreadyExistsError,
    ConflictError,
    LocalStore,
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
    with pytest.raises(RegistryError, match="invalid model name"):
        registry.publish(name, "cnn", config_dict(net), net.state_dict(), {})
    assert list(tmp_path.iterdir()) == []


def test_identical_weights_share_one_blob(tmp_path: Path) -> None:
    registry = ModelRegistry(LocalStore(tmp_path))
    torch.manual_seed(0)
    net = create_model("cnn", channels=[4, 8, 8])
    v1 = registry.publish("digits", "cnn", config_dict(net), net.state_dict(), {"note": "a"})
    v2 = registry.publish("digits", "cnn", config_dict(net), net.state_dict(), {"note": "b"})
    assert (v1, v2) == (1, 2)
    assert len(registry.store.list("digits/blobs/")) == 1
    assert registry.manifest("digits", 1)["weights"] == registry.manifest("digits", 2)["weights"]
