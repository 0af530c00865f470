"""Live evidence about a rollout (a canary or shadow version beside production), kept in the registry.

Every server process that routes traffic to a canary (or runs a shadow) publishes what it saw
since it started doing so, one document per process, overwritten as its counts grow:

    <model>/rollouts/<alias>/v<version>/<replica>.json

`Evidence.gather` sums them over every process (the replicas of a service, the workers of
one), which is what `digitserve registry promote MODEL --from canary` and the rollout workflow
judge. The counts only grow within a process, so summing the last document of each is exact.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple

from digitserve.registry.core import ModelRegistry
from digitserve.registry.records import check_model_name, dumps
from digitserve.storage import NotFoundError

CLASSES = [str(d) for d in range(10)] + ["not_a_digit"]  # how production answered a compared input


class Tally(NamedTuple):
    """Compared inputs and those the two versions agreed on (a JSON list `[compared, agreed]`)."""

    compared: int = 0
    agreed: int = 0

    def plus(self, compared: int, agreed: int) -> Tally:
        return Tally(self.compared + compared, self.agreed + agreed)


PerClass = dict[str, Tally]  # production's answer (a CLASSES name) -> its tally


def count_agreement(production: list[str], candidate: list[str]) -> tuple[PerClass, list[int]]:
    """Two versions' answers to the same inputs, counted per production answer; and the indices
    where they disagree."""
    per_class: PerClass = {}
    disagree = []
    for i, (p, c) in enumerate(zip(production, candidate, strict=True)):
        per_class[p] = per_class.get(p, Tally()).plus(1, int(p == c))
        if p != c:
            disagree.append(i)
    return per_class, disagree


def merge_per_class(into: PerClass, other: PerClass) -> None:
    for answer, tally in other.items():
        into[answer] = into.get(answer, Tally()).plus(*tally)


@dataclass
class Evidence:
    """What one process (or, summed, every process) saw of a candidate beside production."""

    production_version: int | None = None
    candidate_requests: int = 0  # answered by the candidate (canary); 0 for a shadow
    production_requests: int = 0
    candidate_errors: int = 0  # the candidate failed and production answered instead
    candidate_deadline_misses: int = 0
    production_deadline_misses: int = 0
    compared: int = 0  # inputs answered by both
    agreed: int = 0  # ... with the same answer (the same digit, or both "not a digit")
    per_class: PerClass = field(default_factory=dict)
    candidate_p99_ms: float | None = None  # over the last window
    production_p99_ms: float | None = None
    rolled_back: str | None = None  # why this process retired the candidate, if it did
    clients: int = 0  # client networks among the compared inputs (summed: the most any process saw)
    client_agreement: float | None = None  # their median agreement (summed: the lowest any process saw)
    replicas: int = 1
    updated_at: str = ""

    @property
    def agreement(self) -> float | None:
        return round(self.agreed / self.compared, 6) if self.compared else None

    @property
    def error_rate(self) -> float | None:
        return round(self.candidate_errors / self.candidate_requests, 6) if self.candidate_requests else None

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "agreement": self.agreement, "error_rate": self.error_rate}

    @classmethod
    def parse(cls, data: bytes) -> Evidence | None:
        """One process's document; None if it is damaged (it then counts for nothing)."""
        try:
            doc = json.loads(data)
            known = {k: doc[k] for k in cls.__dataclass_fields__ if k in doc}
            known["per_class"] = {str(k): Tally(int(n), int(a)) for k, (n, a) in known.get("per_class", {}).items()}
            evidence = cls(**known)
            counts = (evidence.compared, evidence.agreed, evidence.candidate_requests, evidence.candidate_errors)
            if not all(isinstance(n, int) and n >= 0 for n in counts) or evidence.agreed > evidence.compared:
                return None
            return evidence
        except (ValueError, TypeError, AttributeError):
            return None

    def add(self, other: Evidence) -> None:
        for name in (
            "candidate_requests",
            "production_requests",
            "candidate_errors",
            "candidate_deadline_misses",
            "production_deadline_misses",
            "compared",
            "agreed",
        ):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        merge_per_class(self.per_class, other.per_class)
        self.candidate_p99_ms = _max(self.candidate_p99_ms, other.candidate_p99_ms)
        self.production_p99_ms = _max(self.production_p99_ms, other.production_p99_ms)
        self.rolled_back = self.rolled_back or other.rolled_back
        self.clients = max(self.clients, other.clients)
        self.client_agreement = _min(self.client_agreement, other.client_agreement)
        self.production_version = other.production_version or self.production_version
        self.updated_at = max(self.updated_at, other.updated_at)

    @classmethod
    def gather(cls, registry: ModelRegistry, model: str, alias: str, version: int) -> Evidence:
        """The sum over every process that published evidence for this candidate version."""
        total = cls(replicas=0)
        for key in registry.store.list(evidence_prefix(model, alias, version)):
            try:
                found = cls.parse(registry.store.read(key)[0])
            except NotFoundError:
                continue
            if found is not None:
                total.add(found)
                total.replicas += 1
        return total


def _min(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else min(a, b)


def _max(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else max(a, b)


def evidence_prefix(model: str, alias: str, version: int) -> str:
    return f"{check_model_name(model)}/rollouts/{check_model_name(alias)}/v{int(version)}/"


def publish_evidence(
    registry: ModelRegistry, model: str, alias: str, version: int, replica: str, evidence: Evidence
) -> None:
    """Overwrite this process's evidence document (only its own: `replica` names the process)."""
    registry.store.put(f"{evidence_prefix(model, alias, version)}{replica}.json", dumps(evidence.to_dict()))
