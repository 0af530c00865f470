"""Each process's live evidence about the candidates it has seen, published to the registry
(registry/evidence.py) every poll interval: one document per (candidate version, production
version) and process, whose counts only grow. Snapshots are taken on the event loop, where the
counts change, and written by a registry thread, which only reads its own copies."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

from digitserve.registry import ModelRegistry, RegistryError
from digitserve.registry.evidence import Evidence, publish_evidence
from digitserve.serving.rollouts.compare import Agreement, PairKey
from digitserve.serving.rollouts.watch import CanaryWatch, Pair

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Snapshot:
    model: str
    alias: str
    version: int  # the candidate's
    name: str  # the document's name: this process and the production version
    evidence: Evidence

    @property
    def counts(self) -> tuple[int, ...]:
        e = self.evidence
        return (
            e.candidate_requests,
            e.production_requests,
            e.compared,
            e.candidate_errors,
            int(bool(e.rolled_back)),
            e.clients,
        )


class EvidencePublisher:
    def __init__(self, registry: ModelRegistry, canary_alias: str | None, shadow_alias: str | None, replica: str):
        self.registry = registry
        self.canary_alias, self.shadow_alias = canary_alias, shadow_alias
        self.replica = replica
        self._published: dict[tuple[str, str, int, str], tuple[int, ...]] = {}

    def snapshots(
        self,
        watches: Mapping[Pair, CanaryWatch],
        agreed: Callable[[str, CanaryWatch], Agreement],
        agreement: Mapping[PairKey, Agreement],
    ) -> list[Snapshot]:
        """Copies of what there is to publish, taken where the counts change (the event loop)."""
        found = []
        canary, shadow = self.canary_alias, self.shadow_alias
        for pair, watch in list(watches.items()):
            if canary:
                a, window = agreed(pair.model, watch), watch.canary.totals()
                evidence = replace(
                    watch.evidence,
                    compared=a.compared,
                    agreed=a.agreed,
                    per_class=dict(a.per_class),
                    candidate_p99_ms=window.p99_ms,
                    production_p99_ms=watch.production.totals().p99_ms,
                    clients=window.clients,
                    client_agreement=window.client_agreement,
                )
                name = f"{self.replica}-p{pair.production_version}"
                found.append(Snapshot(pair.model, canary, pair.canary_version, name, evidence))
        for key, tally in list(agreement.items()):
            if key.kind == "shadow" and shadow:
                evidence = Evidence(
                    production_version=key.production_version,
                    compared=tally.compared,
                    agreed=tally.agreed,
                    per_class=dict(tally.per_class),
                )
                name = f"{self.replica}-p{key.production_version}"
                found.append(Snapshot(key.model, shadow, key.candidate_version, name, evidence))
        return found

    def write(self, snapshots: list[Snapshot]) -> None:
        """Write the snapshots whose counts changed since they were last written (blocking)."""
        for s in snapshots:
            key = (s.model, s.alias, s.version, s.name)
            if self._published.get(key) == s.counts:
                continue
            s.evidence.updated_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            try:
                publish_evidence(self.registry, s.model, s.alias, s.version, s.name, s.evidence)
            except RegistryError as exc:
                log.warning("%s: rollout evidence not published now (%s)", s.model, exc)
                return
            self._published[key] = s.counts
