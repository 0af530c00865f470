"""What a version answers on its validation data: the reference the server's drift gauge compares
live answers with (serving/observability/answers.py).

Training stores it in the manifest (`answers_reference`); `training/add_reference.py` adds it to
a version published before. Two distributions, both over bounded categories:
- **answers**: the shares of "0".."9" and "not_a_digit" (the answer given by default);
- **confidence**: the shares of the calibrated top probability in `CONFIDENCE_BUCKETS`, the same
  upper bounds as the `digitserve_answer_confidence` histogram.
Drift is the Jensen-Shannon divergence (base 2: 0 for the same distribution, 1 for disjoint ones).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

ANSWERS = (*(str(d) for d in range(10)), "not_a_digit")
NOT_A_DIGIT = len(ANSWERS) - 1
CONFIDENCE_BUCKETS = (0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.99, 0.999, 1.0)  # upper bounds, as Prometheus's `le`
MANIFEST_KEY = "answers_reference"


def answer_indices(probabilities: np.ndarray, is_digit: np.ndarray) -> np.ndarray:
    """(n,) int: each answer's index in `ANSWERS` (the best digit, or `NOT_A_DIGIT`)."""
    return np.where(is_digit, np.argmax(probabilities, axis=1), NOT_A_DIGIT)


def confidence_bins(confidence: np.ndarray) -> np.ndarray:
    """(n,) int: each confidence's bucket, the first upper bound it does not exceed."""
    return np.minimum(np.searchsorted(CONFIDENCE_BUCKETS, confidence, side="left"), len(CONFIDENCE_BUCKETS) - 1)


def shares(counts: np.ndarray) -> np.ndarray:
    total = counts.sum()
    return counts / total if total else np.zeros(len(counts))


def js_divergence(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen-Shannon divergence of two distributions over the same categories, base 2 (0..1)."""
    p, q = np.asarray(p, np.float64), np.asarray(q, np.float64)
    m = (p + q) / 2

    def kl(a: np.ndarray) -> float:
        mask = a > 0
        return float(np.sum(a[mask] * np.log2(a[mask] / m[mask])))

    return min(1.0, max(0.0, (kl(p) + kl(q)) / 2))


@dataclass(frozen=True)
class AnswerReference:
    answers: np.ndarray  # (11,) shares over ANSWERS
    confidence: np.ndarray  # (9,) shares over CONFIDENCE_BUCKETS
    count: int
    measured_on: str

    @classmethod
    def measure(cls, probabilities: np.ndarray, is_digit: np.ndarray, measured_on: str) -> AnswerReference:
        """The reference of these answers (calibrated probabilities and the version's is-digit verdicts)."""
        answers = np.bincount(answer_indices(probabilities, is_digit), minlength=len(ANSWERS))
        bins = np.bincount(confidence_bins(probabilities.max(axis=1)), minlength=len(CONFIDENCE_BUCKETS))
        return cls(shares(answers), shares(bins), len(probabilities), measured_on)

    def to_dict(self) -> dict[str, Any]:
        return {
            "answers": {name: round(float(s), 6) for name, s in zip(ANSWERS, self.answers, strict=True)},
            "confidence": {
                "buckets": list(CONFIDENCE_BUCKETS),
                "shares": [round(float(s), 6) for s in self.confidence],
            },
            "count": self.count,
            "measured_on": self.measured_on,
        }

    @classmethod
    def from_manifest(cls, extra: Mapping[str, Any], what: str) -> AnswerReference | None:
        """The manifest's reference, or None (with a warning) when it has none or it is damaged:
        the version serves all the same, without a drift gauge."""
        doc = extra.get(MANIFEST_KEY)
        if doc is None:
            log.info("%s has no %s: no drift gauge (training/add_reference.py adds one)", what, MANIFEST_KEY)
            return None
        try:
            answers = np.array([float(doc["answers"][name]) for name in ANSWERS])
            confidence = doc["confidence"]
            if [float(b) for b in confidence["buckets"]] != list(CONFIDENCE_BUCKETS):
                raise ValueError("other confidence buckets")
            bins = np.array([float(s) for s in confidence["shares"]])
            count = int(doc["count"])
            if len(bins) != len(CONFIDENCE_BUCKETS) or count <= 0:
                raise ValueError("wrong lengths")
            for values in (answers, bins):
                if not all(math.isfinite(v) and v >= 0 for v in values) or abs(values.sum() - 1) > 1e-3:
                    raise ValueError("shares must be non-negative and sum to 1")
        except (KeyError, TypeError, ValueError) as exc:
            log.warning("%s: its %s cannot be used (%s): no drift gauge", what, MANIFEST_KEY, exc)
            return None
        return cls(answers, bins, count, str(doc.get("measured_on", "")))
