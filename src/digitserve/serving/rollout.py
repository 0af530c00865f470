"""Safe rollouts: a canary that answers a share of the traffic, a shadow that runs unseen beside
production, and the watch that retires a canary doing worse than production (docs/rollouts.md).

- **Routing.** A request that the served alias would answer goes to the canary with probability
  `CANARY_PERCENT` -- decided by a hash of its `X-Digitserve-Sticky` header when it sends one, so
  one user stays on one side. A request pinned with `?version=` or `?alias=` is never diverted.
- **Watching** (canary.py). Each side's answers, server errors (a canary that fails is answered
  by production instead, and counted), deadline misses and latency go into a sliding window,
  and a share of the canary's answers is compared with production's (comparison.py). The
  canary is judged every second.
- **Retiring.** A canary past a threshold stops getting traffic from this process at once, and
  its alias is moved to production's version by compare-and-swap, with an event naming the
  reason and the numbers. Of several processes deciding at once exactly one swap succeeds, so
  there is one event; the others see the alias moved at their next poll. Requests the canary
  already queued are answered by it, as in a hot-swap: no client sees an error.
- **Evidence.** Every `POLL_SECONDS` each process publishes what it saw of each candidate to the
  registry (registry/rollouts.py); `digitserve registry promote MODEL --from canary` judges it.
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
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from digitserve.config import Settings
from digitserve.registry import AliasConflictError, ModelRegistry, RegistryError
from digitserve.registry.rollouts import Evidence, publish_evidence
from digitserve.serving.canary import CanaryWatch, sticky_side
from digitserve.serving.comparison import Agreement, Comparer, Comparison, DisagreementLog, Job
from digitserve.serving.manager import LoadedVersion, ModelManager, ModelState

log = logging.getLogger(__name__)
STICKY_HEADER = "x-digitserve-sticky"
WATCH_INTERVAL_S = 1.0
FINAL_PUBLISH_S = 5.0


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
        self.watches: dict[str, CanaryWatch] = {}  # model -> the watch of its canary now
        self.agreement: dict[tuple[str, str, int, int], Agreement] = {}  # (kind, model, production, candidate)
        self.comparer = Comparer(self._spare, self._record, settings.shadow_max_backlog, self.metrics.drop_comparison)
        self.disagreements = DisagreementLog(registry.store, settings.disagreement_samples)
        self._published: dict[tuple[str, str, int], tuple[int, ...]] = {}

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

    def answered(self, route: Route, images: np.ndarray, probabilities: np.ndarray, latency_s: float) -> None:
        """After the answer is computed: count it, and offer the comparisons it calls for."""
        loaded = route.loaded
        self.metrics.routed(loaded.model, route.alias or "", loaded.version, latency_s)
        if route.side == "pinned":
            return
        state = self.manager.state(loaded.model)
        watch = self._watch(state)
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
        """A canary that failed (answered by production instead) or a missed deadline, on either side."""
        loaded = route.loaded
        self.metrics.rollout_failure(loaded.model, route.alias or "", loaded.version, "error" if error else "deadline")
        watch = self._watch(self.manager.state(loaded.model)) if route.side != "pinned" else None
        if watch is None:
            return
        side = watch.canary if route.side == "canary" else watch.production
        side.add(None, error=error, miss=miss)
        if route.side == "canary":
            watch.evidence.candidate_errors += error
            watch.evidence.candidate_deadline_misses += miss
        else:
            watch.evidence.production_deadline_misses += miss

    def _watch(self, state: ModelState) -> CanaryWatch | None:
        canary, served = state.rollout.get("canary"), state.served
        if canary is None or served is None:
            return None
        watch = self.watches.get(state.name)
        if watch is None or (watch.production_version, watch.canary_version) != (served.version, canary.version):
            watch = self.watches[state.name] = CanaryWatch(
                served.version, canary.version, self.settings.canary_window_s
            )
        return watch

    def _spare(self) -> str | None:
        """None while this process has room for background comparisons, else why not."""
        if self.in_progress() > max(1, self.settings.max_concurrent_requests // 8):
            return "busy"
        for state in self.manager.states.values():
            for loaded in (state.served, state.rollout.get("canary")):
                if loaded is not None and loaded.batcher.queued_images >= self.settings.max_batch_size:
                    return "queue"
        return None

    def _record(self, c: Comparison) -> None:
        key = (c.kind, c.model, c.production_version, c.candidate_version)
        agreement = self.agreement.setdefault(key, Agreement())
        disagree = agreement.add(c.production, c.candidate)
        self.metrics.compared(c, disagree)
        watch = self.watches.get(c.model)
        if c.kind == "canary" and watch is not None and watch.canary_version == c.candidate_version:
            watch.canary.compare(len(c.production), len(c.production) - len(disagree))
        self.disagreements.keep(c, disagree)

    # --- the watch and the evidence ----------------------------------------------------------------

    async def run(self) -> None:
        """Judge every canary each second; publish the evidence every poll interval."""
        published_at = 0.0
        while True:
            await asyncio.sleep(WATCH_INTERVAL_S)
            try:
                for model, watch in list(self.watches.items()):
                    await self._judge(model, watch)
                if time.monotonic() - published_at >= self.settings.poll_seconds:
                    published_at = time.monotonic()
                    await asyncio.get_running_loop().run_in_executor(self.manager.loader, self.publish)
            except Exception:  # the watch must survive anything the registry throws at it
                log.exception("rollout watch failed")

    async def _judge(self, model: str, watch: CanaryWatch) -> None:
        state = self.manager.state(model)
        canary = state.rollout.get("canary")
        if watch.retired or canary is None or canary.version != watch.canary_version:
            return
        reason = watch.judge(self.settings)
        if reason is None or not self.settings.canary_auto_rollback:
            return
        watch.retired = watch.evidence.rolled_back = reason
        log.warning("%s: canary v%d fails its watch (%s); rolling it back", model, watch.canary_version, reason)
        self.manager.drop_rollout(state, "canary", refuse=reason)  # this process stops at once
        moved = await asyncio.get_running_loop().run_in_executor(self.manager.loader, self._retire, model, watch)
        self.metrics.canary_rollback(model, "moved" if moved else "already moved or unreachable")

    def _retire(self, model: str, watch: CanaryWatch) -> bool:
        """Move the canary alias to production's version, if it still names the judged version."""
        alias = self.settings.canary_alias or ""
        try:
            state = self.registry.get_alias(model, alias)
            if state is None or state.version != watch.canary_version:
                return False  # someone (another replica) has moved it already
            production = self.registry.resolve_alias(model, self.settings.alias)
            evidence = {
                "reason": watch.retired,
                "replica": self.replica,
                **watch.live(),
                **self._agreement(model, watch),
            }
            self.registry.move_alias(
                model,
                alias,
                production,
                reason=f"automatic rollback: {watch.retired}",
                expected=state,
                action="rollback",
                who=f"digitserve server {self.replica}",
                evidence=evidence,
            )
        except AliasConflictError:
            return False
        except RegistryError as exc:
            log.warning("%s: could not move the canary alias back (%s); other replicas judge it themselves", model, exc)
            return False
        return True

    def _agreement(self, model: str, watch: CanaryWatch) -> dict[str, Any]:
        a = self.agreement.get(("canary", model, watch.production_version, watch.canary_version), Agreement())
        return {"compared": a.compared, "agreed": a.agreed, "per_class": a.per_class}

    def publish(self) -> None:
        """This process's evidence for each candidate it has seen, where it changed (blocking)."""
        for model, watch in list(self.watches.items()):
            evidence = watch.evidence
            a = self._agreement(model, watch)
            evidence.compared, evidence.agreed, evidence.per_class = a["compared"], a["agreed"], a["per_class"]
            live = watch.live()
            evidence.candidate_p99_ms, evidence.production_p99_ms = (
                live["canary"]["p99_ms"],
                live["production"]["p99_ms"],
            )
            self._publish(model, self.settings.canary_alias or "", watch.canary_version, evidence)
        for (kind, model, production, candidate), pair in list(self.agreement.items()):
            if kind == "shadow" and self.settings.shadow_alias:
                shadow = Evidence(
                    production_version=production, compared=pair.compared, agreed=pair.agreed, per_class=pair.per_class
                )
                self._publish(model, self.settings.shadow_alias, candidate, shadow)

    def _publish(self, model: str, alias: str, version: int, evidence: Evidence) -> None:
        counts = (
            evidence.candidate_requests,
            evidence.production_requests,
            evidence.compared,
            evidence.candidate_errors,
            int(bool(evidence.rolled_back)),
        )
        if self._published.get((model, alias, version)) == counts:
            return
        evidence.updated_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        try:
            publish_evidence(self.registry, model, alias, version, self.replica, evidence)
            self._published[(model, alias, version)] = counts
        except RegistryError as exc:
            log.warning("%s: rollout evidence not published now (%s)", model, exc)

    def status(self, model: str) -> dict[str, Any]:
        """The canary and the shadow of one model, with their live numbers (GET /v1/models/{model})."""
        state = self.manager.state(model)
        out: dict[str, Any] = {}
        canary, shadow = state.rollout.get("canary"), state.rollout.get("shadow")
        watch = self.watches.get(model)
        refused = {str(v): why for v, why in state.refused.items()}
        out["canary"] = (
            {
                "alias": self.settings.canary_alias,
                "percent": self.settings.canary_percent,
                "version": canary.version if canary else None,
                "auto_rollback": self.settings.canary_auto_rollback,
                "live": watch.live() if watch and canary and watch.canary_version == canary.version else None,
                "agreement": self._agreement(model, watch) if watch else None,
                "rolled_back_here": refused,
                "error": state.rollout_errors.get("canary"),
            }
            if self.settings.canary_alias
            else None
        )
        pairs = {k: a for k, a in self.agreement.items() if k[0] == "shadow" and k[1] == model}
        out["shadow"] = (
            {
                "alias": self.settings.shadow_alias,
                "percent": self.settings.shadow_percent,
                "version": shadow.version if shadow else None,
                "error": state.rollout_errors.get("shadow"),
                "agreement": {
                    f"v{p}-v{c}": {"compared": a.compared, "agreed": a.agreed, "per_class": a.per_class}
                    for (_, _, p, c), a in pairs.items()
                },
            }
            if self.settings.shadow_alias
            else None
        )
        return out

    async def close(self) -> None:
        await self.comparer.close()
        self.disagreements.close()
        with contextlib.suppress(TimeoutError):  # a registry that cannot take it now never holds up a stop
            await asyncio.wait_for(asyncio.get_running_loop().run_in_executor(None, self.publish), FINAL_PUBLISH_S)
