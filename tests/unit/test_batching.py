"""DynamicBatcher: no idle waiting, batching while busy, bounds, deadlines, isolation of failures, draining."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest
from support.waits import until

from digitserve.serving.inference.batching import (
    BatchStats,
    DeadlineExceededError,
    DynamicBatcher,
    InferenceSlots,
    QueueFullError,
    RetiredError,
)


def images(n: int, value: int = 0) -> np.ndarray:
    return np.full((n, 28, 28), value, dtype=np.uint8)


class Recorder:
    """A forward pass that records batch sizes; an image whose first pixel is 255 is 'poison'."""

    def __init__(self, delay: float = 0.0) -> None:
        self.sizes: list[int] = []
        self.entered: list[int] = []  # batch sizes as they enter the forward pass (before the gate)
        self.delay = delay
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, x: np.ndarray) -> np.ndarray:
        self.entered.append(len(x))
        self.gate.wait(timeout=30)
        time.sleep(self.delay)
        if (x[:, 0, 0] == 255).any():
            raise ValueError("poison")
        self.sizes.append(len(x))
        out = np.zeros((len(x), 10), dtype=np.float32)
        out[:, 0] = x[:, 1, 1]  # echo a pixel so answers can be matched to their requests
        return out


@pytest.fixture
def slots() -> Iterator[InferenceSlots]:
    pool = InferenceSlots(1)
    yield pool
    pool.executor.shutdown(wait=True)


async def _started(forward: Recorder, slots: InferenceSlots, **kw: float) -> DynamicBatcher:
    batcher = DynamicBatcher(forward, slots, **kw)  # type: ignore[arg-type]
    batcher.start()
    return batcher


def within(seconds: float) -> float:
    """A deadline `seconds` from now (the batcher takes absolute monotonic deadlines)."""
    return time.monotonic() + seconds


def test_concurrent_requests_share_forward_passes_and_get_their_own_answers(slots: InferenceSlots) -> None:
    async def scenario() -> None:
        forward = Recorder()
        batcher = await _started(forward, slots, max_batch_size=16, max_delay_ms=20)
        futures = [batcher.submit(images(1, value=i), within(5)) for i in range(40)]
        results = await asyncio.gather(*futures)
        assert [int(r[0, 0]) for r in results] == list(range(40))
        assert sum(forward.sizes) == 40 and max(forward.sizes) <= 16 and len(forward.sizes) <= 4
        await batcher.close()

    asyncio.run(scenario())


def test_a_request_to_an_idle_runtime_runs_at_once_whatever_the_delay(slots: InferenceSlots) -> None:
    async def scenario() -> None:
        forward = Recorder()
        # A delay of 60 s: were a lone request to wait for company, it would miss its 5 s deadline.
        batcher = await _started(forward, slots, max_batch_size=64, max_delay_ms=60_000)
        for i in range(3):  # one after another: each finds the runtime idle
            result = await asyncio.wait_for(batcher.submit(images(1, value=i), within(5)), 5)
            assert int(result[0, 0]) == i
        assert forward.sizes == [1, 1, 1]
        await batcher.close()

    asyncio.run(scenario())


def test_arrivals_gather_into_the_next_batch_while_one_runs(slots: InferenceSlots) -> None:
    async def scenario() -> None:
        forward = Recorder()
        forward.gate.clear()  # hold the first batch inside the forward pass
        batcher = await _started(forward, slots, max_batch_size=4, max_delay_ms=0)
        first = batcher.submit(images(1, value=0), within(10))
        await until(lambda: forward.entered == [1], "the first request runs alone, at once", timeout_s=10)
        later = [batcher.submit(images(1, value=i), within(10)) for i in range(1, 7)]
        await asyncio.sleep(0.05)
        assert forward.entered == [1]  # one slot: nothing else starts while it is busy
        forward.gate.set()
        results = await asyncio.gather(first, *later)
        assert [int(r[0, 0]) for r in results] == list(range(7))
        assert forward.sizes == [1, 4, 2]  # the six gathered, cut at the batch size
        await batcher.close()

    asyncio.run(scenario())


def test_with_two_slots_a_gathering_batch_starts_when_full_or_after_the_delay() -> None:
    async def scenario(slots: InferenceSlots) -> None:
        forward = Recorder()
        forward.gate.clear()
        batcher = await _started(forward, slots, max_batch_size=4, max_delay_ms=60_000)
        running = [batcher.submit(images(1), within(20))]
        await until(lambda: forward.entered == [1], "the first request takes a slot at once", timeout_s=10)
        running += [batcher.submit(images(1), within(20)) for _ in range(3)]
        await asyncio.sleep(0.05)
        assert forward.entered == [1]  # 3 of 4 gathered and the delay (60 s) not over: they wait
        running.append(batcher.submit(images(1), within(20)))
        await until(lambda: forward.entered == [1, 4], "a full batch takes the second slot", timeout_s=10)
        forward.gate.set()
        await asyncio.gather(*running)
        await batcher.close()

        forward = Recorder()
        forward.gate.clear()
        batcher = await _started(forward, slots, max_batch_size=64, max_delay_ms=20)
        first = batcher.submit(images(1), within(20))
        await until(lambda: forward.entered == [1], "the first request takes a slot at once", timeout_s=10)
        second = batcher.submit(images(1), within(20))
        await until(
            lambda: forward.entered == [1, 1], "after the delay, a partial batch takes the free slot", timeout_s=10
        )
        forward.gate.set()
        await asyncio.gather(first, second)
        await batcher.close()

    pool = InferenceSlots(2)
    try:
        asyncio.run(scenario(pool))
    finally:
        pool.executor.shutdown(wait=True)


def test_full_queue_is_refused_with_queue_full(slots: InferenceSlots) -> None:
    async def scenario() -> None:
        forward = Recorder()
        forward.gate.clear()  # hold the first batch inside the forward pass
        batcher = await _started(forward, slots, max_batch_size=4, max_delay_ms=0, max_queue=8)
        first = batcher.submit(images(4), within(5))
        await until(lambda: forward.entered == [4], "the first batch in the forward pass", timeout_s=10)
        queued = [batcher.submit(images(4), within(5)) for _ in range(2)]
        with pytest.raises(QueueFullError):
            batcher.submit(images(1), within(5))
        with pytest.raises(QueueFullError):  # what a route asks before it decodes a request's images
            batcher.check_room(1)
        forward.gate.set()
        await asyncio.gather(first, *queued)
        await batcher.close()

    asyncio.run(scenario())


def test_requests_past_their_deadline_are_not_computed(slots: InferenceSlots) -> None:
    async def scenario() -> None:
        forward = Recorder()
        forward.gate.clear()
        batcher = await _started(forward, slots, max_batch_size=1, max_delay_ms=0)
        first = batcher.submit(images(1, 1), within(5))
        await asyncio.sleep(0.05)
        late = batcher.submit(images(1, 2), within(0.01))
        await asyncio.sleep(0.05)
        forward.gate.set()
        await first
        with pytest.raises(DeadlineExceededError):
            await late
        assert forward.sizes == [1]  # the expired request never reached the model
        await batcher.close()

    asyncio.run(scenario())


def test_one_bad_item_fails_only_its_own_request(slots: InferenceSlots) -> None:
    async def scenario() -> None:
        batcher = await _started(Recorder(), slots, max_batch_size=64, max_delay_ms=20)
        good = [batcher.submit(images(1, value=i), within(5)) for i in range(5)]
        poison = images(1)
        poison[0, 0, 0] = 255
        bad = batcher.submit(poison, within(5))
        results = await asyncio.gather(*good, bad, return_exceptions=True)
        assert [int(r[0, 0]) for r in results[:5]] == [0, 1, 2, 3, 4]  # type: ignore[index]
        assert isinstance(results[5], ValueError)
        await batcher.close()

    asyncio.run(scenario())


def test_close_answers_everything_queued_then_refuses(slots: InferenceSlots) -> None:
    async def scenario() -> None:
        sizes: list[int] = []
        batcher = await _started(Recorder(delay=0.01), slots, max_batch_size=2, max_delay_ms=0)
        batcher.stats = BatchStats(on_batch=sizes.append)
        futures = [batcher.submit(images(1, value=i), within(5)) for i in range(7)]
        await batcher.close()
        assert all(f.done() and not f.exception() for f in futures)
        assert sum(sizes) == 7
        with pytest.raises(RetiredError):
            batcher.submit(images(1), within(5))

    asyncio.run(scenario())
