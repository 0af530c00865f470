"""One contract, two stores: every test runs on a local folder and on S3 (a real moto server).

The registry's guarantees rest on two store primitives, create-only writes and
compare-and-swap, so those are tested directly and through `ModelRegistry`, including with
two OS processes racing each other.
"""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

import pytest
import torch
from support.registries import publish_network
from torch import nn

from digitserve.models import create_model
from digitserve.models.checkpoint import load_network
from digitserve.registry import (
    AliasConflictError,
    AlreadyExistsError,
    ConflictError,
    IntegrityError,
    LocalStore,
    ModelRegistry,
    NotFoundError,
    RegistryError,
    Store,
    StoreUnavailableError,
)
from digitserve.storage.s3 import S3Store

MODEL = "digits"


def tiny_model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return create_model("cnn", channels=[4, 8, 8], depths=[1, 1, 1]).eval()


def publish_tiny(registry: ModelRegistry, seed: int = 0, model: str = MODEL) -> int:
    net = tiny_model(seed)
    metadata = {"seed": seed, "metrics": {"accuracy": 0.5, "split": "test"}}
    report = {"metrics.json": b'{"accuracy": 0.5}'}
    return publish_network(registry, model, net, metadata, report)


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def delete_key(store: Store, key: str) -> None:
    if isinstance(store, LocalStore):
        (store.root / key).unlink()
    else:
        assert isinstance(store, S3Store)
        store.client.delete_object(Bucket=store.bucket, Key=f"{store.prefix}/{key}")


# --- the two primitives ---------------------------------------------------------------------


def test_create_writes_only_absent_keys(registry_uri: str) -> None:
    store = ModelRegistry.open(registry_uri).store
    etag = store.create("m/versions/1/manifest.json", b"first")
    with pytest.raises(AlreadyExistsError):
        store.create("m/versions/1/manifest.json", b"second")
    assert store.read("m/versions/1/manifest.json") == (b"first", etag)
    assert store.exists("m/versions/1/manifest.json")
    assert not store.exists("m/versions/2/manifest.json")
    with pytest.raises(NotFoundError):
        store.read("m/versions/2/manifest.json")


def test_replace_is_compare_and_swap(registry_uri: str) -> None:
    store = ModelRegistry.open(registry_uri).store
    key = "m/aliases/production.json"
    first = store.replace(key, b"v1", None)  # None: only if absent
    with pytest.raises(ConflictError):
        store.replace(key, b"v1-again", None)
    second = store.replace(key, b"v2", first)
    with pytest.raises(ConflictError):
        store.replace(key, b"stale", first)  # someone moved it since `first` was read
    assert store.read(key) == (b"v2", second)


def test_keys_cannot_escape_the_root(registry_uri: str) -> None:
    store = ModelRegistry.open(registry_uri).store
    with pytest.raises(RegistryError, match="escapes"):
        store.put("../outside", b"x")


def test_list_and_children_page_past_1000_keys(registry_uri: str) -> None:
    store = ModelRegistry.open(registry_uri).store
    keys = [f"many/{i:04d}/data.bin" for i in range(1003)]  # S3 returns at most 1000 per page
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda k: store.put(k, b"x"), keys))
    assert store.list("many/") == keys
    assert store.children("many/") == [f"{i:04d}" for i in range(1003)]
    assert store.list("nothing/") == []
    assert store.children("nothing/") == []


# --- the registry on top ----------------------------------------------------------------------


def test_publish_list_manifest_and_load(registry_uri: str) -> None:
    registry = ModelRegistry.open(registry_uri)
    assert registry.list_models() == []
    assert [publish_tiny(registry, seed) for seed in (1, 2)] == [1, 2]
    publish_tiny(registry, 3, model="other")
    assert registry.list_models() == [MODEL, "other"]
    assert registry.list_versions(MODEL) == [1, 2]
    manifest = registry.manifest(MODEL, 2)
    assert (manifest.model, manifest.version, manifest.architecture, manifest.extra["seed"]) == (
        MODEL,
        2,
        "cnn",
        2,
    )
    assert manifest.config["channels"] == [4, 8, 8]
    assert manifest.weights.format == "safetensors"
    assert manifest.onnx is not None and manifest.onnx.format == "onnx"
    assert manifest.metrics == {"accuracy": 0.5, "split": "test"}
    assert registry.read_report(MODEL, 2, "metrics.json") == b'{"accuracy": 0.5}'
    _, loaded = load_network(registry, MODEL, 2)
    assert same_weights(loaded, tiny_model(2))
    x = torch.rand(3, 1, 28, 28)
    torch.testing.assert_close(loaded(x), tiny_model(2)(x))
    with pytest.raises(NotFoundError, match="no version 7"):
        registry.manifest(MODEL, 7)


def test_publish_with_a_stale_view_takes_the_next_free_number(registry_uri: str) -> None:
    registry = ModelRegistry.open(registry_uri)
    publish_tiny(registry, 1)
    registry.list_versions = lambda model: []  # type: ignore[method-assign]  # as if v1 were unseen
    assert publish_tiny(registry, 2) == 2
    assert registry.manifest(MODEL, 1).extra["seed"] == 1  # the existing version was not overwritten


def test_aliases_resolve_and_move(registry_uri: str) -> None:
    registry = ModelRegistry.open(registry_uri)
    publish_tiny(registry, 1)
    publish_tiny(registry, 2)
    with pytest.raises(NotFoundError, match="no alias 'production'"):
        registry.resolve_alias(MODEL, "production")
    registry.move_alias(MODEL, "production", 1)
    registry.move_alias(MODEL, "staging", 2)
    registry.move_alias(MODEL, "production", 2)
    assert registry.resolve_alias(MODEL, "production") == 2
    assert registry.list_aliases(MODEL) == {"production": 2, "staging": 2}
    state = registry.get_alias(MODEL, "production")
    assert state is not None and state.previous == 1
    with pytest.raises(NotFoundError):
        registry.move_alias(MODEL, "production", 9)  # no such version


def test_rollback_returns_to_the_previous_version(registry_uri: str) -> None:
    registry = ModelRegistry.open(registry_uri)
    for seed in (1, 2, 3):
        publish_tiny(registry, seed)
    registry.move_alias(MODEL, "production", 1)
    with pytest.raises(RegistryError, match="no previous version"):
        registry.rollback(MODEL, "production")
    registry.move_alias(MODEL, "production", 3)
    state = registry.rollback(MODEL, "production")
    assert (state.version, state.previous) == (1, 3)
    assert registry.resolve_alias(MODEL, "production") == 1


def test_every_alias_move_is_logged(registry_uri: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DIGITSERVE_ACTOR", "ci-bot")
    registry = ModelRegistry.open(registry_uri)
    publish_tiny(registry, 1)
    publish_tiny(registry, 2)
    gate = {"passed": True, "candidate": {"version": 1, "accuracy": 0.5}}
    registry.move_alias(MODEL, "production", 1, reason="first", gate=gate)
    registry.move_alias(MODEL, "staging", 2, reason="try it")
    registry.move_alias(MODEL, "production", 2, reason="hotfix", gate={"forced": True})
    registry.rollback(MODEL, "production")
    events = registry.events(MODEL, "production")
    assert [(e["action"], e["from"], e["to"], e["reason"]) for e in events] == [
        ("promote", None, 1, "first"),
        ("promote", 1, 2, "hotfix"),
        ("rollback", 2, 1, "rollback"),
    ]
    assert [e["gate"] for e in events] == [gate, {"forced": True}, None]
    assert {e["actor"] for e in events} == {"ci-bot"}
    times = [datetime.fromisoformat(e["at"]) for e in events]
    assert times == sorted(times)
    assert len(registry.events(MODEL)) == 4  # the staging move too


def test_tampered_weights_are_refused(registry_uri: str) -> None:
    registry = ModelRegistry.open(registry_uri)
    publish_tiny(registry, 1)
    key = registry.manifest(MODEL, 1).weights.key(MODEL)
    data, _ = registry.store.read(key)
    registry.store.put(key, data[:-1] + bytes([data[-1] ^ 0xFF]))  # same size, one byte changed
    with pytest.raises(IntegrityError, match="sha256"):
        load_network(registry, MODEL, 1)
    registry.store.put(key, data[:-8])
    with pytest.raises(IntegrityError, match="bytes"):
        load_network(registry, MODEL, 1)


def test_tampered_onnx_is_refused(registry_uri: str) -> None:
    registry = ModelRegistry.open(registry_uri)
    publish_tiny(registry, 1)
    onnx = registry.manifest(MODEL, 1).onnx
    assert onnx is not None
    data, _ = registry.store.read(onnx.key(MODEL))
    assert registry.read_artifact(MODEL, 1, "onnx")[1] == data
    registry.store.put(onnx.key(MODEL), data[:-1] + bytes([data[-1] ^ 0xFF]))
    with pytest.raises(IntegrityError, match="onnx sha256"):
        registry.read_artifact(MODEL, 1, "onnx")
    registry.store.put(onnx.key(MODEL), data + b"\x00")
    with pytest.raises(IntegrityError, match="bytes"):
        registry.read_artifact(MODEL, 1, "onnx")


@pytest.mark.parametrize("kind", ["weights", "onnx"])
def test_missing_artifacts_are_refused(registry_uri: str, kind: str) -> None:
    registry = ModelRegistry.open(registry_uri)
    publish_tiny(registry, 1)
    delete_key(registry.store, registry.manifest(MODEL, 1).artifact(kind).key(MODEL))
    with pytest.raises(IntegrityError, match=f"{kind} blob .* is missing"):
        registry.read_artifact(MODEL, 1, kind)
    if kind == "weights":
        with pytest.raises(IntegrityError, match="missing"):
            load_network(registry, MODEL, 1)


# --- racing OS processes ----------------------------------------------------------------------


class _PublishWhenReleased:
    """A registry whose `publish` first waits at the barrier: the ONNX export happens before it,
    so the racing processes reach the version-number allocation together."""

    def __init__(self, registry: ModelRegistry, barrier: Any) -> None:
        self.registry, self.barrier = registry, barrier

    def publish(self, *args: Any, **kwargs: Any) -> int:
        self.barrier.wait(timeout=120)
        return self.registry.publish(*args, **kwargs)


def _publish_worker(uri: str, seed: int, barrier: Any, results: Any) -> None:
    try:
        registry = _PublishWhenReleased(ModelRegistry.open(uri), barrier)
        results.put((seed, publish_tiny(registry, seed)))  # type: ignore[arg-type]
    except Exception as exc:
        results.put((seed, f"error: {exc!r}"))


def _move_worker(uri: str, target: int, barrier: Any, results: Any) -> None:
    try:
        registry = ModelRegistry.open(uri)
        seen = registry.get_alias(MODEL, "production")
        barrier.wait(timeout=120)  # both have read the alias before either moves it
        try:
            registry.move_alias(MODEL, "production", target, expected=seen, reason=f"to {target}")
            results.put((target, "won"))
        except AliasConflictError:
            results.put((target, "conflict"))
    except Exception as exc:
        results.put((target, f"error: {exc!r}"))


def run_racing_processes(worker: Callable[..., None], uri: str, args: list[int]) -> dict[int, Any]:
    """Start one spawned process per arg, released together by a barrier; their results by arg."""
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(len(args)), ctx.Queue()
    procs = [ctx.Process(target=worker, args=(uri, a, barrier, results)) for a in args]
    for p in procs:
        p.start()
    try:
        collected = dict(results.get(timeout=180) for _ in procs)
    finally:
        for p in procs:
            p.join(timeout=30)
    assert [p.exitcode for p in procs] == [0] * len(procs)
    return collected


@pytest.mark.slow
def test_racing_publishers_get_distinct_versions(registry_uri: str) -> None:
    versions = run_racing_processes(_publish_worker, registry_uri, [11, 12])
    assert sorted(versions.values()) == [1, 2], versions
    registry = ModelRegistry.open(registry_uri)
    assert registry.list_versions(MODEL) == [1, 2]
    for seed, version in versions.items():
        manifest, loaded = load_network(registry, MODEL, version)  # sha256-verified
        assert manifest.extra["seed"] == seed
        assert same_weights(loaded, tiny_model(seed))


@pytest.mark.slow
def test_racing_alias_moves_exactly_one_wins(registry_uri: str) -> None:
    registry = ModelRegistry.open(registry_uri)
    for seed in (1, 2, 3):
        publish_tiny(registry, seed)
    registry.move_alias(MODEL, "production", 1)
    outcome = run_racing_processes(_move_worker, registry_uri, [2, 3])
    assert sorted(outcome.values()) == ["conflict", "won"], outcome
    winner = next(t for t, result in outcome.items() if result == "won")
    state = registry.get_alias(MODEL, "production")
    assert state is not None and (state.version, state.previous) == (winner, 1)
    assert [(e["from"], e["to"]) for e in registry.events(MODEL, "production")] == [(None, 1), (1, winner)]


# --- S3 failures: one clear line, quickly -----------------------------------------------------


def _one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text and text
    return text


def test_missing_bucket_is_one_clear_line(moto_s3_env: str) -> None:
    registry = ModelRegistry.open("s3://digitserve-no-such-bucket/registry")
    for call in (registry.list_models, lambda: registry.manifest(MODEL, 1), lambda: publish_tiny(registry)):
        with pytest.raises(StoreUnavailableError) as info:
            call()
        assert _one_line(info.value).startswith("bucket 'digitserve-no-such-bucket' does not exist")


def test_unreachable_endpoint_fails_in_seconds(unreachable_s3_env: str) -> None:
    registry = ModelRegistry.open("s3://some-bucket/registry")
    start = time.monotonic()
    with pytest.raises(StoreUnavailableError) as info:
        registry.list_versions(MODEL)
    assert time.monotonic() - start < 10
    assert _one_line(info.value).startswith(f"cannot reach S3 endpoint {unreachable_s3_env}")


def test_refused_credentials_are_one_clear_line(moto_auth_s3_env: str) -> None:
    registry = ModelRegistry.open("s3://some-bucket/registry")
    with pytest.raises(StoreUnavailableError) as info:
        registry.manifest(MODEL, 1)
    message = _one_line(info.value)
    assert message.startswith("access denied to s3://some-bucket/registry/digits/versions/1/manifest.json")
    assert "InvalidAccessKeyId" in message
