"""Measuring a model on MNIST: the one evaluation used by training, `evaluate.py` and the gate."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
from torch import nn

from digitserve.data import load_mnist
from digitserve.preprocess import to_model_input


@torch.inference_mode()
def predict_logits(model: nn.Module, images: np.ndarray, batch_size: int = 1000) -> torch.Tensor:
    """Logits (N, 10) for uint8 MNIST-style images (N, 28, 28), in eval mode."""
    model.eval()
    chunks = [model(to_model_input(images[i : i + batch_size])) for i in range(0, len(images), batch_size)]
    return torch.cat(chunks) if chunks else torch.empty(0, 10)


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


def evaluate_model(model: nn.Module, images: np.ndarray, labels: np.ndarray) -> tuple[dict[str, Any], np.ndarray]:
    """Metrics on (images, labels) and the predicted labels, with the time the pass took."""
    start = time.perf_counter()
    logits = predict_logits(model, images)
    elapsed = time.perf_counter() - start
    preds = logits.argmax(dim=1).numpy()
    metrics = classification_metrics(labels, preds)
    metrics["eval_seconds"] = round(elapsed, 3)
    metrics["images_per_second"] = round(len(images) / elapsed, 1) if elapsed > 0 else None
    return metrics, preds


def evaluate_on_test_set(model: nn.Module, limit: int | None = None) -> dict[str, Any]:
    """Metrics on the official 10k MNIST test set (or its first `limit` images)."""
    test = load_mnist("test")
    images, labels = test.images[:limit], test.labels[:limit]
    metrics, _ = evaluate_model(model, images, labels)
    metrics["data_sha256"] = test.checksum
    return metrics
