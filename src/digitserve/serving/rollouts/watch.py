"""The canary's watch: each side's answers over a sliding window, and the judgement of the canary
against production (thresholds: the `canary_*` settings; docs/rollouts.md)."""

from __future__ import annotations

import hashlib
import random
import time
from collections import deque
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, NamedTuple

import numpy as np

from digitserve.config import CanarySettings
from digitserve.registry.evidence import Evidence, Tally, merge_per_class
from digitserve.serving.clients import OTHER

BUCKETS = 12  # the window is this many buckets: it slides by a twelfth of its length
MAX_LATENCIES = 2000  # latencies kept per bucket for the p99 (a uniform sample beyond that)
MAX_CLIENTS = 1000  # client networks tallied per bucket; later ones count as one, "other"
MAX_CLIENT_LATENCIES = 100  # latencies kept per network and bucket (a uniform sample beyond that)
MIN_CLIENT_REQUESTS = 5  # a network's own rates count once it sent this many in the window
P99_TAIL = 0.01  # the share of requests a p99 leaves slower than itself
FALSE_ALARM = 0.001  # the chance that a network's requests look too slow by luck alone, per judgement


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
    answers: dict[str, _Answers] = field(default_factory=dict)  # client network -> what it was answered


@dataclass
class _Answers:
    """One client network's answers in a bucket."""

    requests: int = 0
    errors: int = 0
    misses: int = 0
    latencies: list[float] = field(default_factory=list)


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
    networks: int = 0  # client networks that sent at least MIN_CLIENT_REQUESTS in the window
    network_error_rate: float | None = None  # the median network's
    network_miss_rate: float | None = None
    network_p99_ms: float | None = None

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

    def add(
        self, latency: float | None = None, error: bool = False, miss: bool = False, client: str | None = None
    ) -> None:
        bucket = self._now()
        bucket.requests += 1
        bucket.errors += error
        bucket.misses += miss
        _sample(bucket.latencies, latency, bucket.requests, MAX_LATENCIES)
        if client is None:
            return
        if client not in bucket.answers and len(bucket.answers) >= MAX_CLIENTS:
            client = OTHER
        mine = bucket.answers.setdefault(client, _Answers())
        mine.requests += 1
        mine.errors += error
        mine.misses += miss
        _sample(mine.latencies, latency, mine.requests, MAX_CLIENT_LATENCIES)

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
            **self._networks(),
        )

    def slow_networks(self, limit_s: float) -> tuple[int, int]:
        """(client networks with too many requests over `limit_s`, networks with latencies).

        A p99 taken from a network's few requests in the window is its slowest one or two: one
        stall of the machine (a noisy neighbour, a pause) would put it past any limit. A network
        is slow only when so many of its requests are over the limit that a p99 at the limit
        leaves that many with a chance below FALSE_ALARM (`slow_requests_needed`)."""
        timed = [np.asarray(a.latencies) for a in self._counted() if a.latencies]
        slow = sum(int(np.count_nonzero(x > limit_s)) >= slow_requests_needed(len(x)) for x in timed)
        return slow, len(timed)

    def _counted(self) -> list[_Answers]:
        """Each client network's answers over the window, for those that sent MIN_CLIENT_REQUESTS."""
        self._now()
        merged: dict[str, _Answers] = {}
        for bucket in self.buckets:
            for client, a in bucket.answers.items():
                into = merged.setdefault(client, _Answers())
                into.requests, into.errors, into.misses = (
                    into.requests + a.requests,
                    into.errors + a.errors,
                    into.misses + a.misses,
                )
                into.latencies.extend(a.latencies)
        return [a for a in merged.values() if a.requests >= MIN_CLIENT_REQUESTS]

    def _networks(self) -> dict[str, Any]:
        """The median client network's error rate, miss rate and p99: what one client's costly or
        failing requests move for itself only."""
        counted = self._counted()
        if not counted:
            return {}
        p99s = [float(np.percentile(a.latencies, 99)) * 1000 for a in counted if a.latencies]
        return {
            "networks": len(counted),
            "network_error_rate": round(float(np.median([a.errors / a.requests for a in counted])), 6),
            "network_miss_rate": round(float(np.median([a.misses / a.requests for a in counted])), 6),
            "network_p99_ms": round(float(np.median(p99s)), 3) if p99s else None,
        }

    def _clients(self) -> dict[str, Any]:
        tallies: dict[str, Tally] = {}
        for bucket in self.buckets:
            merge_per_class(tallies, bucket.clients)
        rates = [t.agreed / t.compared for t in tallies.values() if t.compared]
        median = float(np.median(rates)) if rates else None
        return {"clients": len(rates), "client_agreement": round(median, 6) if median is not None else None}


@lru_cache(maxsize=4096)
def slow_requests_needed(n: int) -> int:
    """The fewest of `n` requests over a latency limit that a p99 at the limit leaves with a chance
    below FALSE_ALARM: the smallest k with P(X >= k) <= FALSE_ALARM, X ~ Binomial(n, P99_TAIL).
    2 of 5, 3 of 12, 6 of 100, 22 of 1,000; for one request, 2 (never)."""
    p, k = P99_TAIL, 0
    point, tail = (1 - p) ** n, 1.0  # P(X = k), P(X >= k)
    while tail > FALSE_ALARM and k <= n:
        tail -= point
        k += 1
        point *= (n - k + 1) / k * p / (1 - p)
    return k if tail <= FALSE_ALARM else n + 1


def _sample(kept: list[float], value: float | None, seen: int, limit: int) -> None:
    """Keep `value` in a uniform sample of at most `limit` of the `seen` so far."""
    if value is None:
        return
    if len(kept) < limit:
        kept.append(value)
    elif random.random() < limit / seen:
        kept[random.randrange(limit)] = value


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
    judgements: int = 0  # how often this process has judged it (once a second while it serves)
    compared_total: int = 0  # since the watch began (the window forgets; exposure must not)
    networks: set[str] = field(default_factory=set)  # client networks compared since (a few are enough)

    def __post_init__(self) -> None:
        self.production, self.canary = Window(self.window_s), Window(self.window_s)
        self.evidence = Evidence(production_version=self.production_version)

    def judge(self, limits: CanarySettings) -> str | None:
        """Why the canary must go (a sentence with the numbers), or None while it holds up."""
        self.judgements += 1
        canary, production = self.canary.totals(), self.production.totals()
        n = canary.requests
        judged = canary.networks >= limits.min_clients and production.networks >= 1  # no few clients decide
        if n >= limits.min_requests and judged:
            errors, misses = canary.network_error_rate or 0.0, canary.network_miss_rate or 0.0
            if errors > limits.max_error_rate:
                return (
                    f"server errors: {errors:.1%} of the median client network's canary requests "
                    f"({canary.errors} of {n} in all; limit {limits.max_error_rate:.1%})"
                )
            base = production.network_miss_rate or 0.0
            if misses > limits.max_deadline_miss_rate and misses > base:
                return f"deadline misses: {misses:.1%} of the median network's canary requests, production {base:.1%}"
            mine, theirs = canary.network_p99_ms, production.network_p99_ms
            if production.requests >= limits.min_requests and mine and theirs:
                limit = theirs * limits.max_p99_ratio + limits.p99_slack_ms
                if mine > limit:  # the median network's p99; is it more than luck (slow_networks)?
                    slow, networks = self.canary.slow_networks(limit / 1000)
                    if 2 * slow >= networks:
                        return (
                            f"p99 latency {mine:.1f} ms, production {theirs:.1f} ms "
                            f"(the median client network's; limit {limit:.1f} ms; "
                            f"too many requests over it from {slow} of {networks} client networks)"
                        )
        compared, clients, median = canary.compared, canary.clients, canary.client_agreement
        enough = compared >= limits.min_compared and clients >= limits.min_clients
        if enough and median is not None and median < limits.min_agreement:
            return (
                f"agreement with production {median:.1%} (the median of {clients} client networks) on "
                f"{compared} compared inputs (minimum {limits.min_agreement:.1%})"
            )
        return None

    def canary_answered(self, latency_s: float, client: str | None = None) -> None:
        self.canary.add(latency_s, client=client)
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
            "judgements": self.judgements,
            "canary": self.canary.totals().to_dict(),
            "production": self.production.totals().to_dict(),
        }


def sticky_side(key: str, percent: float) -> bool:
    """Whether a sticky key lands on the canary: the same key, the same side, on every replica."""
    return int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) % 10_000 < percent * 100
