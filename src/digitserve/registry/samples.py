"""What a version answered for each MNIST test image, kept in its report as `test_samples.json`.

The models pages read it to make the confusion matrix clickable (the digits in each cell, with
the version's confidence for each) and to compare two versions digit by digit, without the
MNIST test set on the server. It holds, for all 10,000 test images, the true label, the predicted
digit, the calibrated confidence (to 1/255) and whether the version took it for a digit; and the
pixels of every error (up to `MAX_ERRORS`) and of the `RIGHT_PER_CLASS` least confident right
answers of each digit. What one version gets right and another wrong is among the other's errors,
so two reports are enough to show those digits.

Written by training (src/digitserve/training/assess.py), or afterwards for a published version by
training/report_samples.py. Versions without it show their PNG report only.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from digitserve.registry.records import ManifestError

NAME = "test_samples.json"
MAX_ERRORS = 1000
RIGHT_PER_CLASS = 20


def _digits(values: np.ndarray) -> str:
    return "".join(map(str, np.asarray(values, np.int64).tolist()))


def make_test_samples(images: np.ndarray, labels: np.ndarray, probabilities: np.ndarray, is_digit: np.ndarray) -> bytes:
    """The report file for calibrated `probabilities` (n, 10) of the test `images` (n, 28, 28)."""
    predicted, confidence = probabilities.argmax(axis=1), probabilities.max(axis=1)
    wrong = np.flatnonzero(predicted != labels)
    keep = set(wrong[:MAX_ERRORS].tolist())
    for digit in range(10):
        right = np.flatnonzero((predicted == labels) & (labels == digit))
        keep.update(right[np.argsort(confidence[right], kind="stable")][:RIGHT_PER_CLASS].tolist())
    doc = {
        "format": 1,
        "num_examples": len(labels),
        "labels": _digits(labels),
        "predicted": _digits(predicted),
        "is_digit": "".join("1" if d else "0" for d in np.asarray(is_digit, bool).tolist()),
        "confidence_uint8_b64": base64.b64encode(np.rint(confidence * 255).astype(np.uint8).tobytes()).decode(),
        "errors": len(wrong),
        "pixels": {
            str(i): base64.b64encode(np.ascontiguousarray(images[i], np.uint8).tobytes()).decode() for i in sorted(keep)
        },
    }
    return json.dumps(doc, separators=(",", ":")).encode()


@dataclass(frozen=True)
class TestSamples:
    labels: np.ndarray  # (n,) int
    predicted: np.ndarray  # (n,) int, the most likely digit
    is_digit: np.ndarray  # (n,) bool
    confidence: np.ndarray  # (n,) float, to 1/255
    pixels: dict[int, bytes]  # test index -> 784 uint8

    __test__ = False  # not a pytest test class, whatever its name

    @classmethod
    def parse(cls, data: bytes, what: str) -> TestSamples:
        try:
            doc = json.loads(data)
            n = int(doc["num_examples"])
            labels = np.frombuffer(doc["labels"].encode(), np.uint8) - ord("0")
            predicted = np.frombuffer(doc["predicted"].encode(), np.uint8) - ord("0")
            is_digit = np.frombuffer(doc["is_digit"].encode(), np.uint8) == ord("1")
            confidence = np.frombuffer(base64.b64decode(doc["confidence_uint8_b64"]), np.uint8) / 255.0
            pixels = {int(k): base64.b64decode(v) for k, v in doc["pixels"].items()}
        except (ValueError, KeyError, TypeError, AttributeError, OverflowError, RecursionError) as exc:
            raise ManifestError(f"{what} is damaged ({type(exc).__name__})") from None
        sizes = {len(labels), len(predicted), len(is_digit), len(confidence)}
        if sizes != {n} or labels.max(initial=0) > 9 or predicted.max(initial=0) > 9:
            raise ManifestError(f"{what} is damaged (its arrays disagree)")
        if any(len(p) != 784 or not 0 <= i < n for i, p in pixels.items()):
            raise ManifestError(f"{what} is damaged (an image is not 28x28)")
        return cls(labels.astype(np.int64), predicted.astype(np.int64), is_digit, confidence, pixels)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def right(self) -> np.ndarray:
        return self.predicted == self.labels

    def cell(self, true: int, predicted: int) -> np.ndarray:
        """The test indices in one confusion-matrix cell, least confident first."""
        found = np.flatnonzero((self.labels == true) & (self.predicted == predicted))
        return found[np.argsort(self.confidence[found], kind="stable")]

    def image(self, index: int) -> np.ndarray | None:
        data = self.pixels.get(int(index))
        return None if data is None else np.frombuffer(data, np.uint8).reshape(28, 28)

    def per_digit_accuracy(self) -> dict[str, Any]:
        return {str(d): round(float(self.right[self.labels == d].mean()), 6) for d in range(10)}
