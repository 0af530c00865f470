"""Asynchronous dynamic batching without idle waiting: many requests, one forward pass.

When the runtime has a free slot and nothing of this model is running, a request runs at once.
While a batch runs, arrivals gather into the next one (up to `max_batch_size`); with one
inference slot the next batch starts the moment the slot frees. With several slots, a
gathering batch may take a second slot while its model's first batch still runs, once it is
full or its oldest request has waited `max_delay` -- the only waiting the delay setting allows.

Each request's future is created before it is queued; the queue is bounded (full: 503); every
request carries an absolute deadline (past it: 504, and the batcher skips it); the forward pass
runs in a worker thread; a failing batch is retried item by item so one bad input fails only
its own request. One batcher serves one model version, so a batch never mixes versions.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from digitserve.serving.errors import DeadlineExceededError, QueueFullError, RetiredError

log = logging.getLogger(__name__)

ForwardFn = Callable[[np.ndarray], np.ndarray]  # uint8 (B, 28, 28) -> probabilities (B, 10)


class InferenceSlots:
    """The forward passes a process may run at once, shared by every batcher in it."""

    def __init__(self, slots: int, executor: Executor | None = None) -> None:
        self.total = slots
        self.busy = 0
        # the server's composition root owns the forward threads; a batcher used alone makes its own
        self.executor = executor or ThreadPoolExecutor(slots, thread_name_prefix="forward")
        self._listeners: set[asyncio.Event] = set()

    @property
    def free(self) -> int:
        return self.total - self.busy

    def listen(self, event: asyncio.Event) -> None:
        self._listeners.add(event)

    def forget(self, event: asyncio.Event) -> None:
        self._listeners.discard(event)

    async def run(self, forward: ForwardFn, images: np.ndarray) -> np.ndarray:
        self.busy += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self.executor, forward, images)
        finally:
            self.busy -= 1
            for event in self._listeners:
                event.set()


@dataclass(slots=True)
class BatchTiming:
    """When a request's batch ran, and how large it was (for its trace)."""

    started: float = 0.0  # time.monotonic()
    ended: float = 0.0
    size: int = 0


@dataclass
class _Item:
    images: np.ndarray  # (n, 28, 28) uint8
    future: asyncio.Future[np.ndarray]
    deadline: float  # time.monotonic()
    enqueued: float
    timing: BatchTiming | None = None


@dataclass
class BatchStats:
    """Hooks for metrics, so this module does not depend on Prometheus."""

    on_batch: Callable[[int], None] = lambda size: None
    on_queue_depth: Callable[[int], None] = lambda depth: None


class DynamicBatcher:
    def __init__(
        self,
        forward: ForwardFn,
        slots: InferenceSlots,
        *,
        max_batch_size: int = 64,
        max_delay_ms: float = 2.0,
        max_queue: int = 2048,
        stats: BatchStats | None = None,
    ) -> None:
        self.forward = forward
        self.slots = slots
        self.max_batch_size = max_batch_size
        self.max_delay = max_delay_ms / 1000
        self.max_queue = max_queue
        self.stats = stats or BatchStats()
        self._queue: deque[_Item] = deque()
        self._queued_images = 0
        self._running = 0  # this batcher's batches in flight
        self._wakeup = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._batches: set[asyncio.Task[None]] = set()

    @property
    def queued_images(self) -> int:
        return self._queued_images

    def start(self) -> None:
        self.slots.listen(self._wakeup)
        self._task = asyncio.get_running_loop().create_task(self._run(), name="dynamic-batcher")

    def check_room(self, n: int) -> None:
        """QueueFullError unless `n` more images fit (a lone request always fits)."""
        if self._queued_images + n > self.max_queue and self._queue:
            raise QueueFullError(f"queue full ({self._queued_images} images waiting); retry shortly")

    def submit(
        self, images: np.ndarray, deadline: float, timing: BatchTiming | None = None
    ) -> asyncio.Future[np.ndarray]:
        """Queue (n, 28, 28) images; the future resolves to their (n, 10) probabilities.

        Synchronous on purpose: between picking this batcher and queueing there is no await,
        so a hot-swap cannot retire the batcher in between.
        """
        if self._closing:
            raise RetiredError("this model version is being retired; retry")
        self.check_room(len(images))
        future: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        self._queue.append(_Item(images, future, deadline, time.monotonic(), timing))
        self._queued_images += len(images)
        self.stats.on_queue_depth(self._queued_images)
        self._wakeup.set()
        return future

    async def close(self) -> None:
        """Stop taking requests, answer everything already queued, then stop."""
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            await self._task
        if self._batches:
            await asyncio.gather(*self._batches, return_exceptions=True)
        self.slots.forget(self._wakeup)

    # --- the loop ---------------------------------------------------------------------------

    def _wait_budget(self) -> float | None:
        """0 to dispatch now, seconds to wait at most, or None to wait for a wake-up."""
        if not self._queue or self.slots.free == 0:
            return None
        if self._running == 0 or self._closing or self._queued_images >= self.max_batch_size:
            return 0.0
        return max(0.0, self._queue[0].enqueued + self.max_delay - time.monotonic())

    async def _run(self) -> None:
        while True:
            if self._closing and not self._queue:
                return
            budget = self._wait_budget()
            if budget == 0.0:
                self._dispatch(self._take_batch())
                continue
            self._wakeup.clear()
            if budget is None:
                await self._wakeup.wait()
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), budget)

    def _take_batch(self) -> list[_Item]:
        batch: list[_Item] = []
        size = 0
        now = time.monotonic()
        while self._queue:
            item = self._queue[0]
            if batch and size + len(item.images) > self.max_batch_size:
                break
            self._queue.popleft()
            self._queued_images -= len(item.images)
            if item.future.done():  # the client went away
                continue
            if now > item.deadline:
                item.future.set_exception(DeadlineExceededError("the prediction waited past its deadline"))
                continue
            batch.append(item)
            size += len(item.images)
        self.stats.on_queue_depth(self._queued_images)
        return batch

    def _dispatch(self, batch: list[_Item]) -> None:
        if not batch:
            return
        self._running += 1
        task = asyncio.get_running_loop().create_task(self._process(batch))
        self._batches.add(task)
        task.add_done_callback(self._batch_done)

    def _batch_done(self, task: asyncio.Task[None]) -> None:
        self._batches.discard(task)
        self._running -= 1
        self._wakeup.set()

    async def _process(self, batch: list[_Item]) -> None:
        images = batch[0].images if len(batch) == 1 else np.concatenate([i.images for i in batch])
        self.stats.on_batch(len(images))
        started = time.monotonic()
        try:
            probs = await self.slots.run(self.forward, images)
        except Exception:
            log.exception("batch of %d images failed; retrying its requests one by one", len(images))
            await self._process_one_by_one(batch)
            return
        ended, start = time.monotonic(), 0
        for item in batch:
            if item.timing is not None:
                item.timing.started, item.timing.ended, item.timing.size = started, ended, len(images)
            end = start + len(item.images)
            if not item.future.done():
                item.future.set_result(probs[start:end])
            start = end

    async def _process_one_by_one(self, batch: list[_Item]) -> None:
        for item in batch:
            started = time.monotonic()
            try:
                result = await self.slots.run(self.forward, item.images)
            except Exception as exc:
                if not item.future.done():
                    item.future.set_exception(exc)
                continue
            if item.timing is not None:
                item.timing.started, item.timing.ended, item.timing.size = started, time.monotonic(), len(item.images)
            if not item.future.done():
                item.future.set_result(result)


__all__ = [
    "BatchStats",
    "BatchTiming",
    "DeadlineExceededError",
    "DynamicBatcher",
    "InferenceSlots",
    "QueueFullError",
    "RetiredError",
]
