"""Error analysis from two reports' test samples: the digits in a confusion-matrix cell, and what
one version gets right that another gets wrong (registry/samples.py)."""

from __future__ import annotations

from typing import Any

import numpy as np

from digitserve.imaging.encode import png_data_url
from digitserve.registry.samples import TestSamples
from digitserve.serving.browsing.browser import page


def _digit(samples: TestSamples, index: int) -> dict[str, Any]:
    image = samples.image(index)
    return {
        "index": int(index),
        "label": int(samples.labels[index]),
        "predicted": int(samples.predicted[index]),
        "is_digit": bool(samples.is_digit[index]),
        "confidence": round(float(samples.confidence[index]), 3),
        "image": png_data_url(image) if image is not None else None,
    }


def cell(samples: TestSamples, true: int, predicted: int, offset: int, limit: int) -> dict[str, Any]:
    """The test digits the version put in one cell, least confident first; those whose pixels the
    report does not keep (right answers beyond the least confident few) come without an image."""
    found = samples.cell(true, predicted).tolist()
    return {
        "true": true,
        "predicted": predicted,
        **page(found, offset, limit, lambda i: _digit(samples, i)),
        "with_images": sum(i in samples.pixels for i in found),
    }


def compare(a: TestSamples, b: TestSamples, limit: int) -> dict[str, Any]:
    """Digit by digit: per-digit accuracy of both, the four ways they can fall, and (as images) the
    digits one gets right and the other wrong -- each such digit is among the other's errors, whose
    pixels its report keeps."""
    if len(a) != len(b) or not np.array_equal(a.labels, b.labels):
        raise ValueError("the two versions were measured on different test sets")
    a_right, b_right = a.right, b.right
    only_a, only_b = np.flatnonzero(a_right & ~b_right), np.flatnonzero(b_right & ~a_right)

    def gallery(indices: np.ndarray, right: TestSamples, wrong: TestSamples) -> list[dict[str, Any]]:
        shown = []
        for i in indices.tolist():
            image = wrong.image(i)
            if image is None:
                image = right.image(i)
            if image is None:
                continue
            entry = _digit(wrong, i)
            entry.update(image=png_data_url(image), right_confidence=round(float(right.confidence[i]), 3))
            shown.append(entry)
            if len(shown) == limit:
                break
        return shown

    return {
        "per_digit_accuracy": {"a": a.per_digit_accuracy(), "b": b.per_digit_accuracy()},
        "both_right": int((a_right & b_right).sum()),
        "both_wrong": int((~a_right & ~b_right).sum()),
        "only_a_right": len(only_a),
        "only_b_right": len(only_b),
        "a_right_b_wrong": gallery(only_a, a, b),
        "b_right_a_wrong": gallery(only_b, b, a),
    }
