"""The canary's watch: each side's answers over a sliding window, and the judgement of the canary
against production (thresholds: the `canary_*` settings; docs/rollouts.md)."""

from __future__ import annotations

import hashlib
import random
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from digitserve.config import CanarySettings
from digitserve.registry.evidence import Evidence, Tally, merge_per_class
from digitserve.serving.clients import OTHER

BUCKETS = 12  # the window is this many buckets: it slides by a twelfth of its length
MAX_LATENCIES = 2000  # latencies kept per bucket for the p99 (a uniform sample beyond that)
MAX_CLIENTS = 1000  # client networks tallied per bucket; later ones count as one, "other"


@dataclass
class _Bucket:
    start: float
    requests: int = 0
    errors: int = 0
    misses: int = 0
    compared: int = 0
    agreed: int = 0
    latencies: list[float] = field(default_factory=list)
    clients: dict[str, Tally] = field(default_factory=dict)  # client network -> its compared inputs


class Pair(NamedTuple):
    """A canary beside the production version it is judged against."""

    model: str
    production_version: int
    canary_version: int


class Totals(NamedTuple):
    """One side's numbers over the window."""

    requests: int
    errors: int
    deadline_misses: int
    compared: int
    agreed: int
    p99_ms: float | None
    clients: int = 0  # client networks among the compared inputs
    client_agreement: float | None = None  # the median of their agreement: what no few clients can steer

    def to_dict(self) -> dict[str, Any]:
        return self._asdict()


class Window:
    """One side's counts and latencies over the last `seconds`."""

    def __init__(self, seconds: float) -> None:
        self.span = seconds / BUCKETS
        self.buckets: deque[_Bucket] = deque()

    def _now(self) -> _Bucket:
        now = time.monotonic()
        while self.buckets and self.buckets[0].start <= now - self.span * BUCKETS:
            self.buckets.popleft()
        if not self.buckets or self.buckets[-1].start + self.span <= now:
            self.buckets.append(_Bucket(now))
        return self.buckets[-1]

    def add(self, latency: float | None = None, error: bool = False, miss: bool = False) -> None:
        bucket = self._now()
        bucket.requests += 1
        bucket.errors += error
        bucket.misses += miss
        if latency is not None:
            if len(bucket.latencies) < MAX_LATENCIES:
                bucket.latencies.append(latency)
            elif random.random() < MAX_LATENCIES / bucket.requests:
                bucket.latencies[random.randrange(MAX_LATENCIES)] = latency

    def compare(self, client: str, compared: int, agreed: int) -> None:
        bucket = self._now()
        bucket.compared += compared
        bucket.agreed += agreed
        if client not in bucket.clients and len(bucket.clients) >= MAX_CLIENTS:
            client = OTHER
        bucket.clients[client] = bucket.clients.get(client, Tally()).plus(compared, agreed)

    def totals(self) -> Totals:
        self._now()
        latencies = [x for b in self.buckets for x in b.latencies]
        p99 = float(np.percentile(latencies, 99)) * 1000 if latencies else None
        return Totals(
            requests=sum(b.requests for b in self.buckets),
            errors=sum(b.errors for b in self.buckets),
            deadline_misses=sum(b.misses for b in self.buckets),
            compared=sum(b.compared for b in self.buckets),
            agreed=sum(b.agreed for b in self.buckets),
            p99_ms=round(p99, 3) if p99 is not None else None,
            **self._clients(),
        )

    def _clients(self) -> dict[str, Any]:
        tallies: dict[str, Tally] = {}
        for bucket in self.buckets:
            merge_per_class(tallies, bucket.clients)
        rates = [t.agreed / t.compared for t in tallies.values() if t.compared]
        median = float(np.median(rates)) if rates else None
        return {"clients": len(rates), "client_agreement": round(median, 6) if median is not None else None}


@dataclass
class CanaryWatch:
    """One canary version beside one production version: the window it is judged on, and the
    cumulative evidence this process publishes."""

    production_version: int
    canary_version: int
    window_s: float
    production: Window = field(init=False)
    canary: Window = field(init=False)
    evidence: Evidence = field(init=False)
    retired: str | None = None  # why this process retired it
    moved: bool = False  # the canary alias has been parked (by this process or another)
    tried_at: float = 0.0  # when this process last tried to park it
    compared_total: int = 0  # since the watch began (the window forgets; exposure must not)
    networks: set[str] = field(default_factory=set)  # client networks compared since (a few are enough)

    def __post_init__(self) -> None:
        self.production, self.canary = Window(self.window_s), Window(self.window_s)
        self.evidence = Evidence(production_version=self.production_version)

    def judge(self, limits: CanarySettings) -> str | None:
        """Why the canary must go (a sentence with the numbers), or None while it holds up."""
        canary, production = self.canary.totals(), self.production.totals()
        n = canary.requests
        if n >= limits.min_requests:
            if canary.errors / n > limits.max_error_rate:
                return f"server errors: {canary.errors} of {n} canary requests (limit {limits.max_error_rate:.1%})"
            miss, base = canary.deadline_misses / n, production.deadline_misses / max(production.requests, 1)
            if miss > limits.max_deadline_miss_rate and miss > base:
                return f"deadline misses: {miss:.1%} of {n} canary requests, production {base:.1%}"
            if production.requests >= limits.min_requests and canary.p99_ms and production.p99_ms:
                limit = production.p99_ms * limits.max_p99_ratio + limits.p99_slack_ms
                if canary.p99_ms > limit:
                    return (
                        f"p99 latency {canary.p99_ms:.1f} ms, production {production.p99_ms:.1f} ms "
                        f"(limit {limit:.1f} ms)"
                    )
        compared, clients, median = canary.compared, canary.clients, canary.client_agreement
        enough = compared >= limits.min_compared and clients >= limits.min_clients
        if enough and median is not None and median < limits.min_agreement:
            return (
                f"agreement with production {median:.1%} (the median of {clients} client networks) on "
                f"{compared} compared inputs (minimum {limits.min_agreement:.1%})"
            )
        return None

    def canary_answered(self, latency_s: float) -> None:
        self.canary.add(latency_s)
        self.evidence.candidate_requests += 1

    def compared(self, client: str, compared: int, agreed: int) -> None:
        """Inputs the canary answered and production computed too, from one client network."""
        self.canary.compare(client, compared, agreed)
        self.compared_total += compared
        if len(self.networks) < 64:
            self.networks.add(client)

    def waiting_for_evidence(self, limits: CanarySettings) -> bool:
        """Whether the canary has answered as much as its comparisons can vouch for, since the watch
        began: past its first `min_requests` answers, more than `answers_per_compared` per compared
        input -- and compared inputs count only once they come from `min_clients` networks (until
        then the canary could never be judged). Then production answers in its place until the
        comparisons catch up: no evidence, no more exposure."""
        answered = self.evidence.candidate_requests
        judgeable = self.compared_total if len(self.networks) >= limits.min_clients else 0
        return answered >= limits.min_requests and answered > limits.answers_per_compared * max(judgeable, 1)

    def live(self) -> dict[str, Any]:
        return {
            "window_s": self.window_s,
            "canary": self.canary.totals().to_dict(),
            "production": self.production.totals().to_dict(),
        }


def sticky_side(key: str, percent: float) -> bool:
    """Whether a sticky key lands on the canary: the same key, the same side, on every replica."""
    return int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) % 10_000 < percent * 100
