"""The shipped production CNN, through `prepare`, on photo- and canvas-like digits (issue 5).

The photo-like set is rendered from a fixed-seed sample of the official MNIST test set (see
`digitserve.photolike`), so the numbers are comparable from run to run.
"""

from __future__ import annotations

import numpy as np
import pytest
from torch import nn

from digitserve.data import load_mnist
from digitserve.evaluation import predict_logits
from digitserve.photolike import make_photo_set, prepare_samples
from digitserve.preprocess import mnist_style
from digitserve.registry import ModelRegistry

pytestmark = pytest.mark.slow

PHOTO_COUNT = 1000
PHOTO_ACCURACY = 0.985


@pytest.fixture(scope="module")
def production_cnn() -> nn.Module:
    registry = ModelRegistry.open()
    _, model = registry.load_model("cnn", registry.resolve_alias("cnn", "production"))
    return model


def accuracy(model: nn.Module, images: np.ndarray, labels: np.ndarray) -> float:
    return float((predict_logits(model, images).argmax(1).numpy() == labels).mean())


def test_photo_like_digits_through_prepare(production_cnn: nn.Module) -> None:
    samples = make_photo_set(PHOTO_COUNT, seed=0)
    labels = np.array([label for _, label in samples])
    prepared, refused = prepare_samples(samples)
    correct = (predict_logits(production_cnn, prepared).argmax(1).numpy() == labels) & ~refused
    assert refused.sum() == 0, f"{refused.sum()} digits were refused as blank"
    assert correct.mean() >= PHOTO_ACCURACY, f"accuracy {correct.mean():.4f} on {len(samples)} photo-like digits"


def test_mnist_test_set_is_not_harmed_by_mnist_style(production_cnn: nn.Module) -> None:
    test = load_mnist("test")
    styled = np.stack([mnist_style(image) for image in test.images])
    raw = accuracy(production_cnn, test.images, test.labels)
    assert accuracy(production_cnn, styled, test.labels) >= raw
