"""Asynchronous dynamic batching: many requests, one forward pass.

Each request's future is created before it is queued; the queue is bounded (full: 503); every
request carries a deadline (past it: 504, and the batcher skips it); the forward pass runs in
a worker thread so the event loop keeps accepting requests; a failing batch is retried item by
item so one bad input fails only its own request. One batcher serves one model version, so a
batch never mixes versions.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field

import numpy as np

from digitserve.serving.errors import DeadlineExceededError, QueueFullError, ShuttingDownError

log = logging.getLogger(__name__)

ForwardFn = Callable[[np.ndarray], np.ndarray]  # uint8 (B, 28, 28) -> probabilities (B, 10)


@dataclass
class _Item:
    images: np.ndarray  # (n, 28, 28) uint8
    future: asyncio.Future[np.ndarray]
    deadline: float
    enqueued: float = field(default_factory=time.perf_counter)


@dataclass
class BatchStats:
    """Hooks for metrics, so this module does not depend on Prometheus."""

    on_batch: Callable[[int], None] = lambda size: None
    on_queue_depth: Callable[[int], None] = lambda depth: None


class DynamicBatcher:
    def __init__(
        self,
        forward: ForwardFn,
        executor: Executor,
        *,
        max_batch_size: int = 64,
        max_delay_ms: float = 2.0,
        max_queue: int = 2048,
        stats: BatchStats | None = None,
    ) -> None:
        self.forward = forward
        self.executor = executor
        self.max_batch_size = max_batch_size
        self.max_delay = max_delay_ms / 1000
        self.max_queue = max_queue
        self.stats = stats or BatchStats()
        self._queue: deque[_Item] = deque()
        self._queued_images = 0
        self._wakeup = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None

    @property
    def queued_images(self) -> int:
        return self._queued_images

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="dynamic-batcher")

    def submit(self, images: np.ndarray, timeout_s: float) -> asyncio.Future[np.ndarray]:
        """Queue (n, 28, 28) images; the future resolves to their (n, 10) probabilities.

        Synchronous on purpose: between picking this batcher and queueing there is no await,
        so a hot-swap cannot retire the batcher in between.
        """
        if self._closing:
            raise ShuttingDownError("this model version is being retired; retry")
        self.check_room(len(images))
        future: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        self._queue.append(_Item(images, future, time.perf_counter() + timeout_s))
        self._queued_images += len(images)
        self.stats.on_queue_depth(self._queued_images)
        self._wakeup.set()
        return future

    def check_room(self, n: int) -> None:
        """QueueFullError unless `n` more images fit (a lone request always fits)."""
        if self._queued_images + n > self.max_queue and self._queue:
            raise QueueFullError(f"queue full ({self._queued_images} images waiting); retry shortly")

    async def close(self) -> None:
        """Stop taking requests, answer everything already queued, then stop."""
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            await self._task

    async def _run(self) -> None:
        while True:
            if not self._queue:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            await self._fill_window()
            batch = self._take_batch()
            if batch:
                await self._process(batch)

    async def _fill_window(self) -> None:
        """Give a lone request up to max_delay for company; a full or closing queue goes at once."""
        deadline = self._queue[0].enqueued + self.max_delay
        while self._queued_images < self.max_batch_size and not self._closing:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                return
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except TimeoutError:
                return

    def _take_batch(self) -> list[_Item]:
        batch: list[_Item] = []
        size = 0
        now = time.perf_counter()
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

    async def _process(self, batch: list[_Item]) -> None:
        images = batch[0].images if len(batch) == 1 else np.concatenate([i.images for i in batch])
        loop = asyncio.get_running_loop()
        self.stats.on_batch(len(images))
        try:
            probs = await loop.run_in_executor(self.executor, self.forward, images)
        except Exception:
            log.exception("batch of %d images failed; retrying its requests one by one", len(images))
            await self._process_one_by_one(batch)
            return
        start = 0
        for item in batch:
            end = start + len(item.images)
            if not item.future.done():
                item.future.set_result(probs[start:end])
            start = end

    async def _process_one_by_one(self, batch: list[_Item]) -> None:
        loop = asyncio.get_running_loop()
        for item in batch:
            try:
                result = await loop.run_in_executor(self.executor, self.forward, item.images)
            except Exception as exc:
                if not item.future.done():
                    item.future.set_exception(exc)
                continue
            if not item.future.done():
                item.future.set_result(result)
