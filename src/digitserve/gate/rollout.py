"""Promotion from live evidence: production moves to a canary's version only once the servers have
seen enough of it beside production, agreeing, without errors and without a rollback -- and,
like every move, only through the gate (`promote`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from digitserve.config.groups import (
    PROMOTE_MAX_ERROR_RATE,
    PROMOTE_MIN_AGREEMENT,
    PROMOTE_MIN_CLIENTS,
    PROMOTE_MIN_COMPARED,
)
from digitserve.gate.core import GateRefusedError
from digitserve.gate.promotion import Promotion, promote
from digitserve.registry import ModelRegistry, RegistryError
from digitserve.registry.evidence import Evidence


@dataclass(frozen=True)
class EvidenceLimits:
    """What the live evidence must show (from every server process that published it, summed)."""

    min_compared: int = PROMOTE_MIN_COMPARED
    min_agreement: float = PROMOTE_MIN_AGREEMENT
    max_error_rate: float = PROMOTE_MAX_ERROR_RATE
    min_clients: int = PROMOTE_MIN_CLIENTS


@dataclass(frozen=True)
class Verdict:
    model: str
    alias: str
    version: int
    evidence: Evidence
    refusals: tuple[str, ...]
    rolled_back: bool
    etag: str = ""  # the canary alias as it was judged

    @property
    def ready(self) -> bool:
        return not self.refusals

    def summary(self) -> str:
        e = self.evidence
        agreement = f"{e.agreement:.2%}" if e.agreement is not None else "-"
        head = (
            f"{self.model}/{self.alias} v{self.version}: {e.compared} compared, agreement {agreement}, "
            f"{e.candidate_requests} canary requests ({e.candidate_errors} errors) from {e.replicas} server processes"
        )
        return f"{head}; {'; '.join(self.refusals)}" if self.refusals else f"{head}; enough evidence"


def judge_evidence(registry: ModelRegistry, model: str, alias: str, production: str, limits: EvidenceLimits) -> Verdict:
    """The evidence for the version `alias` names now, against `limits`."""
    state = registry.get_alias(model, alias)
    if state is None:
        raise RegistryError(f"model {model!r} has no alias {alias!r} to promote from")
    if state.retired:
        last = registry.events(model, alias)[-1:] or [{}]
        why = f"rolled back: {last[0].get('reason')}" if last[0].get("action") == "rollback" else "retired"
        raise GateRefusedError(f"{model}/{alias} is {why}; move it to a candidate again first")
    held = registry.get_alias(model, production)
    if held is not None and held.version == state.version:
        raise GateRefusedError(f"{model}/{alias} names v{state.version}, {production}'s own version already")
    if held is not None and held.updated_at > state.updated_at:
        raise GateRefusedError(
            f"{model}/{production} moved after {alias} was set; the canary was judged beside another production"
        )
    evidence = Evidence.gather(registry, model, alias, state.version)
    refusals = []
    if evidence.rolled_back:
        refusals.append(f"a server rolled it back: {evidence.rolled_back}")
    if evidence.compared < limits.min_compared:
        refusals.append(f"only {evidence.compared} compared inputs, at least {limits.min_compared} needed")
    if evidence.agreement is not None and evidence.agreement < limits.min_agreement:
        refusals.append(f"agreement {evidence.agreement:.2%} < {limits.min_agreement:.2%}")
    if evidence.clients < limits.min_clients:
        refusals.append(
            f"compared inputs from {evidence.clients} client networks, at least {limits.min_clients} needed"
        )
    median = evidence.client_agreement
    if median is not None and median < limits.min_agreement:  # no few clients' easy inputs carry a promotion
        refusals.append(f"the median client network's agreement {median:.2%} < {limits.min_agreement:.2%}")
    if evidence.error_rate is not None and evidence.error_rate > limits.max_error_rate:
        refusals.append(f"error rate {evidence.error_rate:.2%} > {limits.max_error_rate:.2%}")
    return Verdict(model, alias, state.version, evidence, tuple(refusals), bool(evidence.rolled_back), state.etag)


def promote_from(
    registry: ModelRegistry,
    model: str,
    source: str,
    *,
    alias: str = "production",
    evidence_limits: EvidenceLimits | None = None,
    force: bool = False,
    reason: str = "",
    **gate: Any,
) -> tuple[Promotion, Verdict]:
    """Move `alias` to the version `source` (a canary alias) names, if its evidence holds and the
    gate passes it; `force` (with a reason) bypasses both, and the event says so."""
    verdict = judge_evidence(registry, model, source, alias, evidence_limits or EvidenceLimits())
    if not verdict.ready and not force:
        raise GateRefusedError(f"not enough live evidence to promote: {verdict.summary()}")
    record = {"from_alias": source, **verdict.evidence.to_dict(), "refusals": list(verdict.refusals)}

    def still_the_same() -> None:  # the gate takes a while: a server may have rolled the canary back meanwhile
        now = registry.get_alias(model, source)
        if (
            now is None
            or now.etag != verdict.etag
            or Evidence.gather(registry, model, source, verdict.version).rolled_back
        ):
            raise GateRefusedError(f"{model}/{source} changed (or was rolled back) while the gate measured it")

    promotion = promote(
        registry,
        model,
        verdict.version,
        alias=alias,
        force=force,
        reason=reason,
        evidence=record,
        before_move=None if force else still_the_same,
        **gate,
    )
    return promotion, verdict
