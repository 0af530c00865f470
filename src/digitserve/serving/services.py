"""The composition root: builds, owns and closes every executor, thread, task and service of one
server process. Routes reach these services only through `deps.py`.

Threads and processes, each owned here (and only here):
- `forward`: the inference slots' threads (the ONNX forward passes of the served versions);
  `forward-beside`: a thread for each model's rollout slot and one for the pinned versions'
  (inference/versions.py), so a slow or broken candidate never holds up production's answers;
- `registry`: blocking registry reads and writes -- version loads, alias polls, rollout aliases,
  evidence, canary retirements;
- `catalog`: listings for `GET /v1/models` and `/v2` metadata; `browse`: the models pages;
- `decode`: the decode processes for large images (spawned on first use, by `decode-submit`, a
  thread that hands them their jobs: starting a process takes the event loop 0.1 s);
- `disagreements`, `feedback-spool`: one thread each for their writes; the feedback writer's
  drains run in daemon threads of their own (a hung registry call never blocks the exit);
- `compare`: the shadow and canary comparisons' thread, at the lowest priority (started on
  the first comparison); `asyncio`: the loop's default executor (`asyncio.to_thread`: the
  decompression and parsing of large `/v2` bodies);
- tasks: the alias poller, the feedback writer, the canary judge, the event-loop lag probe, the
  reload watcher of a multi-worker server, and each loaded version's batcher (owned by the versions).

Shutdown order (`close`), so that nothing accepted is lost and nothing waits on a closed pool:
stop the tasks; let every version answer what it has queued; stop the comparisons (those in
flight are counted); publish the last rollout evidence; finish the feedback spool's writes and
make the last feedback drain; then the forward, decode and registry pools.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from prometheus_client import multiprocess

from digitserve.config import Settings, worker_group
from digitserve.registry import LocalStore, ModelRegistry, open_store
from digitserve.registry.cache import CachedRegistry
from digitserve.registry.feedback import FeedbackSample, FeedbackStore
from digitserve.serving.browsing.browser import RegistryBrowser
from digitserve.serving.browsing.catalog import Catalog
from digitserve.serving.feedback.limits import RateLimiter, SharedBuckets
from digitserve.serving.feedback.service import FeedbackService, Server
from digitserve.serving.feedback.spool import FeedbackSpool
from digitserve.serving.http.admission import Admission
from digitserve.serving.http.shutdown import Drain
from digitserve.serving.inference.batching import InferenceSlots
from digitserve.serving.inference.decoding import ImageDecoder
from digitserve.serving.inference.processes import decode_pool
from digitserve.serving.inference.state import Refresh
from digitserve.serving.inference.versions import ModelVersions
from digitserve.serving.observability.loop import LoopLag
from digitserve.serving.observability.metrics import ServiceMetrics
from digitserve.serving.pipeline import PredictionPipeline
from digitserve.serving.rollouts.background import background_pool
from digitserve.serving.rollouts.following import RolloutAliases
from digitserve.serving.rollouts.judge import CanaryJudge
from digitserve.serving.rollouts.routing import Rollouts
from digitserve.serving.workers import ReloadBroadcast
from digitserve.storage.split import SplitStore

log = logging.getLogger(__name__)


def open_serving_registry(settings: Settings) -> ModelRegistry:
    """A remote registry gets a disk cache of verified blobs, so the server can start and keep
    serving while the registry is unreachable; a local folder needs none."""
    store = open_store(settings.registry, must_exist=True)  # a missing folder is unreachable, not empty
    if isinstance(store, LocalStore | SplitStore):  # a folder (the shipped one keeps writes elsewhere)
        return ModelRegistry(store)
    return CachedRegistry(store, settings.cache_dir)


@dataclass(frozen=True)
class Reloader:
    """Re-reading the aliases now: the served versions, then the rollout aliases; with several
    workers, `broadcast` makes every worker do it (serving/workers.py)."""

    versions: ModelVersions
    aliases: RolloutAliases
    broadcast: ReloadBroadcast | None

    async def reload(self, model: str | None = None, force: bool = False) -> list[Refresh]:
        """Re-read the aliases (of one model, or all) and swap what moved; follow the rollout aliases."""
        if model is not None:
            results = [await self.versions.refresh(model, force)]
            await self.aliases.refresh(model)
            return results
        results = await self.versions.refresh_all(force)
        await self.aliases.refresh_all()
        return results


class Services:
    """Everything one server process runs, built from its settings (in the app's lifespan)."""

    def __init__(self, settings: Settings, metrics: ServiceMetrics, admission: Admission, drain: Drain) -> None:
        self.settings, self.metrics, self.admission, self.drain = settings, metrics, admission, drain
        threads = settings.runtime.registry_threads
        self.pools = {
            "forward": ThreadPoolExecutor(settings.batching.inference_slots, thread_name_prefix="forward"),
            "forward-beside": ThreadPoolExecutor(len(settings.models) + 1, thread_name_prefix="forward-beside"),
            "registry": ThreadPoolExecutor(threads, thread_name_prefix="registry"),
            "catalog": ThreadPoolExecutor(threads, thread_name_prefix="catalog"),
            "browse": ThreadPoolExecutor(2, thread_name_prefix="browse"),
            "disagreements": ThreadPoolExecutor(1, thread_name_prefix="disagreements"),
            "feedback-spool": ThreadPoolExecutor(1, thread_name_prefix="feedback-spool"),
            "compare": background_pool(),  # its one thread starts on the first comparison
            "decode-submit": ThreadPoolExecutor(1, thread_name_prefix="decode-submit"),
            "default": ThreadPoolExecutor(2, thread_name_prefix="asyncio"),  # the loop's: asyncio.to_thread
        }
        self.registry = registry = open_serving_registry(settings)
        slots = InferenceSlots(settings.batching.inference_slots, self.pools["forward"])
        pools = self.pools["registry"], self.pools["forward-beside"]
        self.versions = ModelVersions(settings, registry, metrics, slots, *pools)
        store = registry.store
        in_progress = lambda: admission.in_progress  # noqa: E731
        pools = self.pools["compare"], self.pools["disagreements"]
        self.rollouts = Rollouts(settings, self.versions, store, metrics, in_progress, *pools)
        self.aliases = RolloutAliases(self.versions, self.rollouts, registry, settings.alias, self.pools["registry"])
        self.judge = CanaryJudge(settings, self.rollouts, self.versions, registry, metrics, self.pools["registry"])
        processes = settings.requests.decode_processes
        self.decoder = decoder = ImageDecoder(
            settings.requests, lambda: decode_pool(processes), self.pools["decode-submit"]
        )
        self.pipeline = PredictionPipeline(self.versions, decoder, self.rollouts, metrics, settings.requests)
        self.catalog = Catalog(registry, self.pools["catalog"])  # a slow listing never delays a load
        self.browser = RegistryBrowser(registry, self.pools["browse"])
        self.feedback = self._feedback(settings, registry)
        self.broadcast = ReloadBroadcast.from_env()
        self.reloader = Reloader(self.versions, self.aliases, self.broadcast)
        self.tasks: list[asyncio.Task[Any]] = []
        admission.check_room = self.versions.check_room

    def _feedback(self, settings: Settings, registry: ModelRegistry) -> FeedbackService:
        metrics = self.metrics

        def on_change(pending: int, written: int) -> None:
            metrics.feedback_spooled.set(pending)
            metrics.feedback_written.inc(written)

        def count(sample: FeedbackSample) -> None:
            metrics.count_feedback(sample.model, sample.version, sample.right)

        async def prepare(image: bytes, deadline: float) -> Any:
            return (await self.pipeline.prepare([image], ["image"], deadline))[0]

        f = settings.feedback
        store, writer = FeedbackStore(registry.store), self.pools["feedback-spool"]
        spool = FeedbackSpool(f.spool_dir, registry.uri, store, f.max_spooled, on_change, writer)
        on_change(spool.pending, 0)  # what an earlier run left spooled
        server = Server(self.versions.state, prepare, self.versions.resident, self.catalog.has_version, count)
        group, _ = worker_group()  # several workers: one set of buckets for all of them
        buckets = SharedBuckets(group / "feedback-buckets") if group is not None else None
        return FeedbackService(f.enabled, spool, RateLimiter(f.per_minute, buckets), server)

    async def reload(self, model: str | None = None, force: bool = False) -> list[Refresh]:
        return await self.reloader.reload(model, force)

    async def start(self) -> None:
        """The first load (a registry outage leaves the server up but not ready), then the tasks."""
        asyncio.get_running_loop().set_default_executor(self.pools["default"])  # /v2's large bodies
        await self.reload()
        self._task(self._calibrate(), "decode-calibration")
        self._task(self._poll(), "alias-poller")
        self._task(self.feedback.spool.run(), "feedback-writer")
        self._task(self.judge.run(), "canary-judge")
        self._task(LoopLag(self.metrics, lambda: self.admission.in_progress).run(), "loop-lag")
        if self.broadcast is not None:
            self._task(self.broadcast.watch(lambda: self.reload(force=True)), "reload-watcher")

    async def _calibrate(self) -> None:
        try:
            await asyncio.to_thread(self.decoder.calibrate)
        except Exception:  # the prices stand as they are: admission stays safe, only less generous
            log.exception("decode calibration failed")

    def _task(self, work: Coroutine[Any, Any, Any], name: str) -> None:
        self.tasks.append(asyncio.get_running_loop().create_task(work, name=name))

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.settings.poll_seconds)
            try:
                await self.reload()
            except Exception:  # polling must survive anything the registry throws at it
                log.exception("alias poll failed")

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.versions.close()  # answers everything still queued
        await self.rollouts.close()  # the comparisons in flight are counted...
        await self.judge.close()  # ...into the last evidence
        self.pools["feedback-spool"].shutdown(wait=True)  # every sample answered 201 is on disk
        await self.feedback.spool.close()  # what the registry cannot take now stays on disk for the next start
        self.pools["forward"].shutdown(wait=True)
        self.pools["forward-beside"].shutdown(wait=True)
        # the decode processes end with the job they are on (no process left behind), off the loop
        await asyncio.to_thread(self.decoder.executor.shutdown, wait=True, cancel_futures=True)
        for name, pool in self.pools.items():
            if name not in ("forward", "forward-beside", "feedback-spool"):
                pool.shutdown(wait=False, cancel_futures=True)
        if self.metrics.shared:
            multiprocess.mark_process_dead(os.getpid())
