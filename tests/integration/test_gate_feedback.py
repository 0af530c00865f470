"""The gate and the feedback holdout, through the real CLI: reported beside the MNIST test set, and a
candidate that answers fewer held-out corrections as people said than production is refused.

Constant models (`support/constant.py`) make every answer known: v1 always says 1, v2 always 7.
"""

from __future__ import annotations

import pytest
from support.cli import digitserve, error_line, succeeded
from support.constant import MODEL, RELAXED, publish_constant

from digitserve.data import load_mnist
from digitserve.registry import ModelRegistry
from digitserve.registry.feedback import FeedbackSample, FeedbackStore, Label, split_of
from digitserve.registry.feedback_snapshot import FeedbackSnapshot

pytestmark = pytest.mark.slow  # each promote re-measures two versions on the full test set


@pytest.fixture
def registry(tmp_path: object, monkeypatch: pytest.MonkeyPatch) -> ModelRegistry:
    monkeypatch.setenv("DIGITSERVE_ACTOR", "tester")
    monkeypatch.delenv("DIGITSERVE_REGISTRY", raising=False)
    for name, value in RELAXED.items():
        monkeypatch.setenv(f"DIGITSERVE_GATE_{name}", value)
    return ModelRegistry.open(f"{tmp_path}/registry")


def corrections(split: str, label: Label, count: int, skip: int = 0) -> list[FeedbackSample]:
    """`count` corrections (of MNIST test images, whatever they show) that fall in `split`."""
    found: list[FeedbackSample] = []
    for i, image in enumerate(load_mnist("test").images[skip:]):
        if split_of(image) == split:
            found.append(FeedbackSample(MODEL, 1, 1, label, image, f"2026-12-01T00:00:{i % 60:02d}.000Z"))
        if len(found) == count:
            return found
    raise AssertionError("not enough images")


def accept(store: FeedbackStore, samples: list[FeedbackSample], decision: str = "accept") -> None:
    for sample in samples:
        store.write(sample)
        if decision:
            store.review(sample.id, decision, "reviewer")


def promote(registry: ModelRegistry, version: int, *extra: str) -> list[str]:
    return ["registry", "promote", MODEL, str(version), "--threshold", "0", *extra, "--registry", registry.uri]


def test_a_candidate_worse_on_the_feedback_holdout_is_refused(registry: ModelRegistry) -> None:
    publish_constant(registry, 1)  # v1: always 1
    publish_constant(registry, 7)  # v2: always 7
    out = succeeded(digitserve(*promote(registry, 1)))
    assert "feedback holdout: no accepted samples yet" in out

    store = FeedbackStore(registry.store)
    accept(store, corrections("holdout", 1, 3))  # people say these are 1s: v1 is right, v2 wrong
    accept(store, corrections("train", 7, 4))  # training's share: the gate never looks at these
    accept(store, corrections("holdout", 7, 2, skip=5000), decision="")  # pending: not used
    accept(store, corrections("holdout", 7, 2, skip=6000), decision="reject")  # rejected: never used

    line = error_line(digitserve(*promote(registry, 2, "--max-regression", "1")))
    assert "on the feedback holdout it answers 0/3 as people said, fewer than production v1's 3/3" in line
    assert registry.resolve_alias(MODEL, "production") == 1

    accept(store, corrections("holdout", 7, 4, skip=3000))  # now v2 answers 4 of 7 as people said, v1 3
    out = succeeded(digitserve(*promote(registry, 2, "--max-regression", "1")))
    assert "feedback holdout: 4/7 right (production v1: 3/7)" in out
    gate = registry.events(MODEL, "production")[-1]["gate"]
    assert gate["feedback_holdout"] == {
        "snapshot_sha256": FeedbackSnapshot.read(store).digest,
        "samples": 7,
        "candidate": {"correct": 4, "accuracy": round(4 / 7, 6)},
        "current": {"correct": 3, "accuracy": round(3 / 7, 6)},
    }
    assert gate["max_regression"] == 1.0
    history = succeeded(digitserve("registry", "history", MODEL, "--registry", registry.uri))
    assert "feedback holdout 4/7" in history
