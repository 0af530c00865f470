"""What a version's answer means: calibrated probabilities, and whether the input is a digit at all.

Both numbers live in the version's manifest, measured when it was trained:

    "calibration": {"method": "temperature", "temperature": 1.31, ...}
    "not_a_digit": {"score": "confidence", "threshold": 0.42, ...}

- **Calibration.** Probabilities are softmax(logits / T), with T fitted on the validation split
  (never the test set) to minimise its negative log-likelihood: of the answers given with 90%
  confidence, about 90% are right.
- **Not a digit.** The models are trained to spread their probability evenly over the ten
  digits for things that are not digits (outlier exposure), so a drawing whose most likely digit
  has a calibrated probability under `threshold` is answered "not a digit". The threshold is
  chosen on validation data only: MNIST's validation digits, and the same digits re-rendered as
  in the robustness set (`digitserve.evaluation.choose_threshold`); no negative is looked at.

A version without these entries (published before them) answers with T = 1 and never abstains.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeGuard

import numpy as np


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of logits / temperature, float32."""
    scaled = np.asarray(logits, np.float32) / np.float32(temperature)
    scaled -= scaled.max(axis=1, keepdims=True)
    np.exp(scaled, out=scaled)
    scaled /= scaled.sum(axis=1, keepdims=True)
    return scaled


SCORE = "confidence"  # the not-a-digit score: the largest calibrated probability


class CalibrationError(ValueError):
    """The manifest's calibration or not-a-digit entry cannot be used; the message says which value."""


@dataclass(frozen=True)
class Calibration:
    temperature: float = 1.0
    threshold: float | None = None  # None: every answer is taken as a digit

    @classmethod
    def from_manifest(cls, extra: Mapping[str, Any]) -> Calibration:
        """Read from a manifest's extra fields; CalibrationError for a value that is present but unusable."""
        temperature, threshold = 1.0, None
        calibration = extra.get("calibration")
        if calibration is not None:
            value = calibration.get("temperature") if isinstance(calibration, dict) else None
            if not _finite(value) or not 0.05 <= float(value) <= 20:
                raise CalibrationError(f"calibration.temperature must be a number in [0.05, 20], got {value!r:.40}")
            temperature = float(value)
        rule = extra.get("not_a_digit")
        if rule is not None:
            value = rule.get("threshold") if isinstance(rule, dict) else None
            score = rule.get("score", SCORE) if isinstance(rule, dict) else None
            if score != SCORE:
                raise CalibrationError(f"not_a_digit.score must be {SCORE!r}, got {score!r:.40}")
            if not _finite(value) or not 0.1 <= float(value) < 1:
                raise CalibrationError(f"not_a_digit.threshold must be a probability in [0.1, 1), got {value!r:.40}")
            threshold = float(value)
        return cls(temperature, threshold)

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """float32 (B, 10) calibrated class probabilities."""
        return softmax(logits, self.temperature)

    def is_digit(self, probabilities: np.ndarray) -> np.ndarray:
        """(B,) bool: whether each answer is a digit under this version's threshold."""
        probabilities = np.asarray(probabilities)
        if self.threshold is None:
            return np.ones(len(probabilities), bool)
        return probabilities.max(axis=1) >= self.threshold

    def reason(self, probabilities: np.ndarray) -> str:
        """Why one answer (a row of probabilities) is not a digit, in a short sentence."""
        best = int(np.argmax(probabilities))
        return (
            f"does not look like a digit: no digit reaches {self.threshold:.0%} confidence "
            f"(the closest is {best} at {float(probabilities[best]):.0%})"
        )

    def describe(self) -> dict[str, Any]:
        return {"temperature": self.temperature, "not_a_digit_threshold": self.threshold}


def _finite(value: Any) -> TypeGuard[float]:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
