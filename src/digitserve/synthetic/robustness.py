"""MNIST digits as other writers, pens, scanners and cameras give them: the robustness set.

Each variant takes the same MNIST digits (by default 2,000 evenly spaced test images; never used
for training or for choosing anything), changes how they were written or captured, and sends
the result through the server's preprocessing -- what the model would see had the digit been
uploaded that way:

- `lowres-8`, `lowres-12`, `lowres-16`: re-sampled to 8x8 .. 16x16 (a small, far or low-resolution
  capture) and scaled back up;
- `thin`, `thick`: drawn with a much thinner or thicker pen;
- `photo`: dark ink on paper, photographed or scanned (uneven light, noise, blur, JPEG); a capture
  so faint that the server would answer "no digit found" is taken again;
- `canvas`: drawn large on a canvas, as the web page sends it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter

from digitserve.imaging.decode import NoDigitError
from digitserve.synthetic.render import as_canvas_drawing, as_photo

BIG = 112  # the side digits are drawn at before a variant changes them


def _up(digit: np.ndarray, side: int = BIG) -> Image.Image:
    return Image.fromarray(digit).resize((side, side), Image.Resampling.BICUBIC)


def lowres(size: int) -> Callable[[np.random.Generator, np.ndarray], np.ndarray]:
    def variant(rng: np.random.Generator, digit: np.ndarray) -> np.ndarray:
        small = Image.fromarray(digit).resize((size, size), Image.Resampling.BOX)
        return as_canvas_drawing(np.asarray(small.resize((BIG, BIG), Image.Resampling.BILINEAR), np.float32) / 255)

    return variant


def thin(rng: np.random.Generator, digit: np.ndarray) -> np.ndarray:
    sharp = np.asarray(_up(digit), np.float32) / 255
    pen = Image.fromarray(((sharp > 0.25) * 255).astype(np.uint8)).filter(
        ImageFilter.MinFilter(int(rng.choice([3, 5])))
    )
    return as_canvas_drawing(np.asarray(pen.filter(ImageFilter.GaussianBlur(1)), np.float32) / 255)


def thick(rng: np.random.Generator, digit: np.ndarray) -> np.ndarray:
    pen = _up(digit).filter(ImageFilter.MaxFilter(int(rng.choice([7, 9, 11]))))
    return as_canvas_drawing(np.asarray(pen, np.float32) / 255)


def photo(rng: np.random.Generator, digit: np.ndarray) -> np.ndarray:
    return as_photo(rng, np.asarray(_up(digit), np.float32) / 255)


def canvas(rng: np.random.Generator, digit: np.ndarray) -> np.ndarray:
    side = int(rng.integers(200, 401))
    return as_canvas_drawing(np.asarray(_up(digit, side), np.float32) / 255)


VARIANTS: dict[str, Callable[[np.random.Generator, np.ndarray], np.ndarray]] = {
    "lowres-8": lowres(8),
    "lowres-12": lowres(12),
    "lowres-16": lowres(16),
    "thin": thin,
    "thick": thick,
    "photo": photo,
    "canvas": canvas,
}


@dataclass(frozen=True)
class RobustnessSet:
    images: dict[str, np.ndarray]  # variant -> (N, 28, 28) uint8
    labels: np.ndarray  # (N,) the digits' MNIST labels, the same for every variant
    indices: np.ndarray  # which test images


def make_robustness_set(images: np.ndarray, labels: np.ndarray, count: int = 2000, seed: int = 0) -> RobustnessSet:
    """Every variant of `count` evenly spaced digits of `images`; deterministic for a seed."""
    indices = np.linspace(0, len(images) - 1, min(count, len(images))).round().astype(np.int64)
    out: dict[str, np.ndarray] = {}
    for v, (name, variant) in enumerate(VARIANTS.items()):
        rendered = np.empty((len(indices), 28, 28), np.uint8)
        for k, i in enumerate(indices.tolist()):
            rng = np.random.default_rng([seed, v, i])
            for _ in range(10):
                try:
                    rendered[k] = variant(rng, images[i])
                    break
                except NoDigitError:  # a capture too faint or noisy to read (the server says so): retake it
                    continue
            else:
                raise NoDigitError(f"test digit {i} could not be captured as {name!r} in 10 tries")
        out[name] = rendered
    return RobustnessSet(out, labels[indices], indices)
