"""The canary's judge: every second each canary is judged on its watch, and one that fails is
retired; every poll interval the evidence this process saw is published (publisher.py).

A canary past a threshold stops getting traffic from this process at once (its version is
released and refused here); then its alias is moved to production's version and marked retired,
by compare-and-swap, with an event naming the reason and the numbers -- retried every few seconds
until it is done or the alias no longer names that canary. Of several processes deciding at
once exactly one swap succeeds, so there is one event; the others find the alias moved.
Requests the canary already queued are answered by it, as in a hot-swap: no client sees an error.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from concurrent.futures import Executor

from digitserve.config import Settings
from digitserve.registry import AliasConflictError, ModelRegistry, RegistryError
from digitserve.serving.inference.versions import ModelVersions
from digitserve.serving.observability.metrics import ServiceMetrics
from digitserve.serving.rollouts.publisher import EvidencePublisher
from digitserve.serving.rollouts.routing import Rollouts, current_pair
from digitserve.serving.rollouts.watch import CanaryWatch, Pair

log = logging.getLogger(__name__)
WATCH_INTERVAL_S = 1.0
RETIRE_RETRY_S = 5.0
FINAL_PUBLISH_S = 5.0


class CanaryJudge:
    def __init__(
        self,
        settings: Settings,
        rollouts: Rollouts,
        versions: ModelVersions,
        registry: ModelRegistry,
        metrics: ServiceMetrics,
        io: Executor,
    ) -> None:
        self.alias, self.canary = settings.alias, settings.canary
        self.poll_seconds = settings.poll_seconds
        self.rollouts = rollouts
        self.versions = versions
        self.registry = registry
        self.metrics = metrics
        self.io = io  # the registry threads
        self.replica = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.publisher = EvidencePublisher(registry, settings.canary.alias, settings.shadow.alias, self.replica)

    async def run(self) -> None:
        """Judge every canary each second; publish the evidence every poll interval."""
        published_at = 0.0
        while True:
            await asyncio.sleep(WATCH_INTERVAL_S)
            self.rollouts.flush_drops()
            for pair, watch in list(self.rollouts.watches.items()):
                try:
                    await self._judge(pair, watch)
                except Exception:  # one model's trouble must not stop the watch of the others
                    log.exception("the watch of %s failed", pair)
            if time.monotonic() - published_at >= self.poll_seconds:
                published_at = time.monotonic()
                try:
                    await self.publish()
                except Exception:  # the registry's own failures are logged by the publisher
                    log.exception("rollout evidence could not be published")

    async def _judge(self, pair: Pair, watch: CanaryWatch) -> None:
        loop = asyncio.get_running_loop()
        if watch.retired and not watch.moved and time.monotonic() - watch.tried_at >= RETIRE_RETRY_S:
            watch.tried_at = time.monotonic()  # the alias move failed before: try again
            watch.moved = await loop.run_in_executor(self.io, self._retire, pair.model, watch)
            return
        state = self.versions.state(pair.model)
        if watch.retired or current_pair(state) != pair:
            return
        reason = watch.judge(self.canary)
        if reason is None or not self.canary.auto_rollback:
            return
        watch.retired = watch.evidence.rolled_back = reason
        watch.tried_at = time.monotonic()
        log.warning("%s: canary v%d fails its watch (%s); rolling it back", pair.model, watch.canary_version, reason)
        self.versions.release(state, "canary", refuse=reason)  # this process stops at once
        watch.moved = await loop.run_in_executor(self.io, self._retire, pair.model, watch)
        self.metrics.canary_rollback(pair.model, "moved" if watch.moved else "retrying")

    def _retire(self, model: str, watch: CanaryWatch) -> bool:
        """Park the canary alias on production's version, if it still names the judged version.
        True when nothing is left to do; False to try again (the registry failed, or it moved under us)."""
        alias = self.canary.alias or ""
        try:
            state = self.registry.get_alias(model, alias)
            if state is None or state.retired or state.version != watch.canary_version:
                return True  # someone (another replica) has retired or moved it already
            production = self.registry.resolve_alias(model, self.alias)
            agreed = self.rollouts.agreed(model, watch).to_dict()
            evidence = {"reason": watch.retired, "replica": self.replica, **watch.live(), **agreed}
            self.registry.move_alias(
                model,
                alias,
                production,
                reason=f"automatic rollback: {watch.retired}",
                expected=state,
                action="rollback",
                who=f"digitserve server {self.replica}",
                evidence=evidence,
                retire=True,
            )
        except AliasConflictError:
            return False  # moved meanwhile: the next try sees by whom
        except RegistryError as exc:
            log.warning("%s: could not retire the canary alias yet (%s); retrying", model, exc)
            return False
        return True

    async def publish(self) -> None:
        """Evidence taken on the event loop, written by a registry thread."""
        snapshots = self.publisher.snapshots(self.rollouts.watches, self.rollouts.agreed, self.rollouts.agreement)
        await asyncio.get_running_loop().run_in_executor(self.io, self.publisher.write, snapshots)

    async def close(self) -> None:
        """The last evidence, within a bound: a registry that cannot take it now never holds up a stop."""
        try:
            await asyncio.wait_for(self.publish(), FINAL_PUBLISH_S)
        except Exception as exc:
            log.warning("the last rollout evidence was not published: %r", exc)
