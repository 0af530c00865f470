"""Moving an alias through the gate: `promote` one version, or `promote_newest_passing` (for CI)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from digitserve.gate.core import GateRefusedError, GateResult, PromotionGate, resolve_max_regression
from digitserve.gate.trust import TrustLimits
from digitserve.registry import AliasState, ModelRegistry, RegistryError


@dataclass(frozen=True)
class Promotion:
    """What a promote did: `changed` is False when the alias already held the version."""

    model: str
    alias: str
    version: int
    previous: int | None
    changed: bool
    forced: bool = False
    gate: GateResult | None = None


def promote(
    registry: ModelRegistry,
    model: str,
    version: int,
    *,
    alias: str = "production",
    threshold: float | None = None,
    force: bool = False,
    reason: str = "",
    limits: TrustLimits | None = None,
    max_regression: float | None = None,
    evidence: Mapping[str, Any] | None = None,
    before_move: Callable[[], None] | None = None,
) -> Promotion:
    """Move `alias` to `version` if the gate passes it (or, with `force`, for a stated reason);
    `evidence` (live evidence it was promoted on) goes into the event; `before_move` runs after the
    gate passed and before the move, and may still refuse it.

    The alias is read once, before the gate runs, and moved by compare-and-swap against that
    read: if someone moves it while the candidate is being measured, nothing is overwritten.
    """
    if force and not reason.strip():
        raise RegistryError("--force bypasses the gate and needs --reason TEXT saying why")
    registry.manifest(model, version)  # NotFoundError before any measuring
    state = registry.get_alias(model, alias)
    if state is not None and state.version == version:
        return Promotion(model, alias, version, state.previous, changed=False, forced=force)
    if force:
        registry.move_alias(
            model,
            alias,
            version,
            reason=reason,
            expected=state,
            gate={"forced": True, "passed": None, "reason": reason},
            evidence=evidence,
        )
        return Promotion(model, alias, version, state.version if state else None, True, forced=True)
    result = _open_gate(registry, model, alias, state, threshold, limits, max_regression).check(version)
    if not result.passed:
        raise GateRefusedError(f"gate refused {result.summary()}")
    if before_move is not None:
        before_move()
    return _move_after_gate(registry, result, state, reason, evidence)


def promote_newest_passing(
    registry: ModelRegistry,
    model: str,
    *,
    alias: str = "production",
    threshold: float | None = None,
    reason: str = "",
    limits: TrustLimits | None = None,
    max_regression: float | None = None,
) -> Promotion:
    """Promote the newest version, newer than the alias's, that the gate passes (for CI)."""
    versions = registry.list_versions(model)
    if not versions:
        raise RegistryError(f"model {model!r} has no versions in {registry.uri}")
    state = registry.get_alias(model, alias)
    candidates = [v for v in reversed(versions) if state is None or v > state.version]
    if state is not None and not candidates:
        return Promotion(model, alias, state.version, state.previous, changed=False)
    gate = _open_gate(registry, model, alias, state, threshold, limits, max_regression)
    refused = []
    for version in candidates:
        result = gate.check(version)
        if result.passed:
            return _move_after_gate(registry, result, state, reason)
        refused.append(f"v{version} {result.candidate.accuracy:.4f} ({'; '.join(result.refusals)})")
    newer = f" newer than {alias} v{state.version}" if state else ""
    raise GateRefusedError(f"no version of {model}{newer} passes the gate: {', '.join(refused)}")


def _open_gate(
    registry: ModelRegistry,
    model: str,
    alias: str,
    state: AliasState | None,
    threshold: float | None,
    limits: TrustLimits | None,
    max_regression: float | None,
) -> PromotionGate:
    """The gate for one alias as it stands, with its limits resolved (flags, then settings, then defaults)."""
    limits = limits or TrustLimits.resolve()
    return PromotionGate(registry, model, alias, state, threshold, limits, resolve_max_regression(max_regression))


def _move_after_gate(
    registry: ModelRegistry,
    result: GateResult,
    state: AliasState | None,
    reason: str,
    evidence: Mapping[str, Any] | None = None,
) -> Promotion:
    version = result.candidate.version
    reason = reason or f"gate passed: accuracy {result.candidate.accuracy:.4f}"
    gate = result.as_event()
    registry.move_alias(
        result.model, result.alias, version, reason=reason, expected=state, gate=gate, evidence=evidence
    )
    previous = state.version if state else None
    return Promotion(result.model, result.alias, version, previous, changed=True, gate=result)
