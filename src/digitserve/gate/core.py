"""The gate's measurements and judgement of one candidate for one alias (see the package docstring)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from digitserve.config import (
    GateSettings,
    SettingError,
    checked_fraction,
    gate_fraction,
    gate_threshold_variable,
    read_group,
)
from digitserve.data import load_mnist
from digitserve.evaluation import (
    classification_metrics,
    evaluate_artifact,
    load_runtime,
)
from digitserve.gate.feedback import FeedbackHoldout, FeedbackScore, feedback_refusal
from digitserve.gate.feedback import describe as describe_feedback
from digitserve.gate.feedback import score as score_feedback
from digitserve.gate.trust import Trust, TrustLimits, measure_trust, trust_refusals
from digitserve.registry import AliasState, ModelRegistry, RegistryError
from digitserve.runtime.calibration import Calibration, CalibrationError

DEFAULT_THRESHOLDS = {"cnn": 0.996, "vit": 0.993}  # by architecture
MAX_REGRESSION = GateSettings().max_regression  # 0.1 point of accuracy: 10 of the 10,000 test images
AGREEMENT_ATOL = 1e-3  # largest logit difference allowed between the ONNX artifact and torch


class GateRefusedError(RegistryError):
    """The gate measured the candidate and refused it; the message says why in one line."""


@dataclass(frozen=True)
class Measurement:
    version: int
    accuracy: float
    errors: int
    num_examples: int
    data_sha256: str
    label_disagreements: int | None = 0  # test images whose ONNX and torch labels differ (None: not compared)
    max_logit_difference: float | None = 0.0
    artifact: str = "onnx"  # what was measured: "onnx", or "weights" for a version without ONNX
    trust: Trust | None = None
    calibration_error: str | None = None  # why the manifest's calibration cannot be used
    feedback: FeedbackScore | None = None  # on the feedback holdout (None: not measured, no ONNX artifact)


@dataclass(frozen=True)
class GateResult:
    model: str
    alias: str
    candidate: Measurement
    current: Measurement | None
    threshold: float
    threshold_source: str
    refusals: tuple[str, ...]
    limits: TrustLimits = field(default_factory=TrustLimits)
    holdout: FeedbackHoldout | None = None
    max_regression: float = MAX_REGRESSION

    @property
    def passed(self) -> bool:
        return not self.refusals

    def summary(self) -> str:
        head = f"{self.model} v{self.candidate.version}: accuracy {self.candidate.accuracy:.4f}"
        if not self.passed:
            return f"{head} refused: {'; '.join(self.refusals)}"
        parts = [f"{head} >= threshold {self.threshold:.4f} ({self.threshold_source})"]
        trust = self.candidate.trust
        if trust is not None and trust.threshold is not None:
            parts.append(
                f"test ECE {trust.test_ece:.2%}, not a digit: {trust.digits_not_a_digit:.2%} of MNIST test, "
                f"{trust.negatives_not_a_digit:.2%} of held-out negatives"
            )
        if self.current is not None:
            parts.append(f"{self.alias} v{self.current.version} measures {self.current.accuracy:.4f}")
        if self.holdout is not None:
            parts.append(self._feedback_summary())
        return ", ".join(parts)

    def _feedback_summary(self) -> str:
        assert self.holdout is not None
        if not len(self.holdout):
            return "feedback holdout: no accepted samples yet"
        candidate, current = self.candidate.feedback, self.current.feedback if self.current else None
        text = f"feedback holdout: {candidate.correct if candidate else '-'}/{len(self.holdout)} right"
        if current is None or self.current is None:
            return text
        return f"{text} ({self.alias} v{self.current.version}: {current.correct}/{current.samples})"

    def as_event(self) -> dict[str, Any]:
        """What the event log records about the gate: enough to audit the decision later."""

        def measured(m: Measurement | None) -> dict[str, Any] | None:
            if m is None:
                return None
            return {
                "version": m.version,
                "accuracy": m.accuracy,
                "errors": m.errors,
                "artifact": m.artifact,
                "onnx_torch_label_disagreements": m.label_disagreements,
                "onnx_torch_max_logit_difference": m.max_logit_difference,
                "trust": None
                if m.trust is None
                else {
                    "temperature": m.trust.temperature,
                    "not_a_digit_threshold": m.trust.threshold,
                    "test_ece": m.trust.test_ece,
                    "mnist_test_not_a_digit": m.trust.digits_not_a_digit,
                    "held_out_negatives_not_a_digit": m.trust.negatives_not_a_digit,
                    "held_out_negatives": m.trust.negatives,
                },
            }

        return {
            "forced": False,
            "passed": self.passed,
            "threshold": self.threshold,
            "threshold_source": self.threshold_source,
            "max_regression": self.max_regression,
            "agreement_atol": AGREEMENT_ATOL,
            "trust_limits": {
                "max_test_ece": self.limits.max_ece,
                "max_mnist_test_not_a_digit": self.limits.max_digits_not_a_digit,
                "min_held_out_negatives_not_a_digit": self.limits.min_negatives_not_a_digit,
            },
            "candidate": measured(self.candidate),
            "current": measured(self.current),
            "num_examples": self.candidate.num_examples,
            "data_sha256": self.candidate.data_sha256,
            "refusals": list(self.refusals),
            "feedback_holdout": None
            if self.holdout is None
            else describe_feedback(
                self.holdout, self.candidate.feedback, self.current.feedback if self.current else None
            ),
        }


def resolve_max_regression(override: float | None) -> float:
    """How far below the alias's version a candidate's test accuracy may be: --max-regression,
    else DIGITSERVE_GATE_MAX_REGRESSION, else 0.001 (one point in a thousand)."""
    if override is not None:
        return checked_fraction(override, "--max-regression", "an accuracy difference")
    return read_group(
        GateSettings, skip=("max_ece", "max_digits_not_a_digit", "min_negatives_not_a_digit")
    ).max_regression


def resolve_threshold(model: str, architecture: str, override: float | None) -> tuple[float, str]:
    """The accuracy a version must reach, and where that number came from."""
    var = gate_threshold_variable(model)
    value = gate_fraction(var, override, "--threshold", "an accuracy")
    if value is not None:
        return value, "--threshold" if override is not None else var
    if architecture in DEFAULT_THRESHOLDS:
        return DEFAULT_THRESHOLDS[architecture], f"default for {architecture}"
    raise SettingError(f"no default gate threshold for architecture {architecture!r}: pass --threshold or set {var}")


def torch_logits(registry: ModelRegistry, model: str, version: int) -> np.ndarray:
    """The torch model's test-set logits, from the version's verified safetensors weights."""
    try:
        from digitserve.models.checkpoint import load_network, predict_logits
    except ImportError as exc:
        raise RegistryError(
            f"the gate compares the ONNX artifact with torch; install digitserve[train] ({exc})"
        ) from None
    _, network = load_network(registry, model, version)
    return predict_logits(network, load_mnist("test").images).numpy()


def measure(
    registry: ModelRegistry,
    model: str,
    version: int,
    holdout: FeedbackHoldout | None = None,
    *,
    compare_torch: bool = True,
) -> Measurement:
    """Evaluate the version's ONNX artifact on the full MNIST test set, and compare it with torch.

    A version published before ONNX serving (weights only) is measured with torch, which is what
    served it: such a version can be the alias's current one, never a candidate (`check` refuses).
    `compare_torch=False` (the alias's current version, whose artifact the gate compared when it
    was promoted) skips the comparison, two thirds of the time: its fields are then None."""
    if registry.manifest(model, version).onnx is None:
        reference = torch_logits(registry, model, version)
        test = load_mnist("test")
        metrics = classification_metrics(test.labels, reference.argmax(axis=1))
        return Measurement(
            version, metrics["accuracy"], metrics["errors"], metrics["num_examples"], test.checksum, artifact="weights"
        )
    manifest, runtime = load_runtime(registry, model, version)
    metrics, logits = evaluate_artifact(runtime)
    disagreements, worst = None, None
    if compare_torch:
        reference = torch_logits(registry, model, version)
        disagreements = int((logits.argmax(axis=1) != reference.argmax(axis=1)).sum())
        worst = round(float(np.abs(logits - reference).max()), 8)
    try:
        calibration, problem = Calibration.from_manifest(manifest.extra), None
    except CalibrationError as exc:
        calibration, problem = Calibration(), str(exc)
    return Measurement(
        version,
        metrics["accuracy"],
        metrics["errors"],
        metrics["num_examples"],
        metrics["data_sha256"],
        disagreements,
        worst,
        trust=measure_trust(runtime, manifest.extra, calibration, logits),
        calibration_error=problem,
        feedback=score_feedback(runtime, calibration, holdout) if holdout is not None else None,
    )


@dataclass
class PromotionGate:
    """Judges candidates for one alias against the version it held when the gate was opened."""

    registry: ModelRegistry
    model: str
    alias: str
    current_state: AliasState | None
    threshold_override: float | None = None
    limits: TrustLimits = field(default_factory=TrustLimits.resolve)
    max_regression: float = MAX_REGRESSION
    _current: Measurement | None = field(default=None, init=False)
    _holdout: FeedbackHoldout | None = field(default=None, init=False)

    @property
    def holdout(self) -> FeedbackHoldout:
        """The accepted feedback held out of training, read once when the gate first needs it."""
        if self._holdout is None:
            self._holdout = FeedbackHoldout.read(self.registry)
        return self._holdout

    def current_measurement(self) -> Measurement | None:
        """The alias's present version, measured once however many candidates are judged."""
        if self.current_state is None:
            return None
        if self._current is None:
            version = self.current_state.version
            self._current = measure(self.registry, self.model, version, self.holdout, compare_torch=False)
        return self._current

    def check(self, version: int) -> GateResult:
        manifest = self.registry.manifest(self.model, version)
        threshold, source = resolve_threshold(self.model, manifest.architecture, self.threshold_override)
        candidate = measure(self.registry, self.model, version, self.holdout)
        refusals = []
        if candidate.artifact != "onnx":
            refusals.append("it has no ONNX artifact, so no server can run it (training/export_onnx.py makes one)")
        worst = candidate.max_logit_difference
        if candidate.artifact == "onnx" and (candidate.label_disagreements or worst is None or worst > AGREEMENT_ATOL):
            refusals.append(
                f"its ONNX artifact disagrees with its torch weights ({candidate.label_disagreements} test labels "
                f"differ, largest logit difference {worst:.3g} > {AGREEMENT_ATOL:g})"
            )
        # Accuracies are multiples of 1/10000: round before comparing so float noise cannot
        # turn an exact tie into a refusal.
        if round(candidate.accuracy, 6) < round(threshold, 6):
            refusals.append(f"below the threshold {threshold:.4f} ({source})")
        refusals += trust_refusals(candidate.trust, candidate.calibration_error, self.limits)
        current = self.current_measurement() if self.current_state else None
        if current is not None and current.version != version:
            drop = round(current.accuracy - candidate.accuracy, 6)
            if drop > self.max_regression:
                refusals.append(
                    f"{drop:.4f} below {self.alias} v{current.version} ({current.accuracy:.4f}); "
                    f"at most {self.max_regression:.4f} is allowed"
                )
            refusals += feedback_refusal(candidate.feedback, current.feedback, f"{self.alias} v{current.version}")
        return GateResult(
            self.model,
            self.alias,
            candidate,
            current,
            threshold,
            source,
            tuple(refusals),
            self.limits,
            self.holdout,
            self.max_regression,
        )
