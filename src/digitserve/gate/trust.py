"""The gate's trust limits: a candidate's confidence must be calibrated and it must say "not a digit"
when it should, measured with the calibration and threshold its manifest records, applied as a
server applies them (`runtime/calibration.py`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from digitserve.config import GateSettings, checked_fraction, flag_name, read_group
from digitserve.data import load_mnist
from digitserve.evaluation import expected_calibration_error, rejection_rate, runtime_logits
from digitserve.runtime.calibration import Calibration

_DEFAULTS = GateSettings()


@dataclass(frozen=True)
class TrustLimits:
    """What the gate asks of a candidate's calibration and not-a-digit answers (as fractions)."""

    max_ece: float = _DEFAULTS.max_ece
    max_digits_not_a_digit: float = _DEFAULTS.max_digits_not_a_digit
    min_negatives_not_a_digit: float = _DEFAULTS.min_negatives_not_a_digit

    SETTINGS = {  # field -> DIGITSERVE_GATE_<NAME> (config/groups.py: GateSettings)
        "max_ece": "MAX_ECE",
        "max_digits_not_a_digit": "MAX_DIGITS_NOT_A_DIGIT",
        "min_negatives_not_a_digit": "MIN_NEGATIVES_NOT_A_DIGIT",
    }

    @classmethod
    def resolve(cls, **overrides: float | None) -> TrustLimits:
        """Explicit overrides (CLI flags), else the DIGITSERVE_GATE_* settings (their defaults when unset)."""
        flags = {name: value for name, value in overrides.items() if value is not None}
        settings = read_group(GateSettings, skip=flags)
        values = {name: checked_fraction(value, flag_name(name)) for name, value in flags.items()}
        return cls(**{name: values.get(name, getattr(settings, name)) for name in cls.SETTINGS})


@dataclass(frozen=True)
class Trust:
    """A version's trust numbers as the gate measured them (None: the version records no such rule)."""

    temperature: float | None
    threshold: float | None
    test_ece: float
    digits_not_a_digit: float | None
    negatives_not_a_digit: float | None
    negatives: int


def measure_trust(runtime: Any, extra: dict[str, Any], calibration: Calibration, test_logits: np.ndarray) -> Trust:
    """Calibration and not-a-digit numbers of an ONNX artifact: test ECE, and the not-a-digit
    rates on the MNIST test set and on the held-out negatives, under the manifest's rule."""
    from digitserve.synthetic.sets import negatives

    held_out = negatives("held-out")
    labels = load_mnist("test").labels[: len(test_logits)]
    probabilities = calibration.probabilities(test_logits)
    rule = calibration.threshold
    negative_probs = calibration.probabilities(runtime_logits(runtime, held_out.images))
    return Trust(
        temperature=calibration.temperature if "calibration" in extra else None,
        threshold=rule,
        test_ece=round(expected_calibration_error(probabilities, labels), 6),
        digits_not_a_digit=None if rule is None else round(rejection_rate(probabilities, rule), 6),
        negatives_not_a_digit=None if rule is None else round(rejection_rate(negative_probs, rule), 6),
        negatives=len(held_out),
    )


def trust_refusals(trust: Trust | None, calibration_error: str | None, limits: TrustLimits) -> list[str]:
    """Why a candidate's confidence or not-a-digit answers cannot be trusted (empty: they can)."""
    if calibration_error:
        return [f"its manifest's calibration cannot be used ({calibration_error})"]
    if trust is None:
        return []  # no ONNX artifact: refused for that already
    if trust.temperature is None or trust.threshold is None:
        return [
            "it records no calibration or not-a-digit threshold, so its confidence means little and it never "
            "says 'not a digit' (training/train.py records both)"
        ]
    refusals = []
    if round(trust.test_ece, 6) > limits.max_ece:
        refusals.append(f"test ECE {trust.test_ece:.2%} > {limits.max_ece:.2%}")
    if trust.digits_not_a_digit is not None and round(trust.digits_not_a_digit, 6) > limits.max_digits_not_a_digit:
        refusals.append(
            f"{trust.digits_not_a_digit:.2%} of MNIST test digits answered 'not a digit' "
            f"> {limits.max_digits_not_a_digit:.2%}"
        )
    if (
        trust.negatives_not_a_digit is not None
        and round(trust.negatives_not_a_digit, 6) < limits.min_negatives_not_a_digit
    ):
        refusals.append(
            f"only {trust.negatives_not_a_digit:.2%} of held-out negatives answered 'not a digit' "
            f"< {limits.min_negatives_not_a_digit:.2%}"
        )
    return refusals
