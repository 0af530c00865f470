"""After training: calibrate on validation data, then measure once on the test set and write the report."""

from __future__ import annotations

import json
import time
from typing import Any

import numpy as np
from torch import nn

from digitserve.data import MNISTSplit
from digitserve.evaluation import (
    choose_threshold,
    fit_temperature,
    metrics_from_logits,
    negative_log_likelihood,
    rejection_rate,
    trust_metrics,
)
from digitserve.models.checkpoint import predict_logits
from digitserve.registry.samples import NAME as SAMPLES_NAME
from digitserve.registry.samples import make_test_samples
from digitserve.runtime.calibration import SCORE, Calibration, softmax
from digitserve.runtime.reference import MANIFEST_KEY, AnswerReference
from digitserve.synthetic import sets
from digitserve.training.loop import TrainingData
from digitserve.training.provenance import hardware
from digitserve.training.recipe import TrainConfig
from digitserve.training.reports import (
    confusion_matrix_png,
    curves_png,
    misclassified_png,
    not_a_digit_png,
    reliability_png,
)


def calibrate(cfg: TrainConfig, model: nn.Module, data: TrainingData) -> tuple[Calibration, dict[str, Any]]:
    """Fit the temperature on the validation digits, then choose the not-a-digit threshold on
    validation data (digits, and digits re-rendered as in the robustness set); returns the
    calibration and what the manifest records about how it was chosen."""
    val_logits, val_labels = predict_logits(model, data.val_images).numpy(), data.val_labels
    temperature = fit_temperature(val_logits, val_labels)
    val_robust = sets.robustness_set("validation", min(cfg.robustness, sets.ROBUSTNESS_COUNTS["validation"]))
    variant_logits = np.concatenate([predict_logits(model, v).numpy() for v in val_robust.images.values()])
    digit_conf = softmax(val_logits, temperature).max(axis=1)
    variant_conf = softmax(variant_logits, temperature).max(axis=1)
    threshold = choose_threshold(digit_conf, variant_conf)
    calibration = Calibration(temperature, threshold)
    val_probabilities = softmax(val_logits, temperature)
    reference = AnswerReference.measure(
        val_probabilities,
        calibration.is_digit(val_probabilities),
        f"validation split ({len(val_labels)} MNIST training images held out of training)",
    )
    val_negatives = predict_logits(model, sets.negatives("validation", cfg.eval_negatives).images).numpy()
    records = {
        "calibration": {
            "method": "temperature",
            "temperature": temperature,
            "fitted_on": f"validation split ({len(val_labels)} MNIST training images held out of training)",
            "validation_nll_before": round(negative_log_likelihood(softmax(val_logits, 1.0), val_labels), 6),
            "validation_nll_after": round(negative_log_likelihood(softmax(val_logits, temperature), val_labels), 6),
        },
        "not_a_digit": {
            "score": SCORE,
            "threshold": threshold,
            "chosen_on": (
                "validation data: the highest confidence threshold that turns away at most 0.1% of validation "
                "digits and 0.5% of validation digits re-rendered (low resolution, thin, thick, photo, canvas)"
            ),
            "validation_digits_rate": round(rejection_rate(softmax(val_logits, temperature), threshold), 6),
            "validation_variants_rate": round(float((variant_conf < threshold).mean()), 6),
            "validation_negatives_rate": round(rejection_rate(softmax(val_negatives, temperature), threshold), 6),
            "validation_negatives": len(val_negatives),
        },
        MANIFEST_KEY: reference.to_dict(),  # what the drift gauge compares live answers with
    }
    return calibration, records


def evaluate(
    cfg: TrainConfig,
    model: nn.Module,
    test: MNISTSplit,
    calibration: Calibration,
    history: list[dict[str, float]],
    train_seconds: float,
) -> tuple[dict[str, Any], dict[str, bytes]]:
    """Metrics on the official test set, once (the final epoch's weights; no selection), with the
    calibration applied; not-a-digit rates on the held-out negatives; the robustness set; the report."""
    images, labels = test.images[: cfg.limit_test], test.labels[: cfg.limit_test]
    start = time.perf_counter()
    logits = predict_logits(model, images).numpy()
    metrics = metrics_from_logits(logits, labels, time.perf_counter() - start)
    held_out = sets.negatives("held-out", cfg.eval_negatives)
    robust = sets.robustness_set("test", cfg.robustness)
    negative_logits = predict_logits(model, held_out.images).numpy()
    trust = trust_metrics(
        calibration,
        logits,
        labels,
        negative_logits,
        held_out.kinds,
        {name: predict_logits(model, v).numpy() for name, v in robust.images.items()},
        robust.labels,
    )
    probabilities = calibration.probabilities(logits)
    preds, confidences = probabilities.argmax(1), probabilities.max(1)
    negative_probs = calibration.probabilities(negative_logits)
    metrics.update(
        trust,
        params=sum(p.numel() for p in model.parameters()),
        train_seconds=round(train_seconds, 1),
        hardware=hardware(),
        smoke=cfg.smoke,
        split="test" if cfg.limit_test is None else f"test[:{cfg.limit_test}]",
    )
    title = f"{cfg.name or cfg.arch} ({cfg.arch}) test accuracy {metrics['accuracy']:.4f}"
    raw = softmax(logits, 1.0)
    report = {
        "metrics.json": json.dumps({**metrics, "history": history}, indent=2).encode(),
        "confusion_matrix.png": confusion_matrix_png(metrics["confusion_matrix"], title),
        "misclassified.png": misclassified_png(images, labels, preds, confidences, title),
        "curves.png": curves_png(history, title),
        "reliability.png": reliability_png(raw, probabilities, labels, calibration.temperature, title),
        "not_a_digit.png": not_a_digit_png(images, probabilities, held_out.images, negative_probs, calibration, title),
        SAMPLES_NAME: make_test_samples(images, labels, probabilities, calibration.is_digit(probabilities)),
    }
    return metrics, report
