"""A snapshot of the accepted feedback: what one training run learns from and one gate run holds out.

One training example per image and label (the same correction sent about two models is one),
split into train and holdout by a hash of the image (`feedback.split_of`), and named by a digest
of exactly this set, which the manifest of a version trained on it records.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from digitserve.registry.feedback import FeedbackSample, FeedbackStore, content_hash


@dataclass(frozen=True)
class FeedbackSnapshot:
    """The accepted samples at one moment, one per content (the same image and label corrected for
    two models is one training example), and a digest that names exactly this set."""

    samples: tuple[FeedbackSample, ...]
    digest: str

    @classmethod
    def read(cls, store: FeedbackStore) -> FeedbackSnapshot:
        """The accepted samples now (pending, rejected and damaged ones never)."""
        return cls.of(store.accepted())

    @classmethod
    def of(cls, accepted: list[FeedbackSample]) -> FeedbackSnapshot:
        unique: dict[str, FeedbackSample] = {}
        for sample in accepted:
            unique.setdefault(content_hash(sample.pixels, sample.label), sample)
        digest = hashlib.sha256("\n".join(sorted(unique)).encode()).hexdigest()
        return cls(tuple(unique[k] for k in sorted(unique)), digest)

    def part(self, split: Literal["train", "holdout"]) -> tuple[np.ndarray, np.ndarray]:
        """(n, 28, 28) uint8 inputs and (n,) int64 labels of one split; -1 labels "not a digit"."""
        chosen = [s for s in self.samples if s.split == split]
        images = np.stack([s.pixels for s in chosen]) if chosen else np.empty((0, 28, 28), np.uint8)
        labels = np.array([-1 if s.label is None else s.label for s in chosen], np.int64)
        return images, labels

    def summary(self) -> dict[str, Any]:
        """What a manifest records about the feedback a version was trained with."""
        train = [s for s in self.samples if s.split == "train"]
        return {
            "snapshot_sha256": self.digest,
            "samples": len(self.samples),
            "train": len(train),
            "train_not_a_digit": sum(s.label is None for s in train),
            "holdout": len(self.samples) - len(train),
        }

    def ids(self) -> dict[str, list[str]]:
        """The sample ids in each split (for the version's report: which corrections it saw)."""
        return {split: [s.id for s in self.samples if s.split == split] for split in ("train", "holdout")}
