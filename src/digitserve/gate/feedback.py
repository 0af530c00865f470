"""The gate's look at people's corrections: accuracy on the feedback holdout, beside the MNIST test set.

The holdout is the accepted feedback whose content hash puts it outside training
(`registry/feedback.py:split_of`): no version trained with `--feedback` has seen it. The gate
reads it from the registry when it runs (not from what a manifest says it saw), scores the
candidate and the alias's current version on it as a server would answer (calibration and
not-a-digit threshold applied), and refuses a candidate that gets fewer of them right.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from digitserve.evaluation import runtime_logits
from digitserve.registry import ModelRegistry
from digitserve.registry.feedback import FeedbackStore
from digitserve.registry.feedback_snapshot import FeedbackSnapshot
from digitserve.runtime.calibration import Calibration


@dataclass(frozen=True)
class FeedbackHoldout:
    digest: str  # the accepted-feedback snapshot it comes from
    images: np.ndarray  # (n, 28, 28) uint8
    labels: np.ndarray  # (n,) int64; -1: "not a digit"

    @classmethod
    def read(cls, registry: ModelRegistry) -> FeedbackHoldout:
        snapshot = FeedbackSnapshot.read(FeedbackStore(registry.store))
        images, labels = snapshot.part("holdout")
        return cls(snapshot.digest, images, labels)

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class FeedbackScore:
    correct: int
    samples: int

    @property
    def accuracy(self) -> float | None:
        return round(self.correct / self.samples, 6) if self.samples else None


def score(runtime: Any, calibration: Calibration, holdout: FeedbackHoldout) -> FeedbackScore:
    """How many holdout samples the version answers as the person said: the right digit, or
    "not a digit" for what is not one."""
    if not len(holdout):
        return FeedbackScore(0, 0)
    probabilities = calibration.probabilities(runtime_logits(runtime, holdout.images))
    is_digit = calibration.is_digit(probabilities)
    predicted = probabilities.argmax(axis=1)
    digits = holdout.labels >= 0
    right = np.where(digits, is_digit & (predicted == holdout.labels), ~is_digit)
    return FeedbackScore(int(right.sum()), len(holdout))


def feedback_refusal(candidate: FeedbackScore | None, current: FeedbackScore | None, alias: str) -> list[str]:
    """Refuse a candidate that gets fewer feedback holdout samples right than the alias's version."""
    if candidate is None or current is None or not candidate.samples or candidate.correct >= current.correct:
        return []
    return [
        f"on the feedback holdout it answers {candidate.correct}/{candidate.samples} as people said, "
        f"fewer than {alias}'s {current.correct}/{current.samples}"
    ]


def describe(
    holdout: FeedbackHoldout, candidate: FeedbackScore | None, current: FeedbackScore | None
) -> dict[str, Any]:
    """What the event log records about the feedback holdout."""

    def scored(s: FeedbackScore | None) -> dict[str, Any] | None:
        return None if s is None else {"correct": s.correct, "accuracy": s.accuracy}

    return {
        "snapshot_sha256": holdout.digest,
        "samples": len(holdout),
        "candidate": scored(candidate),
        "current": scored(current),
    }
