"""What the models answer, as metrics: per model and version, the answers by label ("0".."9",
"not_a_digit"), the calibrated confidence, the ink of the inputs the model saw (a sample of at
most `INK_SAMPLE` inputs per version, worker and second), and a drift gauge.

The drift gauge (`digitserve_drift{model,version,signal}`) compares each worker's last
`DIGITSERVE_DRIFT_WINDOW` answers of a version with what that version answered on its validation
data (`runtime/reference.py`, from the manifest): the Jensen-Shannon divergence of the answers'
labels (`signal="answers"`) and of their confidence buckets (`signal="confidence"`), 0 when they
match, 1 when they share nothing. It is set once a window holds `MIN_ANSWERS`, at each flush (once
a second), and with several workers shows the highest worker's (each sees a random share of the
traffic). A version without a reference has no drift gauge. Every label set is bounded: models
and versions the server loaded, and the fixed answer names.
"""

from __future__ import annotations

import threading
from typing import NamedTuple

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from digitserve.runtime.reference import (
    ANSWERS,
    CONFIDENCE_BUCKETS,
    AnswerReference,
    answer_indices,
    confidence_bins,
    js_divergence,
    shares,
)

INK_BUCKETS = (0.02, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.6, 1.0)
ASPECT_BUCKETS = (0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 4.0, 28.0)
INK_LEVEL = 128  # a pixel of the 28x28 model input at least this bright is ink
MIN_ANSWERS = 100  # a window's answers before its drift is shown: fewer say more about chance
FLUSH_IMAGES = 4096  # answers noted before they are counted at once, whatever the time
INK_SAMPLE = 256  # inputs per version and flush whose ink is measured (a sample: a third of the cost)


def observe_many(histogram: Histogram, values: np.ndarray) -> None:
    """Observe every value, as `observe` does one by one, with one write per bucket touched
    (a 64-image request would otherwise write 64 times per histogram)."""
    bounds = histogram._upper_bounds  # the buckets' `le`, +Inf last
    counts = np.bincount(np.searchsorted(bounds, values, side="left"), minlength=len(bounds))
    histogram._sum.inc(float(values.sum()))
    for i in np.flatnonzero(counts):
        histogram._buckets[i].inc(int(counts[i]))


def ink_statistics(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(ink fraction (n,), aspect (m,)) of (n, 28, 28) uint8 model inputs: the share of inked
    pixels, and the inked bounding box's width over height (for the m images with any ink)."""
    ink: np.ndarray = np.asarray(images) >= INK_LEVEL
    fraction = ink.mean(axis=(1, 2))
    rows, cols = np.any(ink, axis=2), np.any(ink, axis=1)  # (n, 28) each
    inked = rows.any(axis=1)
    rows, cols = rows[inked], cols[inked]
    size = rows.shape[1]
    height = size - rows[:, ::-1].argmax(axis=1) - rows.argmax(axis=1)
    width = size - cols[:, ::-1].argmax(axis=1) - cols.argmax(axis=1)
    return fraction, width / height


class DriftWindow:
    """One version's last answers in one worker, and their distance from its reference."""

    def __init__(self, reference: AnswerReference, size: int) -> None:
        self.reference = reference
        self.answers = np.zeros(size, np.int8)
        self.buckets = np.zeros(size, np.int8)
        self.filled = 0
        self.next = 0

    def add(self, answers: np.ndarray, buckets: np.ndarray) -> None:
        size = len(self.answers)
        answers, buckets = answers[-size:], buckets[-size:]
        at = (self.next + np.arange(len(answers))) % size
        self.answers[at], self.buckets[at] = answers, buckets
        self.next = (self.next + len(answers)) % size
        self.filled = min(size, self.filled + len(answers))

    def divergence(self) -> tuple[float, float]:
        """(answers, confidence) divergence of the window from the reference."""
        answers, buckets = self.answers[: self.filled], self.buckets[: self.filled]
        live_answers = shares(np.bincount(answers, minlength=len(ANSWERS)))
        live_buckets = shares(np.bincount(buckets, minlength=len(CONFIDENCE_BUCKETS)))
        return (
            js_divergence(live_answers, self.reference.answers),
            js_divergence(live_buckets, self.reference.confidence),
        )


class _Answered(NamedTuple):
    model: str
    version: int
    reference: AnswerReference | None
    probabilities: np.ndarray
    is_digit: np.ndarray
    images: np.ndarray


class AnswerMetrics:
    """Counting happens in `flush`, once a second (the event-loop probe calls it, and so does every
    render of /metrics), over all the answers noted since: per request that costs an append, where
    counting each request's one image cost 0.1 ms (bench/observability_results.json)."""

    def __init__(self, registry: CollectorRegistry, window: int = 1000) -> None:
        self.window = window
        self._windows: dict[tuple[str, int], DriftWindow | None] = {}
        self._pending: list[_Answered] = []
        self._pending_images = 0
        self._lock = threading.Lock()  # the pending list
        self._flushing = threading.Lock()  # the counting and the drift windows
        self.answers = Counter(
            "digitserve_answers",
            "answers given, by version and answer (a digit, or not_a_digit)",
            ["model", "version", "answer"],
            registry=registry,
        )
        self.confidence = Histogram(
            "digitserve_answer_confidence",
            "calibrated confidence of each answer (its top probability)",
            ["model", "version"],
            buckets=CONFIDENCE_BUCKETS,
            registry=registry,
        )
        self.ink = Histogram(
            "digitserve_input_ink_fraction",
            "share of inked pixels in each 28x28 model input",
            ["model", "version"],
            buckets=INK_BUCKETS,
            registry=registry,
        )
        self.aspect = Histogram(
            "digitserve_input_aspect",
            "width over height of the ink in each model input (inputs with ink)",
            ["model", "version"],
            buckets=ASPECT_BUCKETS,
            registry=registry,
        )
        self.drift = Gauge(
            "digitserve_drift",
            "Jensen-Shannon divergence (0..1) of a version's recent answers from its validation answers, "
            "by signal (answers, confidence); the highest worker's",
            ["model", "version", "signal"],
            registry=registry,
            multiprocess_mode="livemax",
        )

    def observe(
        self, model: str, version: int, reference: AnswerReference | None, probabilities: np.ndarray,
        is_digit: np.ndarray, images: np.ndarray,
    ) -> None:  # fmt: skip
        """Note one request's answers (n of them) and the inputs the model saw; they are counted at
        the next `flush` (each second, before each scrape), many requests in one pass."""
        with self._lock:
            self._pending.append(_Answered(model, version, reference, probabilities, is_digit, images))
            self._pending_images += len(images)
            full = self._pending_images >= FLUSH_IMAGES
        if full:
            self.flush()

    def flush(self) -> None:
        """Count what was noted since the last flush, per version, and show its drift. Called from
        the event loop and from the live view's thread: one flush at a time counts each answer once."""
        with self._flushing:
            with self._lock:
                pending, self._pending, self._pending_images = self._pending, [], 0
            self._count_all(pending)

    def _count_all(self, pending: list[_Answered]) -> None:
        by_version: dict[tuple[str, int], list[_Answered]] = {}
        for answered in pending:
            by_version.setdefault((answered.model, answered.version), []).append(answered)
        for (model, version), group in by_version.items():
            probabilities = np.concatenate([a.probabilities for a in group])
            is_digit = np.concatenate([a.is_digit for a in group])
            sample = group[:: max(1, len(group) // INK_SAMPLE)]  # requests spread over the second
            images = np.concatenate([a.images for a in sample])[:INK_SAMPLE]
            self._count(model, version, group[-1].reference, probabilities, is_digit, images)

    def _count(
        self, model: str, version: int, reference: AnswerReference | None, probabilities: np.ndarray,
        is_digit: np.ndarray, images: np.ndarray,
    ) -> None:  # fmt: skip
        labels = (model, str(version))
        answers = answer_indices(probabilities, is_digit)
        counts = np.bincount(answers, minlength=len(ANSWERS))
        for i in np.flatnonzero(counts):
            self.answers.labels(*labels, ANSWERS[i]).inc(int(counts[i]))
        confidence = np.nan_to_num(probabilities.max(axis=1), nan=0.0).clip(0.0, 1.0)
        observe_many(self.confidence.labels(*labels), confidence)
        fraction, aspect = ink_statistics(images)
        observe_many(self.ink.labels(*labels), fraction)
        if len(aspect):
            observe_many(self.aspect.labels(*labels), aspect)
        self._drift(model, version, reference, answers, confidence_bins(confidence))

    def _drift(
        self, model: str, version: int, reference: AnswerReference | None, answers: np.ndarray, buckets: np.ndarray
    ) -> None:
        key = (model, version)
        if key not in self._windows:
            self._windows[key] = DriftWindow(reference, self.window) if reference is not None else None
        window = self._windows[key]
        if window is None:
            return
        window.add(answers, buckets)
        if window.filled >= MIN_ANSWERS:
            for signal, value in zip(("answers", "confidence"), window.divergence(), strict=True):
                self.drift.labels(model, str(version), signal).set(value)
