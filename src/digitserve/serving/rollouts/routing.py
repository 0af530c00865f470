"""The request side of a rollout: which side answers, and what each answer tells the watch.

A request that the served alias would answer goes to the canary with probability
`CANARY_PERCENT` -- decided by a hash of its `X-Digitserve-Sticky` header when it sends one, so
one user stays on one side on every replica. A request pinned with `?version=` or `?alias=` is
never diverted. After the answer the pipeline reports it here: each (production, canary) pair
has a watch (watch.py) of each side's answers, failures, deadline misses and latency; a share of
the canary's answers, and the shadow's share of production's, are offered for a background
comparison (compare.py), whose agreement is counted here. The judge (judge.py) reads it all.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from digitserve.config import Settings
from digitserve.registry import Store
from digitserve.serving.clients import network_of
from digitserve.serving.inference.state import LoadedVersion, ModelState
from digitserve.serving.inference.versions import ModelVersions
from digitserve.serving.observability.metrics import ServiceMetrics
from digitserve.serving.rollouts.compare import Agreement, Comparer, Comparison, DisagreementLog, Job, PairKey
from digitserve.serving.rollouts.watch import CanaryWatch, Pair, sticky_side

STICKY_HEADER = "x-digitserve-sticky"
MAX_STICKY = 256  # characters of a sticky key (longer: 422 on /v1 and /v2 alike)
MAX_WATCHES = 32
SPARE_IN_PROGRESS = 4  # with this many predictions in progress a process has no spare capacity
Side = Literal["production", "canary", "pinned"]


@dataclass(frozen=True)
class Route:
    """The version that answers a request, the alias that chose it, and which side it is on."""

    state: ModelState
    loaded: LoadedVersion
    alias: str | None
    side: Side
    client: str | None = None  # the client's address as the server sees it (for the canary's evidence)

    @property
    def model(self) -> str:
        return self.state.name


class Rollouts:
    def __init__(
        self,
        settings: Settings,
        versions: ModelVersions,
        store: Store,
        metrics: ServiceMetrics,
        in_progress: Callable[[], int],
        compare_pool: Executor,
        disagreement_writer: Executor,
    ) -> None:
        self.alias = settings.alias
        self.canary, self.shadow = settings.canary, settings.shadow
        self.max_batch_size = settings.batching.max_batch_size
        self.versions = versions
        self.metrics = metrics
        self.in_progress = in_progress
        self.watches: dict[Pair, CanaryWatch] = {}
        self.agreement: dict[PairKey, Agreement] = {}
        self.dropped: Counter[tuple[str, str]] = Counter()  # counted here, added to the metrics each second
        self.paused = 0  # canary answers production gave instead, waiting for evidence
        self.comparer = Comparer(self._spare, self._record, self.shadow.max_backlog, self._dropped, compare_pool)
        self.disagreements = DisagreementLog(store, self.shadow.disagreement_samples, disagreement_writer)

    # --- on the request path ------------------------------------------------------------------

    def route(self, state: ModelState, sticky: str | None, client: str | None = None) -> Route:
        """Production, or the canary for its share of the requests (a sticky key keeps its side) --
        while its comparisons vouch for what it answers (`waiting_for_evidence`)."""
        served = self.versions.served(state)
        canary = self.versions.rollout(state, "canary")
        percent = self.canary.percent
        if canary is not None and percent > 0:
            chosen = sticky_side(sticky, percent) if sticky else random.random() * 100 < percent
            if chosen and not self._waiting_for_evidence(state, served, canary):
                return Route(state, canary, self.canary.alias, "canary", client)
        return Route(state, served, self.alias, "production", client)

    def _waiting_for_evidence(self, state: ModelState, served: LoadedVersion, canary: LoadedVersion) -> bool:
        watch = self.watches.get(Pair(state.name, served.version, canary.version))
        if watch is None or not watch.waiting_for_evidence(self.canary):
            return False
        self.paused += 1  # counted here, added to the metrics each second
        return True

    def production_route(self, state: ModelState, client: str | None = None) -> Route:
        """Where a request the canary could not take goes instead."""
        return Route(state, self.versions.served(state), self.alias, "production", client)

    def answered(self, route: Route, images: np.ndarray, probabilities: np.ndarray, latency_s: float) -> None:
        """After the answer is computed: count it, and offer the comparisons it calls for."""
        loaded, state = route.loaded, route.state
        self.metrics.routed(loaded.model, route.alias or "", loaded.version, latency_s)
        if route.side == "pinned":
            return
        watch = self._watch(route)
        network = network_of(route.client) if watch is not None else None
        if route.side == "canary":
            if watch is not None:
                watch.canary_answered(latency_s, network)
            if random.random() * 100 < self.canary.compare_percent and state.served is not None:
                served, client = state.served.servable, network_of(route.client)
                self.comparer.offer(Job("canary", loaded.servable, probabilities, served, images, False, client))
            return
        if watch is not None:
            watch.production.add(latency_s, client=network)
            watch.evidence.production_requests += 1
            canary = self.versions.rollout(state, "canary")
            if (
                canary is not None
                and watch.waiting_for_evidence(self.canary)
                and random.random() * 100 < self.canary.compare_percent
            ):
                # paused for want of evidence: the canary runs unseen on production's inputs, as a
                # shadow does, until its comparisons can vouch for it again
                job = Job("canary", loaded.servable, probabilities, canary.servable, images, True, network or "")
                self.comparer.offer(job)
        shadow = self.versions.rollout(state, "shadow")
        if shadow is not None and random.random() * 100 < self.shadow.percent:
            self.comparer.offer(Job("shadow", loaded.servable, probabilities, shadow.servable, images, True))

    def failed(self, route: Route, *, error: bool = False, miss: bool = False) -> None:
        """A canary that failed or had no room (answered by production instead), or a missed deadline."""
        loaded = route.loaded
        self.metrics.rollout_failure(loaded.model, route.alias or "", loaded.version, "error" if error else "deadline")
        watch = self._watch(route) if route.side != "pinned" else None
        if watch is None:
            return
        side = watch.canary if route.side == "canary" else watch.production
        side.add(None, error=error, miss=miss, client=network_of(route.client))
        if route.side == "canary":
            watch.evidence.candidate_errors += error
            watch.evidence.candidate_deadline_misses += miss
        else:
            watch.evidence.production_deadline_misses += miss

    def _watch(self, route: Route) -> CanaryWatch | None:
        """The watch of the pair this answer belongs to: the version that answered, and the other side."""
        state = route.state
        canary, served = self.versions.rollout(state, "canary"), state.served
        if canary is None or served is None:
            return None
        if route.side == "canary":
            pair = Pair(state.name, served.version, route.loaded.version)
        else:
            pair = Pair(state.name, route.loaded.version, canary.version)
        watch = self.watches.get(pair)
        if watch is None:
            watch = self.watches[pair] = CanaryWatch(pair.production_version, pair.canary_version, self.canary.window_s)
            self._forget_old_watches(state)
        return watch

    def _forget_old_watches(self, state: ModelState) -> None:
        if len(self.watches) <= MAX_WATCHES:
            return
        current = current_pair(state)
        for pair in list(self.watches):
            if pair != current and len(self.watches) > MAX_WATCHES:
                del self.watches[pair]

    def forget(self, model: str) -> None:
        """Drop the model's canary watches (a canary taken afresh is judged on new evidence)."""
        for pair in [p for p in self.watches if p.model == model]:
            del self.watches[pair]
        for key in [k for k in self.agreement if k.kind == "canary" and k.model == model]:
            del self.agreement[key]

    def _dropped(self, kind: str, reason: str) -> None:
        self.dropped[(kind, reason)] += 1  # on the request path under load: a dict, not a metrics write

    def flush_drops(self) -> None:
        for (kind, reason), n in self.dropped.items():
            self.metrics.dropped_comparisons.labels(kind, reason).inc(n)
        self.dropped.clear()
        if self.paused:
            self.metrics.canary_paused.inc(self.paused)
            self.paused = 0

    def _spare(self) -> str | None:
        """None while this process has room for background comparisons, else why not."""
        if self.in_progress() >= SPARE_IN_PROGRESS:
            return "busy"
        return "queue" if self.versions.backlogged(self.max_batch_size) else None

    def _record(self, c: Comparison) -> None:
        per_class = c.found.per_class
        self.agreement.setdefault(c.key, Agreement()).merge(per_class)
        key = c.key
        self.metrics.compared(key.model, key.kind, key.production_version, key.candidate_version, per_class)
        watch = self.watches.get(Pair(*c.pair))
        if key.kind == "canary" and watch is not None:
            for client, (compared, agreed) in c.by_client().items():
                watch.compared(client, compared, agreed)
        self.disagreements.keep(c)

    def agreed(self, model: str, watch: CanaryWatch) -> Agreement:
        """The agreement counted for a canary's pair."""
        key = PairKey("canary", model, watch.production_version, watch.canary_version)
        return self.agreement.get(key, Agreement())

    # --- what GET /v1/models shows ------------------------------------------------------------

    def status(self, model: str) -> dict[str, Any]:
        """The canary and the shadow of one model, with their live numbers."""
        state = self.versions.state(model)
        canary, shadow = self.versions.rollout(state, "canary"), self.versions.rollout(state, "shadow")
        pair = current_pair(state)
        watch = self.watches.get(pair) if pair else None
        out: dict[str, Any] = {"canary": None, "shadow": None}
        if self.canary.alias:
            error = state.rollout_errors.get("canary")
            out["canary"] = {
                "alias": self.canary.alias,
                "percent": self.canary.percent,
                "version": canary.version if canary else None,
                "auto_rollback": self.canary.auto_rollback,
                "live": watch.live() if watch else None,
                "agreement": self.agreed(model, watch).to_dict() if watch else None,
                "rolled_back_here": {str(v): refusal.reason for v, refusal in state.refused.items()},
                "error": error.to_dict() if error else None,
            }
        if self.shadow.alias:
            pairs = {k: a for k, a in self.agreement.items() if k.kind == "shadow" and k.model == model}
            error = state.rollout_errors.get("shadow")
            out["shadow"] = {
                "alias": self.shadow.alias,
                "percent": self.shadow.percent,
                "version": shadow.version if shadow else None,
                "error": error.to_dict() if error else None,
                "agreement": {f"v{k.production_version}-v{k.candidate_version}": a.to_dict() for k, a in pairs.items()},
            }
        return out

    async def close(self) -> None:
        await self.comparer.close()


def current_pair(state: ModelState) -> Pair | None:
    """The pair a model's canary is judged in now: its served version and its canary."""
    canary, served = state.rollout.get("canary"), state.served
    return Pair(state.name, served.version, canary.version) if canary and served else None
