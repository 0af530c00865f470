"""Turning images into model input. Models see MNIST-style 28x28 white-on-black digits."""

from __future__ import annotations

import numpy as np
import torch

MNIST_MEAN = 0.1307
MNIST_STD = 0.3081
PREPROCESSING = {
    "input": "28x28 grayscale uint8, white ink on black, digit fit in 20x20 and centred by mass",
    "scale": 1 / 255,
    "mean": MNIST_MEAN,
    "std": MNIST_STD,
}


def to_model_input(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 (N, 28, 28) or (N, 1, 28, 28) -> normalised float32 (N, 1, 28, 28)."""
    x = torch.as_tensor(images)
    if x.ndim == 3:
        x = x.unsqueeze(1)  # (N, 1, 28, 28)
    return (x.float() / 255.0 - MNIST_MEAN) / MNIST_STD
