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
