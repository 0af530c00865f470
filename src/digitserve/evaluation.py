"""Measuring a version on MNIST: the one evaluation used by training, `evaluate.py` and the gate.

What is measured is what serves: a version's ONNX artifact under ONNX Runtime, with its
calibration applied. Training measures its torch model with the same metrics.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from digitserve.data import load_mnist
from digitserve.registry import Manifest, ModelRegistry
from digitserve.runtime import OnnxModel, RuntimeOptions
from digitserve.runtime.calibration import Calibration, softmax


def classification_metrics(labels: np.ndarray, preds: np.ndarray, num_classes: int = 10) -> dict[str, Any]:
    """Accuracy, confusion matrix (rows: true, columns: predicted), per-class precision/recall."""
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(confusion, (labels, preds), 1)
    correct = np.diag(confusion)
    predicted = confusion.sum(axis=0)
    actual = confusion.sum(axis=1)
    precision = np.divide(correct, predicted, out=np.zeros(num_classes), where=predicted > 0)
    recall = np.divide(correct, actual, out=np.zeros(num_classes), where=actual > 0)
    return {
        "accuracy": float(correct.sum() / max(len(labels), 1)),
        "errors": int(len(labels) - correct.sum()),
        "num_examples": len(labels),
        "per_class": {
            str(c): {
                "precision": round(float(precision[c]), 6),
                "recall": round(float(recall[c]), 6),
                "support": int(actual[c]),
            }
            for c in range(num_classes)
        },
        "confusion_matrix": confusion.tolist(),
    }


def runtime_logits(runtime: OnnxModel, images: np.ndarray, batch_size: int = 1000) -> np.ndarray:
    """Logits (N, 10) of uint8 (N, 28, 28) digits under ONNX Runtime."""
    chunks = [runtime.logits(images[i : i + batch_size]) for i in range(0, len(images), batch_size)]
    return np.concatenate(chunks) if chunks else np.empty((0, 10), np.float32)


def metrics_from_logits(logits: np.ndarray, labels: np.ndarray, seconds: float) -> dict[str, Any]:
    metrics = classification_metrics(labels, np.asarray(logits).argmax(axis=1))
    metrics["eval_seconds"] = round(seconds, 3)
    metrics["images_per_second"] = round(len(labels) / seconds, 1) if seconds > 0 else None
    return metrics


def load_runtime(registry: ModelRegistry, model: str, version: int) -> tuple[Manifest, OnnxModel]:
    """The version's verified ONNX artifact in an ONNX Runtime session (CPU)."""
    manifest, graph = registry.read_artifact(model, version, "onnx")
    return manifest, OnnxModel(graph, RuntimeOptions())


def evaluate_artifact(runtime: OnnxModel, limit: int | None = None) -> tuple[dict[str, Any], np.ndarray]:
    """Metrics of an ONNX artifact on the official 10k test set (or its first `limit` images),
    and its logits, so a caller can compare them with another model's."""
    test = load_mnist("test")
    images, labels = test.images[:limit], test.labels[:limit]
    start = time.perf_counter()
    logits = runtime_logits(runtime, images)
    metrics = metrics_from_logits(logits, labels, time.perf_counter() - start)
    metrics["data_sha256"] = test.checksum
    metrics["artifact"] = "onnx"
    return metrics, logits


# --- calibration and "not a digit" ------------------------------------------------------------

ECE_BINS = 15
MAX_VALIDATION_DIGIT_REJECTION = 0.001  # clean validation digits a threshold may turn away
MAX_VALIDATION_VARIANT_REJECTION = 0.005  # validation digits re-rendered as in the robustness set


def negative_log_likelihood(probabilities: np.ndarray, labels: np.ndarray) -> float:
    p = np.asarray(probabilities, np.float64)[np.arange(len(labels)), labels]
    return float(-np.log(np.clip(p, 1e-12, 1)).mean()) if len(labels) else 0.0


def reliability(probabilities: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> list[dict[str, float]]:
    """Equal-width confidence bins: each bin's count, mean confidence and accuracy."""
    confidence = np.asarray(probabilities).max(axis=1)
    correct = np.asarray(probabilities).argmax(axis=1) == labels
    which = np.minimum((confidence * bins).astype(np.int64), bins - 1)
    out = []
    for b in range(bins):
        inside = which == b
        n = int(inside.sum())
        out.append(
            {
                "low": b / bins,
                "high": (b + 1) / bins,
                "count": n,
                "confidence": float(confidence[inside].mean()) if n else 0.0,
                "accuracy": float(correct[inside].mean()) if n else 0.0,
            }
        )
    return out


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE: the count-weighted mean |accuracy - confidence| over equal-width confidence bins."""
    table = reliability(probabilities, labels, bins)
    total = sum(b["count"] for b in table)
    return float(sum(b["count"] * abs(b["accuracy"] - b["confidence"]) for b in table) / max(total, 1))


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature T minimising the NLL of softmax(logits / T) (golden-section search on log T)."""

    def nll(log_t: float) -> float:
        return negative_log_likelihood(softmax(logits, float(np.exp(log_t))), labels)

    lo, hi = np.log(0.05), np.log(20.0)
    ratio = (np.sqrt(5) - 1) / 2
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = nll(a), nll(b)
    for _ in range(60):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = nll(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = nll(b)
    return round(float(np.exp((lo + hi) / 2)), 4)


def choose_threshold(digit_confidence: np.ndarray, variant_confidence: np.ndarray) -> float:
    """The highest confidence threshold that turns away at most 0.1% of clean validation digits
    and 0.5% of validation digits re-rendered as other people and devices give them.

    Everything above the threshold is answered as a digit, so the highest allowed threshold is
    the one that turns away the most non-digits. Chosen without looking at any negative."""
    limits = [
        np.quantile(np.asarray(digit_confidence, np.float64), MAX_VALIDATION_DIGIT_REJECTION, method="lower"),
        np.quantile(np.asarray(variant_confidence, np.float64), MAX_VALIDATION_VARIANT_REJECTION, method="lower"),
    ]
    return round(float(np.clip(min(limits), 0.1, 0.99)), 4)


def rejection_rate(probabilities: np.ndarray, threshold: float | None) -> float:
    """The share of inputs answered "not a digit" under `threshold`."""
    if threshold is None or len(probabilities) == 0:
        return 0.0
    return float((np.asarray(probabilities).max(axis=1) < threshold).mean())


def trust_metrics(
    calibration: Calibration,
    test_logits: np.ndarray,
    test_labels: np.ndarray,
    negative_logits: np.ndarray,
    negative_kinds: np.ndarray | None = None,
    robustness_logits: dict[str, np.ndarray] | None = None,
    robustness_labels: np.ndarray | None = None,
) -> dict[str, Any]:
    """What metrics.json and the gate report about calibration, "not a digit" and robustness."""
    from digitserve.synthetic.negatives import KINDS

    raw, calibrated = softmax(test_logits, 1.0), calibration.probabilities(test_logits)
    negatives = calibration.probabilities(negative_logits)
    out: dict[str, Any] = {
        "calibration": {
            "temperature": calibration.temperature,
            "ece_bins": ECE_BINS,
            "test_ece_before": round(expected_calibration_error(raw, test_labels), 6),
            "test_ece_after": round(expected_calibration_error(calibrated, test_labels), 6),
            "test_nll_before": round(negative_log_likelihood(raw, test_labels), 6),
            "test_nll_after": round(negative_log_likelihood(calibrated, test_labels), 6),
            "reliability_after": reliability(calibrated, test_labels),
        },
        "not_a_digit": {
            "threshold": calibration.threshold,
            "mnist_test_rate": round(rejection_rate(calibrated, calibration.threshold), 6),
            "held_out_negatives_rate": round(rejection_rate(negatives, calibration.threshold), 6),
            "held_out_negatives": len(negatives),
        },
    }
    if negative_kinds is not None:
        out["not_a_digit"]["held_out_by_kind"] = {
            kind: round(rejection_rate(negatives[negative_kinds == k], calibration.threshold), 6)
            for k, kind in enumerate(KINDS)
            if (negative_kinds == k).any()
        }
    if robustness_logits is not None and robustness_labels is not None:
        out["robustness"] = robustness_metrics(calibration, robustness_logits, robustness_labels)
    return out


def robustness_metrics(
    calibration: Calibration, logits_by_variant: dict[str, np.ndarray], labels: np.ndarray
) -> dict[str, Any]:
    """Per robustness variant: accuracy of the best guess, the not-a-digit rate, and the share
    answered as a digit and the right one."""
    variants = {}
    for name, logits in logits_by_variant.items():
        probs = calibration.probabilities(logits)
        is_digit = calibration.is_digit(probs)
        right = probs.argmax(axis=1) == labels
        variants[name] = {
            "accuracy": round(float(right.mean()), 6),
            "not_a_digit_rate": round(float((~is_digit).mean()), 6),
            "answered_correctly": round(float((right & is_digit).mean()), 6),
        }
    return {"count": len(labels), "variants": variants}
