"""The server's answers as typed results, read from its /v1 JSON (serving/api/schemas.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

NOT_A_DIGIT: Literal["not_a_digit"] = "not_a_digit"
"""What a correction says when its input is not a digit at all (`Client.feedback`'s `label`)."""
Label = int | Literal["not_a_digit"]
"""A digit 0-9, or `NOT_A_DIGIT`."""


@dataclass(frozen=True)
class ClassScore:
    label: int
    probability: float


@dataclass(frozen=True)
class Prediction:
    """One image's answer.

    `label` is the digit, or None when the input does not look like a digit (`is_digit` False,
    `reason` says why); `best_guess` is the most likely digit either way, and `confidence` its
    calibrated probability: of answers given with 90% confidence, about 90% are right.
    """

    label: int | None
    is_digit: bool
    confidence: float
    best_guess: int
    reason: str | None
    top_k: tuple[ClassScore, ...]
    probabilities: tuple[float, ...]
    """The probability of each digit 0-9."""

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Prediction:
        return cls(
            label=doc["label"],
            is_digit=doc["is_digit"],
            confidence=doc["confidence"],
            best_guess=doc["best_guess"],
            reason=doc.get("reason"),
            top_k=tuple(ClassScore(s["label"], s["probability"]) for s in doc["top_k"]),
            probabilities=tuple(doc["probabilities"]),
        )


@dataclass(frozen=True)
class PredictResult:
    """A prediction request's answer: the model, the registry version that computed it, the
    alias that chose that version (None for a pinned `version=`), and one `Prediction` per image,
    in the order they were sent."""

    model: str
    version: int
    alias: str | None
    predictions: tuple[Prediction, ...]

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> PredictResult:
        predictions = tuple(Prediction.from_json(p) for p in doc["predictions"])
        return cls(model=doc["model"], version=doc["version"], alias=doc.get("alias"), predictions=predictions)


@dataclass(frozen=True)
class ModelInfo:
    """What the server says of one model (`GET /v1/models/{model}`): whether it is ready, the
    version its alias serves, every alias and version in the registry; `raw` holds the whole
    answer (metrics, reload errors, rollouts, feedback)."""

    name: str
    alias: str
    ready: bool
    version: int | None
    """The version serving now (None until one is loaded)."""
    aliases: dict[str, int]
    versions: tuple[int, ...]
    """Every version in the registry, served or not."""
    last_reload_error: dict[str, Any] | None
    raw: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> ModelInfo:
        serving = doc.get("serving")
        return cls(
            name=doc["name"],
            alias=doc["alias"],
            ready=doc["ready"],
            version=serving["version"] if serving else None,
            aliases=dict(doc.get("aliases", {})),
            versions=tuple(v["version"] for v in doc.get("versions", [])),
            last_reload_error=doc.get("last_reload_error"),
            raw=doc,
        )


@dataclass(frozen=True)
class FeedbackReceipt:
    """A correction the server took: its sample id (the same image and label always get the same
    id; `duplicate` says the server had it already). It waits for a reviewer before any training
    uses it (`review` is "pending")."""

    id: str
    duplicate: bool
    status: str
    review: str

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> FeedbackReceipt:
        return cls(id=doc["id"], duplicate=doc["duplicate"], status=doc["status"], review=doc["review"])
