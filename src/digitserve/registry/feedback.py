"""People's corrections of predictions, kept in the registry as a reviewed, append-only dataset.

Layout under the registry root, beside the models:
    feedback/samples/<id>.json                          one sample, created once, never rewritten
    feedback/reviews/<id>/<time>-<decision>-<rand>.json  every accept / reject decision, never rewritten

A sample is the 28x28 model input (never the uploaded photo), the label a person says is right
(a digit, or "not a digit"), and what it corrects: model, version, the answer given. Its id is
the sha256 of model, pixels and label, so the same image and label sent twice for a model is
one sample; it is written with a create-only write, so two replicas writing it at once agree.

Feedback is untrusted input: anyone can send a wrong label. A sample is used only once a
reviewer accepted it, and its state is the latest decision (the key names carry the decision,
so one listing gives every state). Training splits accepted samples into train and holdout by
a hash of the image, so a sample lands in the same split whichever label or model it came with
and however often the dataset grows.
"""

from __future__ import annotations

import base64
import hashlib
import re
import uuid
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from digitserve.registry.records import check_model_name, check_version, dumps, loads_object, now_iso
from digitserve.storage import AlreadyExistsError, NotFoundError, RegistryError, Store

PREFIX = "feedback"
SAMPLES = f"{PREFIX}/samples/"
REVIEWS = f"{PREFIX}/reviews/"
NOT_A_DIGIT = "not_a_digit"  # the label of something that is not a digit
HOLDOUT_BUCKETS = 5  # one sample in five (by content hash) is held out of training
SAMPLE_ID = re.compile(r"^[0-9a-f]{64}$")
DECISIONS = ("accept", "reject")
STATES = {"accept": "accepted", "reject": "rejected"}
State = Literal["pending", "accepted", "rejected"]
Label = int | None  # a digit 0-9; None: "not a digit"


class FeedbackError(RegistryError):
    """A feedback sample or decision that cannot be read or made; the message says why."""


def label_token(label: Label) -> str:
    return NOT_A_DIGIT if label is None else str(label)


def parse_label(value: object, what: str) -> Label:
    """A label as stored or sent: a digit 0-9, or "not_a_digit" (None)."""
    if value == NOT_A_DIGIT:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 9:
        raise FeedbackError(f"{what} must be a digit 0-9 or {NOT_A_DIGIT!r}, got {str(value)[:20]!r}")
    return value


def content_hash(pixels: np.ndarray, label: Label) -> str:
    """sha256 of what a person said a 28x28 input is, whichever model they corrected."""
    image = np.ascontiguousarray(pixels, np.uint8)
    return hashlib.sha256(image.tobytes() + b"\0" + label_token(label).encode()).hexdigest()


def sample_id(model: str, pixels: np.ndarray, label: Label) -> str:
    return hashlib.sha256(f"{model}\0".encode() + content_hash(pixels, label).encode()).hexdigest()


def split_of(pixels: np.ndarray) -> Literal["train", "holdout"]:
    """Deterministic train / holdout split by the image alone: the same image is always in the
    same split, whichever label or model it came with (so one image sent with two labels can
    never be trained on and held out at once)."""
    digest = hashlib.sha256(np.ascontiguousarray(pixels, np.uint8).tobytes()).hexdigest()
    return "holdout" if int(digest[:8], 16) % HOLDOUT_BUCKETS == 0 else "train"


@dataclass(frozen=True)
class FeedbackSample:
    """One correction: the model input, the right label, and the answer it corrects."""

    model: str
    version: int
    predicted: Label  # what the model answered (None: "not a digit")
    label: Label  # what the person says is right
    pixels: np.ndarray  # (28, 28) uint8, the model input
    received_at: str
    alias: str | None = None
    client: str | None = None  # a pseudonym of the sender (a hash), to spot a flood of wrong labels

    @property
    def id(self) -> str:
        return sample_id(self.model, self.pixels, self.label)

    @property
    def right(self) -> bool:
        """Whether the answer the person saw was right."""
        return self.predicted == self.label

    @property
    def split(self) -> Literal["train", "holdout"]:
        return split_of(self.pixels)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "model": self.model,
            "version": self.version,
            "alias": self.alias,
            "predicted": label_token(self.predicted) if self.predicted is None else self.predicted,
            "label": label_token(self.label) if self.label is None else self.label,
            "pixels_uint8_b64": base64.b64encode(np.ascontiguousarray(self.pixels, np.uint8).tobytes()).decode(),
            "shape": [28, 28],
            "received_at": self.received_at,
            "client": self.client,
        }

    def to_bytes(self) -> bytes:
        return dumps(self.to_dict())

    @classmethod
    def parse(cls, data: bytes, what: str = "feedback sample") -> FeedbackSample:
        try:
            doc = loads_object(data, what)
            pixels = np.frombuffer(base64.b64decode(str(doc["pixels_uint8_b64"]), validate=True), np.uint8)
            sample = cls(
                model=check_model_name(doc["model"]),
                version=check_version(doc["version"], f"{what}: 'version'"),
                predicted=parse_label(doc["predicted"], f"{what}: 'predicted'"),
                label=parse_label(doc["label"], f"{what}: 'label'"),
                pixels=pixels.reshape(28, 28).copy(),
                received_at=str(doc.get("received_at", ""))[:64],
                alias=str(doc["alias"])[:64] if doc.get("alias") else None,
                client=str(doc["client"])[:64] if doc.get("client") else None,
            )
        except (KeyError, ValueError, TypeError, RegistryError) as exc:
            raise FeedbackError(f"{what} is damaged ({type(exc).__name__}: {str(exc)[:80]})") from None
        if doc.get("id") != sample.id:
            raise FeedbackError(f"{what}: its id does not match its content")
        return sample


@dataclass(frozen=True)
class Review:
    sample: str
    decision: str  # "accept" or "reject"
    actor: str
    at: str
    reason: str

    @property
    def state(self) -> State:
        return "accepted" if self.decision == "accept" else "rejected"


def sample_key(sample_id: str) -> str:
    return f"{SAMPLES}{sample_id}.json"


def states_from_keys(keys: list[str]) -> dict[str, State]:
    """Each reviewed sample's state, from the review keys alone (the latest decision wins)."""
    latest: dict[str, tuple[str, State]] = {}
    for key in keys:
        parts = key.removeprefix(REVIEWS).split("/")
        if len(parts) != 2 or not SAMPLE_ID.match(parts[0]):
            continue
        fields = parts[1].removesuffix(".json").split("-")
        if len(fields) != 3 or fields[1] not in DECISIONS:
            continue
        stamp, decision = fields[0], fields[1]
        if parts[0] not in latest or stamp >= latest[parts[0]][0]:
            latest[parts[0]] = (stamp, STATES[decision])  # type: ignore[assignment]
    return {sid: state for sid, (_, state) in latest.items()}


class FeedbackStore:
    """The feedback dataset in one registry store."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def write(self, sample: FeedbackSample) -> bool:
        """Create the sample; False if it was already there (the same image and label)."""
        return self.write_bytes(sample.id, sample.to_bytes())

    def write_bytes(self, sid: str, data: bytes) -> bool:
        try:
            self.store.create(sample_key(sid), data)
        except AlreadyExistsError:
            return False
        return True

    def ids(self) -> list[str]:
        keys = self.store.list(SAMPLES)
        names = (k.removeprefix(SAMPLES).removesuffix(".json") for k in keys if k.endswith(".json"))
        return [n for n in names if SAMPLE_ID.match(n)]

    def ids_newest_first(self) -> list[str]:
        """Every sample id, the most recently stored first -- from the listing alone, no sample read."""
        times = self.store.list_times(SAMPLES)
        named = [(at, k.removeprefix(SAMPLES).removesuffix(".json")) for k, at in times.items() if k.endswith(".json")]
        return [sid for _, sid in sorted(named, reverse=True) if SAMPLE_ID.match(sid)]

    def sample(self, sid: str) -> FeedbackSample:
        try:
            data, _ = self.store.read(sample_key(sid))
        except NotFoundError:
            raise NotFoundError(f"no feedback sample {sid[:16]} in {self.store.uri}") from None
        return FeedbackSample.parse(data, f"feedback sample {sid[:12]}")

    def resolve(self, prefix: str) -> str:
        """The full id of the one sample whose id starts with `prefix` (at least 8 hex digits)."""
        prefix = prefix.strip().lower()
        if not re.fullmatch(r"[0-9a-f]{8,64}", prefix):
            raise FeedbackError(f"{prefix[:70]!r} is not a sample id: give at least its first 8 hex digits")
        found = [sid for sid in self.ids() if sid.startswith(prefix)]
        if not found:
            raise NotFoundError(f"no feedback sample {prefix} in {self.store.uri}")
        if len(found) > 1:
            raise FeedbackError(f"{prefix} is the start of {len(found)} sample ids; give more of it")
        return found[0]

    def states(self) -> dict[str, State]:
        """The state of every sample that has one other than pending."""
        return states_from_keys(self.store.list(REVIEWS))

    def state(self, sid: str) -> State:
        return self.states().get(sid, "pending")

    def reviews(self, sid: str) -> list[Review]:
        """Every decision on one sample, oldest first."""
        found = []
        for key in self.store.list(f"{REVIEWS}{sid}/"):
            doc = loads_object(self.store.read(key)[0], f"review {key}")
            found.append(
                Review(
                    sid, str(doc.get("decision")), str(doc.get("actor")), str(doc.get("at")), str(doc.get("reason", ""))
                )
            )
        return found

    def review(self, sid: str, decision: str, actor: str, reason: str = "") -> Review:
        """Record a decision (an event: who, when, why); the sample's state becomes its outcome.
        A damaged sample can still be rejected (it is never used either way)."""
        if decision not in DECISIONS:
            raise FeedbackError(f"a decision is one of {', '.join(DECISIONS)}, not {decision!r}")
        if not SAMPLE_ID.match(sid) or not self.store.exists(sample_key(sid)):
            raise NotFoundError(f"no feedback sample {sid[:16]} in {self.store.uri}")
        at = now_iso()
        stamp = at.replace(":", "").replace("-", "")
        review = Review(sid, decision, actor, at, reason)
        doc = {"sample": sid, "decision": decision, "actor": actor, "at": at, "reason": reason}
        self.store.create(f"{REVIEWS}{sid}/{stamp}-{decision}-{uuid.uuid4().hex[:8]}.json", dumps(doc))
        return review

    def readable(self, ids: list[str]) -> tuple[list[FeedbackSample], list[str]]:
        """The samples of `ids` that can be read, and the ids of those that are damaged."""
        good, damaged = [], []
        for sid in ids:
            try:
                good.append(self.sample(sid))
            except FeedbackError:
                damaged.append(sid)
        return good, damaged

    def accepted(self) -> list[FeedbackSample]:
        """Every readable accepted sample, oldest first; nothing pending or rejected ever leaves here."""
        chosen = sorted(sid for sid, state in self.states().items() if state == "accepted")
        samples, _ = self.readable(chosen)
        return sorted(samples, key=lambda s: (s.received_at, s.id))
