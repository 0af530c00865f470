"""Tiny CNNs whose head always answers one digit: models whose every answer is known in advance.

A constant model's accuracy on the MNIST test set is exactly that digit's share of it (always
"1": 1135/10000), so a gate's re-measurement can be checked to the last image without training.
"""

from __future__ import annotations

import json

import numpy as np
import torch
from torch import nn

from digitserve.data import TEST_LABEL_COUNTS
from digitserve.models import create_model
from digitserve.registry import ModelRegistry
from support.registries import publish_network

MODEL = "digits"


def accuracy_of(label: int) -> float:
    return TEST_LABEL_COUNTS[label] / 10000


def constant_model(label: int, seed: int = 0) -> nn.Module:
    """A tiny CNN that predicts `label` for every image."""
    torch.manual_seed(seed)
    net = create_model("cnn", channels=[4, 8, 8], depths=[1, 1, 1]).eval()
    head = net.head[-1]
    with torch.no_grad():
        head.weight.zero_()
        head.bias.copy_(10 * torch.nn.functional.one_hot(torch.tensor(label), 10).float())
    return net


def publish_constant(
    registry: ModelRegistry, label: int, seed: int = 0, claimed: float | None = None, model: str = MODEL
) -> int:
    """Publish `constant_model(label)` as `model`; `claimed` is the accuracy its manifest records."""
    net = constant_model(label, seed)
    golden_images = np.zeros((8, 28, 28), np.uint8)
    metrics = {"accuracy": accuracy_of(label) if claimed is None else claimed, "split": "test"}
    report = {"metrics.json": json.dumps(metrics).encode()}
    return publish_network(registry, model, net, {"metrics": metrics, **RULE}, report, golden_images)


# T = 1 and a threshold no constant model's answer falls below: every answer is a digit.
RULE = {
    "calibration": {"method": "temperature", "temperature": 1.0},
    "not_a_digit": {"score": "confidence", "threshold": 0.1},
}
RELAXED = {"MAX_ECE": "1", "MAX_DIGITS_NOT_A_DIGIT": "1", "MIN_NEGATIVES_NOT_A_DIGIT": "0"}
