"""Which inference slot each loaded version's forward passes take (inference/versions.py): the
served versions share the process's slots; each model's canary has one of its own, the pinned
versions another, so no candidate ever holds up production (test_canary_faults.py shows the
consequence end to end). Real loads of the shipped cnn from a private registry copy."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from support.registries import add_shipped_version, copy_shipped

from digitserve.config import Settings
from digitserve.serving.inference.batching import InferenceSlots
from digitserve.serving.inference.versions import ModelVersions
from digitserve.serving.observability.metrics import ServiceMetrics


def test_the_served_version_the_canary_and_pinned_versions_each_take_their_own_slots(tmp_path: Path) -> None:
    registry = copy_shipped(tmp_path / "registry")
    assert add_shipped_version(registry, "cnn", 2) == 2
    settings = Settings(registry=registry.uri, models=["cnn"], canary_alias="canary", poll_seconds=3600)
    pools = [ThreadPoolExecutor(n) for n in (1, 2, 2)]

    async def scenario() -> None:
        slots = InferenceSlots(1, pools[0])
        versions = ModelVersions(settings, registry, ServiceMetrics(), slots, pools[1], pools[2])
        state = versions.state("cnn")
        try:
            await versions.refresh("cnn")
            assert state.served is not None and state.served.version == 1
            assert state.served.batcher.slots is slots
            await versions.hold(state, "canary", 2)
            canary = versions.rollout(state, "canary")
            assert canary is not None and canary.batcher.slots is versions.rollout_slots["cnn"]
            pinned = await versions.pinned_version(state, 2, None)
            assert pinned.batcher.slots is versions.pinned_slots
            assert len({id(slots), id(versions.rollout_slots["cnn"]), id(versions.pinned_slots)}) == 3
            assert (await versions.pinned_version(state, 1, None)) is state.served, "pinning the served one"

            registry.move_alias("cnn", "production", 2, reason="test: the canary promoted")
            await versions.refresh("cnn")  # promoted: loaded afresh, as production, on production's slots
            assert state.served.version == 2 and state.served.batcher.slots is slots
            await versions.hold(state, "canary", 2)  # the canary alias names what serves now: released
            assert versions.rollout(state, "canary") is None
        finally:
            await versions.close()

    try:
        asyncio.run(scenario())
    finally:
        for pool in pools:
            pool.shutdown(wait=True)
