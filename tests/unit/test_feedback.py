"""The feedback dataset in the registry (local folder and S3 on moto): samples, reviews, snapshots."""

from __future__ import annotations

import json

import numpy as np
import pytest

from digitserve.registry import AlreadyExistsError, ModelRegistry, NotFoundError, RegistryError
from digitserve.registry.feedback import (
    FeedbackError,
    FeedbackSample,
    FeedbackStore,
    content_hash,
    sample_key,
    split_of,
    states_from_keys,
)
from digitserve.registry.feedback_snapshot import FeedbackSnapshot


def digit(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (28, 28), dtype=np.uint8)


def sample(seed: int = 0, label: int | None = 7, model: str = "cnn", predicted: int | None = 1) -> FeedbackSample:
    return FeedbackSample(model, 3, predicted, label, digit(seed), f"2026-12-01T00:00:{seed % 60:02d}.000Z")


@pytest.fixture
def feedback(registry_uri: str) -> FeedbackStore:
    return FeedbackStore(ModelRegistry.open(registry_uri).store)


def test_a_sample_round_trips_and_its_id_names_model_pixels_and_label() -> None:
    s = sample()
    back = FeedbackSample.parse(s.to_bytes())
    assert back.id == s.id and np.array_equal(back.pixels, s.pixels)
    assert (back.model, back.version, back.predicted, back.label, back.right) == ("cnn", 3, 1, 7, False)
    assert len({s.id, sample(label=8).id, sample(model="vit").id, sample(seed=1).id}) == 4
    assert sample(predicted=5).id == s.id  # what it corrects is context, not identity
    nad = FeedbackSample.parse(sample(label=None, predicted=None).to_bytes())
    assert nad.label is None and nad.predicted is None and nad.right
    assert json.loads(nad.to_bytes())["label"] == "not_a_digit"


@pytest.mark.parametrize(
    "change",
    [
        {"label": 10},
        {"label": True},
        {"label": "seven"},
        {"version": 0},
        {"model": "Not A Name"},
        {"pixels_uint8_b64": "AAAA"},
        {"pixels_uint8_b64": "%%%"},
        {"id": "0" * 64},
    ],
)
def test_a_damaged_sample_is_refused_with_a_reason(change: dict[str, object]) -> None:
    doc = {**json.loads(sample().to_bytes()), **change}
    with pytest.raises(FeedbackError):
        FeedbackSample.parse(json.dumps(doc).encode())


def test_the_same_image_and_label_twice_is_one_sample(feedback: FeedbackStore) -> None:
    assert feedback.write(sample()) is True
    assert feedback.write(sample(predicted=4)) is False  # the same image and label for the same model
    assert feedback.write(sample(model="vit")) is True  # another model's answer: its own sample
    assert sorted(feedback.ids()) == sorted([sample().id, sample(model="vit").id])
    with pytest.raises(AlreadyExistsError):
        feedback.store.create(sample_key(sample().id), sample().to_bytes())  # create-only underneath


def test_reviews_are_events_and_the_latest_decides(feedback: FeedbackStore) -> None:
    feedback.write(sample(0))
    feedback.write(sample(1))
    sid = sample(0).id
    assert feedback.state(sid) == "pending"
    feedback.review(sid, "accept", "alice", "clearly a 7")
    assert feedback.state(sid) == "accepted"
    feedback.review(sid, "reject", "bob", "looks like a 1 to me")
    assert feedback.state(sid) == "rejected"
    reviews = feedback.reviews(sid)
    assert [(r.decision, r.actor, r.reason) for r in reviews] == [
        ("accept", "alice", "clearly a 7"),
        ("reject", "bob", "looks like a 1 to me"),
    ]
    assert feedback.state(sample(1).id) == "pending"
    with pytest.raises(NotFoundError):
        feedback.review("f" * 64, "accept", "alice")
    with pytest.raises(FeedbackError):
        feedback.review(sid, "maybe", "alice")


def test_ids_are_resolved_from_a_prefix(feedback: FeedbackStore) -> None:
    feedback.write(sample())
    sid = sample().id
    assert feedback.resolve(sid[:8].upper()) == sid
    with pytest.raises(FeedbackError, match="at least its first 8"):
        feedback.resolve(sid[:5])
    with pytest.raises(NotFoundError):
        feedback.resolve("0" * 12 if not sid.startswith("0" * 12) else "1" * 12)


def test_only_accepted_samples_reach_a_snapshot(feedback: FeedbackStore) -> None:
    kept, rejected, pending, vit_copy = sample(0), sample(1), sample(2), sample(0, model="vit")
    for s in (kept, rejected, pending, vit_copy):
        feedback.write(s)
    feedback.review(kept.id, "accept", "alice")
    feedback.review(vit_copy.id, "accept", "alice")
    feedback.review(rejected.id, "accept", "alice")
    feedback.review(rejected.id, "reject", "bob", "wrong label")
    snapshot = FeedbackSnapshot.read(feedback)
    # the same image and label corrected for two models is one training example
    assert [content_hash(s.pixels, s.label) for s in snapshot.samples] == [content_hash(kept.pixels, kept.label)]
    assert snapshot.summary()["samples"] == 1
    assert rejected.id not in json.dumps(snapshot.ids()) and pending.id not in json.dumps(snapshot.ids())
    feedback.review(pending.id, "accept", "alice")
    assert FeedbackSnapshot.read(feedback).digest != snapshot.digest


def test_the_split_is_by_content_and_holds_out_about_one_in_five() -> None:
    labels = [int(v) for v in np.random.default_rng(0).integers(0, 10, 2000)]
    splits = [split_of(digit(i)) for i in range(2000)]
    assert 0.15 < splits.count("holdout") / 2000 < 0.25
    assert split_of(digit(3)) == split_of(digit(3).copy())  # the image decides, nothing else
    assert sample(3, label=5).split == sample(3, label=None).split == sample(3, model="vit").split
    assert content_hash(digit(3), 5) != content_hash(digit(3), None)
    samples = [sample(i, labels[i]) for i in range(40)] + [sample(40, None)]
    snapshot = FeedbackSnapshot.of(samples)
    images, y = snapshot.part("train")
    held, held_y = snapshot.part("holdout")
    assert images.shape[1:] == (28, 28) and images.dtype == np.uint8
    assert len(y) + len(held_y) == 41 and set(np.concatenate([y, held_y]).tolist()) <= set(range(-1, 10))
    assert len(held) == sum(s.split == "holdout" for s in samples)


def test_review_keys_that_are_not_decisions_are_ignored() -> None:
    sid = "a" * 64
    keys = [
        f"feedback/reviews/{sid}/20261201T000000.000Z-accept-0000aaaa.json",
        f"feedback/reviews/{sid}/20261201T000001.000Z-reject-0000bbbb.json",
        f"feedback/reviews/{sid}/20261201T000002.000Z-delete-0000cccc.json",
        "feedback/reviews/not-an-id/20261201T000003.000Z-accept-0000dddd.json",
        f"feedback/reviews/{sid}/extra/20261201T000004.000Z-accept-0000eeee.json",
    ]
    assert states_from_keys(keys) == {sid: "rejected"}


def test_feedback_is_not_a_model(feedback: FeedbackStore) -> None:
    feedback.write(sample())
    registry = ModelRegistry(feedback.store)
    assert "feedback" not in registry.list_models()
    with pytest.raises(RegistryError, match="a folder of the registry itself"):
        registry.publish(
            "feedback",
            architecture="cnn",
            config={},
            weights=b"",
            onnx=b"",
            onnx_opset=18,
            golden=None,  # type: ignore[arg-type]
            metadata={},
        )


def test_a_damaged_sample_is_left_out_and_can_still_be_rejected(feedback: FeedbackStore) -> None:
    feedback.write(sample(1))
    bad = "b" * 64
    feedback.store.create(sample_key(bad), b"{damaged")
    feedback.review(sample(1).id, "accept", "alice")
    feedback.review(bad, "accept", "mallory")
    good, damaged = feedback.readable(feedback.ids())
    assert [s.id for s in good] == [sample(1).id] and damaged == [bad]
    assert [s.id for s in feedback.accepted()] == [sample(1).id]  # a damaged sample never trains
    feedback.review(bad, "reject", "alice", "damaged")
    assert feedback.state(bad) == "rejected"
