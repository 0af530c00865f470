"""The server's feedback spool and rate limit, on a real folder registry that goes away and comes back."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from digitserve.registry import LocalStore
from digitserve.registry.feedback import FeedbackSample, FeedbackStore
from digitserve.serving.errors import OverloadedError, ServiceUnavailableError
from digitserve.serving.feedback import limits as feedback_module
from digitserve.serving.feedback import spool as spool_module
from digitserve.serving.feedback.limits import RateLimiter, SharedBuckets
from digitserve.serving.feedback.spool import FeedbackSpool


def sample(seed: int) -> FeedbackSample:
    pixels = np.random.default_rng(seed).integers(0, 256, (28, 28), dtype=np.uint8)
    return FeedbackSample("cnn", 1, 3, 8, pixels, "2026-12-01T00:00:00.000Z")


def spool_for(tmp_path: Path, max_spooled: int = 100) -> tuple[FeedbackSpool, FeedbackStore, Path]:
    root = tmp_path / "registry"
    root.mkdir()
    store = FeedbackStore(LocalStore(root, must_exist=True))  # a server's view: a missing folder is an outage
    return FeedbackSpool(tmp_path / "spool", str(root), store, max_spooled), store, root


def test_spooled_samples_wait_while_the_registry_is_away_and_are_written_when_it_is_back(tmp_path: Path) -> None:
    spool, store, root = spool_for(tmp_path)

    async def scenario() -> None:
        root.rename(tmp_path / "away")  # the registry is unreachable
        assert [await spool.put(sample(i)) for i in range(5)] == [True] * 5
        assert await spool.put(sample(0)) is False  # a duplicate is one file
        assert spool.drain() == 5 and "does not exist" in (spool.last_error or "")
        assert not root.exists(), "writing feedback must never recreate a missing registry folder"
        (tmp_path / "away").rename(root)
        assert spool.drain() == 0 and spool.last_error is None and spool.written == 5

    asyncio.run(scenario())
    assert sorted(store.ids()) == sorted(sample(i).id for i in range(5))
    assert store.sample(sample(3).id).label == 8


def test_what_is_spooled_survives_a_restart(tmp_path: Path) -> None:
    spool, store, root = spool_for(tmp_path)
    root.rename(tmp_path / "away")
    asyncio.run(spool.put(sample(1)))
    asyncio.run(spool.close())  # the last attempt fails: the sample stays on disk
    (tmp_path / "away").rename(root)
    again = FeedbackSpool(tmp_path / "spool", str(root), store, 100)  # the next server, same folder
    assert again.pending == 1 and again.drain() == 0
    assert store.ids() == [sample(1).id]


def test_a_full_spool_refuses_new_feedback(tmp_path: Path) -> None:
    spool, _, root = spool_for(tmp_path, max_spooled=2)
    root.rename(tmp_path / "away")

    async def scenario() -> None:
        await spool.put(sample(1))
        await spool.put(sample(2))
        with pytest.raises(OverloadedError, match="waiting for the registry"):
            await spool.put(sample(3))

    asyncio.run(scenario())


@pytest.mark.parametrize("junk", ['{"not": "a sample"}', "not json at all", "[1, 2]", ""])
def test_a_file_that_is_not_a_sample_is_set_aside(tmp_path: Path, junk: str) -> None:
    spool, store, _ = spool_for(tmp_path)
    spool.folder.mkdir(parents=True)
    (spool.folder / ("0" * 64 + ".json")).write_text(junk)  # the oldest file: it must not block the others
    asyncio.run(spool.put(sample(4)))
    assert spool.drain() == 0 and spool.last_error is None
    assert store.ids() == [sample(4).id]
    assert (spool.folder / "damaged" / ("0" * 64 + ".json")).exists()


def test_a_spool_folder_that_cannot_be_written_is_a_503(tmp_path: Path) -> None:
    spool, _, _ = spool_for(tmp_path)
    spool.folder.parent.mkdir(parents=True, exist_ok=True)
    spool.folder.write_text("a file where the folder should be")
    with pytest.raises(ServiceUnavailableError, match="spool folder is not writable"):
        asyncio.run(spool.put(sample(5)))


def test_the_rate_limit_is_per_client_and_refills(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    monkeypatch.setattr(feedback_module.time, "monotonic", lambda: now[0])
    limiter = RateLimiter(per_minute=3, max_clients=4)
    a, b, c = "10.0.0.1", "10.0.1.1", "10.0.2.1"
    assert [limiter.take(a) for _ in range(3)] == [None, None, None]
    wait = limiter.take(a)
    assert wait is not None and wait == pytest.approx(20.0)  # one token every 20 s
    assert limiter.take(b) is None  # another client has its own bucket
    now[0] += 20.0
    assert limiter.take(a) is None and limiter.take(a) is not None
    limiter.take(c)  # a third client: the longest-idle buckets go, memory stays bounded
    assert len(limiter.buckets._buckets) <= 4  # type: ignore[attr-defined]


@pytest.mark.parametrize("shared", [False, True])
def test_a_network_and_odd_strings_share_buckets(tmp_path: Path, shared: bool) -> None:
    """A /24 holds ten clients' worth; what is not an address is one client; an IPv4 client seen
    through an IPv6 socket is that IPv4 client; two workers share one file of buckets."""
    buckets = SharedBuckets(tmp_path / "buckets") if shared else None
    limiter = RateLimiter(per_minute=2, buckets=buckets)
    answered = [limiter.take(f"192.0.2.{i}") is None for i in range(1, 31) for _ in range(2)]
    assert sum(answered) == 20  # 2 each, until the network's 10 x 2 are spent
    assert [limiter.take(junk) is None for junk in ("x" * 30_000, "unknown", "junk")] == [True, True, False]
    assert limiter.take("198.51.100.9") is None and limiter.take("::ffff:198.51.100.9") is None
    assert limiter.take("198.51.100.9") is not None  # the same client, however it arrives
    if shared:
        other_worker = RateLimiter(per_minute=2, buckets=SharedBuckets(tmp_path / "buckets"))
        assert other_worker.take("192.0.2.1") is not None  # spent in the first worker
        assert other_worker.take("203.0.113.1") is None


def test_a_duplicate_is_known_to_every_worker_on_the_folder_after_it_was_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two workers share a spool folder: worker A spools and writes a sample; the same sample sent
    to worker B afterwards (not in B's memory, no longer in the spool) is a duplicate. Only the
    newest RECENT_IDS markers of written samples are kept."""
    first, store, root = spool_for(tmp_path)
    second = FeedbackSpool(tmp_path / "spool", str(root), store, 100)  # the other worker, same folder
    monkeypatch.setattr(spool_module, "PRUNE_EVERY", 2)
    monkeypatch.setattr(spool_module, "RECENT_IDS", 3)

    async def scenario() -> None:
        assert await first.put(sample(0)) is True
        assert first.drain() == 0 and store.ids() == [sample(0).id]
        assert await second.put(sample(0)) is False, "written by the other worker: a duplicate"
        assert second.pending == 0 and second.drain() == 0
        for i in range(1, 6):  # five more written by A: markers pruned to the newest three
            assert await first.put(sample(i)) is True
            assert first.drain() == 0
        markers = sorted(p.name for p in (first.folder / "written").iterdir())
        assert len(markers) <= 3 + 1 and sample(5).id in markers, markers  # pruned every 2 writes
        assert await second.put(sample(5)) is False

    asyncio.run(scenario())
    assert sorted(store.ids()) == sorted(sample(i).id for i in range(6))
