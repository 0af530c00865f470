"""Tangles of random strokes, white on black as MNIST: no digit to the production model, which
says "not a digit"; the shipped cnn v2 (no not-a-digit threshold) names a digit for each, so the
two never agree on them -- what a canary test needs to make a canary fail its watch."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw


def scribble_images(n: int, seed: int = 0) -> np.ndarray:
    """`n` 28x28 uint8 tangles of eight random strokes."""
    rng = np.random.default_rng(seed)
    drawn = []
    for _ in range(n):
        image = Image.new("L", (28, 28))
        points = [tuple(int(v) for v in rng.integers(4, 24, 2)) for _ in range(8)]
        ImageDraw.Draw(image).line(points, fill=255, width=2)
        drawn.append(np.asarray(image))
    return np.stack(drawn)
