"""The shipped production CNN, through `prepare`, on photo- and canvas-like digits (issue 5).

The photo-like set is rendered from a fixed-seed sample of the official MNIST test set (see
`tests/support/photolike.py`), so the numbers are comparable from run to run. What is measured
is what serves: the production version's ONNX artifact under ONNX Runtime.
"""

from __future__ import annotations

import numpy as np
import pytest
from support.photolike import make_photo_set, prepare_samples

from digitserve.data import load_mnist
from digitserve.evaluation import load_runtime, runtime_logits
from digitserve.imaging.mnist import mnist_style
from digitserve.registry import ModelRegistry
from digitserve.runtime import OnnxModel

pytestmark = pytest.mark.slow

PHOTO_COUNT = 1000
PHOTO_ACCURACY = 0.985


@pytest.fixture(scope="module")
def production_cnn() -> OnnxModel:
    registry = ModelRegistry.open()
    _, runtime = load_runtime(registry, "cnn", registry.resolve_alias("cnn", "production"))
    return runtime


def accuracy(model: OnnxModel, images: np.ndarray, labels: np.ndarray) -> float:
    return float((runtime_logits(model, images).argmax(1) == labels).mean())


def test_photo_like_digits_through_prepare(production_cnn: OnnxModel) -> None:
    samples = make_photo_set(PHOTO_COUNT, seed=0)
    labels = np.array([label for _, label in samples])
    prepared, refused = prepare_samples(samples)
    correct = (runtime_logits(production_cnn, prepared).argmax(1) == labels) & ~refused
    assert refused.sum() == 0, f"{refused.sum()} digits were refused as blank"
    assert correct.mean() >= PHOTO_ACCURACY, f"accuracy {correct.mean():.4f} on {len(samples)} photo-like digits"


def test_mnist_test_set_is_not_harmed_by_mnist_style(production_cnn: OnnxModel) -> None:
    test = load_mnist("test")
    styled = np.stack([mnist_style(image) for image in test.images])
    raw = accuracy(production_cnn, test.images, test.labels)
    assert accuracy(production_cnn, styled, test.labels) >= raw
