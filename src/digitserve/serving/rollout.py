"""Safe rollouts: a canary that answers a share of the traffic, a shadow that runs unseen beside
production, and the watch that retires a canary doing worse than production (docs/rollouts.md).

- **Routing.** A request that the served alias would answer goes to the canary with probability
  `CANARY_PERCENT` -- decided by a hash of its `X-Digitserve-Sticky` header when it sends one, so
  one user stays on one side. A request pinned with `?version=` or `?alias=` is never diverted.
- **Watching** (canary.py). Each (production, canary) pair has its own sliding window of each
  side's answers, server errors (a canary that fails is answered by production instead, and
  counted), deadline misses and latency, and a share of the canary's answers is compared with
  production's (comparison.py). The canary is judged every second.
- **Retiring.** A canary past a threshold stops getting traffic from this process at once; then
  its alias is moved to production's version and marked retired, by compare-and-swap, with an
  event naming the reason and the numbers -- retried every few seconds until it is done or the
  alias no longer names that canary. Of several processes deciding at once exactly one swap
  succeeds, so there is one event; the others find the alias moved. Requests the canary already
  queued are answered by it, as in a hot-swap: no client sees an error.
- **Evidence** (evidence.py): every `POLL_SECONDS` each process publishes what it saw.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import socket
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from digitserve.config import Settings
from digitserve.registry import AliasConflictError, ModelRegistry, RegistryError
from digitserve.serving.canary import CanaryWatch, sticky_side
from digitserve.serving.comparison import Agreement, Comparer, Comparison, DisagreementLog, Job
from digitserve.serving.evidence import EvidencePublisher
from digitserve.serving.manager import LoadedVersion, ModelManager, ModelState

log = logging.getLogger(__name__)
STICKY_HEADER = "x-digitserve-sticky"
WATCH_INTERVAL_S = 1.0
RETIRE_RETRY_S = 5.0
FINAL_PUBLISH_S = 5.0
MAX_WATCHES = 32
SPARE_IN_PROGRESS = 4  # with this many predictions in progress a process has no spare capacity
Pair = tuple[str, int, int]  # (model, production version, canary version)


@dataclass(frozen=True)
class Route:
    """The version that answers a request, the alias that chose it, and which side it is on."""

    loaded: LoadedVersion
    alias: str | None
    side: str  # "production", "canary" or "pinned"


class Rollouts:
    def __init__(
        self, settings: Settings, manager: ModelManager, registry: ModelRegistry, in_progress: Callable[[], int]
    ) -> None:
        self.settings = settings
        self.manager = manager
        self.registry = registry
        self.metrics = manager.metrics
        self.in_progress = in_progress
        self.replica = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.watches: dict[Pair, CanaryWatch] = {}
        self.agreement: dict[tuple[str, str, int, int], Agreement] = {}  # (kind, model, production, candidate)
        self.dropped: Counter[tuple[str, str]] = Counter()  # counted here, added to the metrics each second
        self.comparer = Comparer(self._spare, self._record, settings.shadow_max_backlog, self._dropped)
        self.disagreements = DisagreementLog(registry.store, settings.disagreement_samples)
        self.evidence = EvidencePublisher(registry, settings, self.replica)

    # --- on the request path ------------------------------------------------------------------

    def route(self, state: ModelState, sticky: str | None) -> Route:
        """Production, or the canary for its share of the requests (a sticky key keeps its side)."""
        served = self.manager.current(state.name)
        canary = state.rollout.get("canary")
        percent = self.settings.canary_percent
        if canary is not None and percent > 0:
            chosen = sticky_side(sticky, percent) if sticky else random.random() * 100 < percent
            if chosen:
                return Route(canary, self.settings.canary_alias, "canary")
        return Route(served, self.settings.alias, "production")

    def production_route(self, model: str) -> Route:
        """Where a request the canary could not take goes instead."""
        return Route(self.manager.current(model), self.settings.alias, "production")

    def answered(self, route: Route, images: np.ndarray, probabilities: np.ndarray, latency_s: float) -> None:
        """After the answer is computed: count it, and offer the comparisons it calls for."""
        loaded = route.loaded
        self.metrics.routed(loaded.model, route.alias or "", loaded.version, latency_s)
        if route.side == "pinned":
            return
        state = self.manager.state(loaded.model)
        watch = self._watch(state, route)
        if route.side == "canary":
            if watch is not None:
                watch.canary.add(latency_s)
                watch.evidence.candidate_requests += 1
            if random.random() * 100 < self.settings.canary_compare_percent and state.served is not None:
                self.comparer.offer(Job("canary", loaded.servable, probabilities, state.served.servable, images, False))
            return
        if watch is not None:
            watch.production.add(latency_s)
            watch.evidence.production_requests += 1
        shadow = state.rollout.get("shadow")
        if shadow is not None and random.random() * 100 < self.settings.shadow_percent:
            self.comparer.offer(Job("shadow", loaded.servable, probabilities, shadow.servable, images, True))

    def failed(self, route: Route, *, error: bool = False, miss: bool = False) -> None:
        """A canary that failed or had no room (answered by production instead), or a missed deadline."""
        loaded = route.loaded
        self.metrics.rollout_failure(loaded.model, route.alias or "", loaded.version, "error" if error else "deadline")
        watch = self._watch(self.manager.state(loaded.model), route) if route.side != "pinned" else None
        if watch is None:
            return
        side = watch.canary if route.side == "canary" else watch.production
        side.add(None, error=error, miss=miss)
        if route.side == "canary":
            watch.evidence.candidate_errors += error
            watch.evidence.candidate_deadline_misses += miss
        else:
            watch.evidence.production_deadline_misses += miss

    def _watch(self, state: ModelState, route: Route) -> CanaryWatch | None:
        """The watch of the pair this answer belongs to: the version that answered, and the other side."""
        canary, served = state.rollout.get("canary"), state.served
        if canary is None or served is None:
            return None
        if route.side == "canary":
            pair = (state.name, served.version, route.loaded.version)
        else:
            pair = (state.name, route.loaded.version, canary.version)
        watch = self.watches.get(pair)
        if watch is None:
            watch = self.watches[pair] = CanaryWatch(pair[1], pair[2], self.settings.canary_window_s)
            self._forget_old_watches(state)
        return watch

    def _forget_old_watches(self, state: ModelState) -> None:
        if len(self.watches) <= MAX_WATCHES:
            return
        current = self._current_pair(state)
        for pair in list(self.watches):
            if pair != current and len(self.watches) > MAX_WATCHES:
                del self.watches[pair]

    def _current_pair(self, state: ModelState) -> Pair | None:
        canary, served = state.rollout.get("canary"), state.served
        return (state.name, served.version, canary.version) if canary and served else None

    def _dropped(self, kind: str, reason: str) -> None:
        self.dropped[(kind, reason)] += 1  # on the request path under load: a dict, not a metrics write

    def _flush_drops(self) -> None:
        for (kind, reason), n in self.dropped.items():
            self.metrics.dropped_comparisons.labels(kind, reason).inc(n)
        self.dropped.clear()

    def _spare(self) -> str | None:
        """None while this process has room for background comparisons, else why not."""
        if self.in_progress() >= SPARE_IN_PROGRESS:
            return "busy"
        for state in self.manager.states.values():
            for loaded in (state.served, state.rollout.get("canary")):
                if loaded is not None and loaded.batcher.queued_images >= self.settings.max_batch_size:
                    return "queue"
        return None

    def _record(self, c: Comparison) -> None:
        key = (c.kind, c.model, c.production_version, c.candidate_version)
        self.agreement.setdefault(key, Agreement()).merge(c.per_class)
        self.metrics.compared(c)
        watch = self.watches.get((c.model, c.production_version, c.candidate_version))
        if c.kind == "canary" and watch is not None:
            watch.canary.compare(len(c.production), len(c.production) - len(c.disagree))
        self.disagreements.keep(c, c.disagree)

    # --- the watch -------------------------------------------------------------------------------------

    async def run(self) -> None:
        """Judge every canary each second; publish the evidence every poll interval."""
        published_at = 0.0
        while True:
            await asyncio.sleep(WATCH_INTERVAL_S)
            self._flush_drops()
            for pair, watch in list(self.watches.items()):
                try:
                    await self._judge(pair, watch)
                except Exception:  # one model's trouble must not stop the watch of the others
                    log.exception("the watch of %s failed", pair)
            if time.monotonic() - published_at >= self.settings.poll_seconds:
                published_at = time.monotonic()
                with contextlib.suppress(Exception):
                    await self.publish()

    async def _judge(self, pair: Pair, watch: CanaryWatch) -> None:
        model = pair[0]
        loop = asyncio.get_running_loop()
        if watch.retired and not watch.moved and time.monotonic() - watch.tried_at >= RETIRE_RETRY_S:
            watch.tried_at = time.monotonic()  # the alias move failed before: try again
            watch.moved = await loop.run_in_executor(self.manager.loader, self._retire, model, watch)
            return
        state = self.manager.state(model)
        if watch.retired or self._current_pair(state) != pair:
            return
        reason = watch.judge(self.settings)
        if reason is None or not self.settings.canary_auto_rollback:
            return
        watch.retired = watch.evidence.rolled_back = reason
        watch.tried_at = time.monotonic()
        log.warning("%s: canary v%d fails its watch (%s); rolling it back", model, watch.canary_version, reason)
        self.manager.rollouts.drop(state, "canary", refuse=reason)  # this process stops at once
        watch.moved = await loop.run_in_executor(self.manager.loader, self._retire, model, watch)
        self.metrics.canary_rollback(model, "moved" if watch.moved else "retrying")

    def _retire(self, model: str, watch: CanaryWatch) -> bool:
        """Park the canary alias on production's version, if it still names the judged version.
        True when nothing is left to do; False to try again (the registry failed, or it moved under us)."""
        alias = self.settings.canary_alias or ""
        try:
            state = self.registry.get_alias(model, alias)
            if state is None or state.retired or state.version != watch.canary_version:
                return True  # someone (another replica) has retired or moved it already
            production = self.registry.resolve_alias(model, self.settings.alias)
            evidence = {"reason": watch.retired, "replica": self.replica, **watch.live(), **self.agreed(model, watch)}
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

    def agreed(self, model: str, watch: CanaryWatch) -> dict[str, Any]:
        a = self.agreement.get(("canary", model, watch.production_version, watch.canary_version), Agreement())
        return {"compared": a.compared, "agreed": a.agreed, "per_class": {k: list(v) for k, v in a.per_class.items()}}

    async def publish(self) -> None:
        """Evidence taken on the event loop, written by a registry thread."""
        snapshots = self.evidence.snapshots(self.watches, self.agreed, self.agreement)
        await asyncio.get_running_loop().run_in_executor(self.manager.loader, self.evidence.write, snapshots)

    def status(self, model: str) -> dict[str, Any]:
        """The canary and the shadow of one model, with their live numbers (GET /v1/models/{model})."""
        state = self.manager.state(model)
        canary, shadow = state.rollout.get("canary"), state.rollout.get("shadow")
        pair = self._current_pair(state)
        watch = self.watches.get(pair) if pair else None
        out: dict[str, Any] = {"canary": None, "shadow": None}
        if self.settings.canary_alias:
            out["canary"] = {
                "alias": self.settings.canary_alias,
                "percent": self.settings.canary_percent,
                "version": canary.version if canary else None,
                "auto_rollback": self.settings.canary_auto_rollback,
                "live": watch.live() if watch else None,
                "agreement": self.agreed(model, watch) if watch else None,
                "rolled_back_here": {str(v): why for v, why in state.refused.items()},
                "error": state.rollout_errors.get("canary"),
            }
        if self.settings.shadow_alias:
            pairs = {k: a for k, a in self.agreement.items() if k[0] == "shadow" and k[1] == model}
            out["shadow"] = {
                "alias": self.settings.shadow_alias,
                "percent": self.settings.shadow_percent,
                "version": shadow.version if shadow else None,
                "error": state.rollout_errors.get("shadow"),
                "agreement": {
                    f"v{p}-v{c}": {"compared": a.compared, "agreed": a.agreed, "per_class": a.per_class}
                    for (_, _, p, c), a in pairs.items()
                },
            }
        return out

    async def close(self) -> None:
        await self.comparer.close()
        self.disagreements.close()
        with contextlib.suppress(Exception):  # a registry that cannot take it now never holds up a stop
            await asyncio.wait_for(self.publish(), FINAL_PUBLISH_S)
