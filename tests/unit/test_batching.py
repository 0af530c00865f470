"""DynamicBatcher: batching, bounds, deadlines, isolation of failures, draining."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from digitserve.serving.batching import BatchStats, DynamicBatcher
from digitserve.serving.errors import DeadlineExceededError, QueueFullError, ShuttingDownError


def images(n: int, value: int = 0) -> np.ndarray:
    return np.full((n, 28, 28), value, dtype=np.uint8)


class Recorder:
    """A forward pass that records batch sizes; an image whose first pixel is 255 is 'poison'."""

    def __init__(self, delay: float = 0.0) -> None:
        self.sizes: list[int] = []
        self.delay = delay
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, x: np.ndarray) -> np.ndarray:
        self.gate.wait()
        time.sleep(self.delay)
        if (x[:, 0, 0] == 255).any():
            raise ValueError("poison")
        self.sizes.append(len(x))
        out = np.zeros((len(x), 10), dtype=np.float32)
        out[:, 0] = x[:, 1, 1]  # echo a pixel so answers can be matched to their requests
        return out


@pytest.fixture
def executor() -> ThreadPoolExecutor:
    with ThreadPoolExecutor(1) as pool:
        yield pool


async def _started(forward: Recorder, executor: ThreadPoolExecutor, **kw: float) -> DynamicBatcher:
    batcher = DynamicBatcher(forward, executor, **kw)  # type: ignore[arg-type]
    batcher.start()
    return batcher


def test_concurrent_requests_share_forward_passes_and_get_their_own_answers(executor: ThreadPoolExecutor) -> None:
    async def scenario() -> None:
        forward = Recorder()
        batcher = await _started(forward, executor, max_batch_size=16, max_delay_ms=20)
        futures = [batcher.submit(images(1, value=i), timeout_s=5) for i in range(40)]
        results = await asyncio.gather(*futures)
        assert [int(r[0, 0]) for r in results] == list(range(40))
        assert sum(forward.sizes) == 40 and max(forward.sizes) <= 16 and len(forward.sizes) <= 4
        await batcher.close()

    asyncio.run(scenario())


def test_a_lone_request_waits_at_most_the_delay(executor: ThreadPoolExecutor) -> None:
    async def scenario() -> None:
        batcher = await _started(Recorder(), executor, max_batch_size=64, max_delay_ms=30)
        start = time.perf_counter()
        await batcher.submit(images(1), timeout_s=5)
        assert time.perf_counter() - start < 0.5
        await batcher.close()

    asyncio.run(scenario())


def test_full_queue_is_refused_with_queue_full(executor: ThreadPoolExecutor) -> None:
    async def scenario() -> None:
        forward = Recorder()
        forward.gate.clear()  # hold the first batch inside the forward pass
        batcher = await _started(forward, executor, max_batch_size=4, max_delay_ms=0, max_queue=8)
        first = batcher.submit(images(4), timeout_s=5)
        await asyncio.sleep(0.05)  # the first batch is now in the forward pass
        queued = [batcher.submit(images(4), timeout_s=5) for _ in range(2)]
        with pytest.raises(QueueFullError):
            batcher.submit(images(1), timeout_s=5)
        with pytest.raises(QueueFullError):  # what a route asks before it decodes a request's images
            batcher.check_room(1)
        forward.gate.set()
        await asyncio.gather(first, *queued)
        await batcher.close()

    asyncio.run(scenario())


def test_requests_past_their_deadline_are_not_computed(executor: ThreadPoolExecutor) -> None:
    async def scenario() -> None:
        forward = Recorder()
        forward.gate.clear()
        batcher = await _started(forward, executor, max_batch_size=1, max_delay_ms=0)
        first = batcher.submit(images(1, 1), timeout_s=5)
        await asyncio.sleep(0.05)
        late = batcher.submit(images(1, 2), timeout_s=0.01)
        await asyncio.sleep(0.05)
        forward.gate.set()
        await first
        with pytest.raises(DeadlineExceededError):
            await late
        assert forward.sizes == [1]  # the expired request never reached the model
        await batcher.close()

    asyncio.run(scenario())


def test_one_bad_item_fails_only_its_own_request(executor: ThreadPoolExecutor) -> None:
    async def scenario() -> None:
        batcher = await _started(Recorder(), executor, max_batch_size=64, max_delay_ms=20)
        good = [batcher.submit(images(1, value=i), timeout_s=5) for i in range(5)]
        poison = images(1)
        poison[0, 0, 0] = 255
        bad = batcher.submit(poison, timeout_s=5)
        results = await asyncio.gather(*good, bad, return_exceptions=True)
        assert [int(r[0, 0]) for r in results[:5]] == [0, 1, 2, 3, 4]  # type: ignore[index]
        assert isinstance(results[5], ValueError)
        await batcher.close()

    asyncio.run(scenario())


def test_close_answers_everything_queued_then_refuses(executor: ThreadPoolExecutor) -> None:
    async def scenario() -> None:
        sizes: list[int] = []
        batcher = await _started(Recorder(delay=0.01), executor, max_batch_size=2, max_delay_ms=0)
        batcher.stats = BatchStats(on_batch=sizes.append)
        futures = [batcher.submit(images(1, value=i), timeout_s=5) for i in range(7)]
        await batcher.close()
        assert all(f.done() and not f.exception() for f in futures)
        assert sum(sizes) == 7
        with pytest.raises(ShuttingDownError):
            batcher.submit(images(1), timeout_s=5)

    asyncio.run(scenario())
