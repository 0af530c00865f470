"""Each process's live evidence about the candidates it has seen, published to the registry
(registry/rollouts.py) every poll interval: one document per (candidate version, production
version) and process, whose counts only grow. Snapshots are taken on the event loop, where the
counts change, and written by a registry thread, which only reads its own copies."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from digitserve.config import Settings
from digitserve.registry import ModelRegistry, RegistryError
from digitserve.registry.rollouts import Evidence, publish_evidence
from digitserve.serving.canary import CanaryWatch
from digitserve.serving.comparison import Agreement

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
        return (e.candidate_requests, e.production_requests, e.compared, e.candidate_errors, int(bool(e.rolled_back)))


class EvidencePublisher:
    def __init__(self, registry: ModelRegistry, settings: Settings, replica: str) -> None:
        self.registry = registry
        self.settings = settings
        self.replica = replica
        self._published: dict[tuple[str, str, int, str], tuple[int, ...]] = {}

    def snapshots(
        self,
        watches: Mapping[tuple[str, int, int], CanaryWatch],
        agreed: Callable[[str, CanaryWatch], dict[str, Any]],
        agreement: Mapping[tuple[str, str, int, int], Agreement],
    ) -> list[Snapshot]:
        """Copies of what there is to publish, taken where the counts change (the event loop)."""
        found = []
        canary, shadow = self.settings.canary_alias, self.settings.shadow_alias
        for (model, production, candidate), watch in list(watches.items()):
            if canary:
                a, live = agreed(model, watch), watch.live()
                evidence = replace(
                    watch.evidence,
                    compared=a["compared"],
                    agreed=a["agreed"],
                    per_class=a["per_class"],
                    candidate_p99_ms=live["canary"]["p99_ms"],
                    production_p99_ms=live["production"]["p99_ms"],
                )
                found.append(Snapshot(model, canary, candidate, f"{self.replica}-p{production}", evidence))
        for (kind, model, production, candidate), pair in list(agreement.items()):
            if kind == "shadow" and shadow:
                per_class = {k: list(v) for k, v in pair.per_class.items()}
                evidence = Evidence(
                    production_version=production, compared=pair.compared, agreed=pair.agreed, per_class=per_class
                )
                found.append(Snapshot(model, shadow, candidate, f"{self.replica}-p{production}", evidence))
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
