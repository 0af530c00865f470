"""Turning images into model input. Models see MNIST-style 28x28 white-on-black digits.

MNIST was made by fitting each digit's bounding box into 20x20 pixels (aspect kept,
anti-aliased) and placing it in a 28x28 field so that its centre of mass is the centre.
`mnist_style` does the same to a photo, scan or canvas drawing; `prepare` decodes bytes first.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from digitserve.imaging.decode import (
    ImageError,
    ImageTooLargeError,
    InvalidImageError,
    NoDigitError,
    UnsupportedFormatError,
    decode_image,
)
from digitserve.imaging.ink import dilate, find_ink
from digitserve.imaging.pixelcsv import looks_like_csv, parse_pixel_csv

__all__ = [
    "MNIST_MEAN",
    "MNIST_STD",
    "PREPROCESSING",
    "ImageError",
    "ImageTooLargeError",
    "InvalidImageError",
    "NoDigitError",
    "UnsupportedFormatError",
    "decode_image",
    "mnist_style",
    "prepare",
    "prepare_many",
    "timed_prepare_many",
]

MNIST_MEAN = 0.1307
MNIST_STD = 0.3081
PREPROCESSING = {
    "input": "28x28 grayscale uint8, white ink on black, digit fit in 20x20 and centred by mass",
    "scale": 1 / 255,
    "mean": MNIST_MEAN,
    "std": MNIST_STD,
}

FIELD, BOX = 28, 20
CENTRE = 14.0  # MNIST's centre of mass, in pixel-index coordinates (measured: 13.5..14.5)
WORK_SIDE = 384  # larger pictures are area-downsampled to this first: plenty for a 20px digit
_MIDDLE = (FIELD * FIELD // 2 - 1, FIELD * FIELD // 2)  # the two middle pixels of a 28x28 field: its median
_RING_PIXELS = 4 * 2 * FIELD  # a 2-pixel border, corners counted twice
STROKE_WIDTH = 2.6  # typical MNIST stroke width in the 28x28 field (2*area/perimeter, median 2.9)


def prepare(data: bytes, **limits: Any) -> np.ndarray:
    """Image or pixel-CSV bytes -> a (28, 28) uint8 MNIST-style digit; `limits` go to `decode_image`."""
    if looks_like_csv(data):
        return mnist_style(parse_pixel_csv(data))
    return mnist_style(decode_image(data, **limits))


def prepare_many(blobs: Sequence[bytes], names: Sequence[str], max_pixels: int) -> np.ndarray:
    """`prepare` for each image: (n, 28, 28) uint8, or the ImageError of the first bad one, named.

    Module-level and light to import, so a decode process can run it (serving/inference/decoding.py)."""
    out = np.empty((len(blobs), FIELD, FIELD), dtype=np.uint8)
    for i, data in enumerate(blobs):
        try:
            out[i] = prepare(data, max_pixels=max_pixels)
        except ImageError as exc:
            raise type(exc)(f"{names[i]}: {exc}") from None
    return out


def timed_prepare_many(blobs: Sequence[bytes], names: Sequence[str], max_pixels: int) -> tuple[np.ndarray, float]:
    """`prepare_many` and the seconds it took (what a decode process reports back)."""
    started = time.perf_counter()
    images = prepare_many(blobs, names, max_pixels)
    return images, time.perf_counter() - started


def mnist_style(gray: np.ndarray | Image.Image) -> np.ndarray:
    """A grayscale picture of one digit, any polarity and size -> (28, 28) uint8 as in MNIST.

    A 28x28 picture that already looks like MNIST (dark field, digit centred by mass and
    about 20 pixels tall) comes back unchanged (inverted if it was dark on light).
    Raises NoDigitError when there is no ink.
    """
    image = _as_gray_array(gray)
    if image.shape == (FIELD, FIELD):
        ready = _already_mnist(image)
        if ready is not None:
            return ready
    ink = find_ink(_downsample(image))
    return _centre_by_mass(_fit_box(ink.strength, ink.mask))


def _as_gray_array(gray: np.ndarray | Image.Image) -> np.ndarray:
    """float32 (H, W) in 0..255. Float arrays whose maximum is at most 1 are taken as 0..1."""
    if isinstance(gray, Image.Image):
        return np.asarray(gray if gray.mode == "L" else gray.convert("L"), dtype=np.float32)
    array = np.asarray(gray)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim != 2 or min(array.shape) < 1:
        raise InvalidImageError(f"expected a 2-D grayscale image, got an array of shape {array.shape}")
    scale = 255.0 if array.dtype == bool or (array.dtype.kind == "f" and array.max() <= 1.0) else 1.0
    return array.astype(np.float32) * scale


def _already_mnist(image: np.ndarray) -> np.ndarray | None:
    """The image itself (polarity fixed) when it already has MNIST's framing, else None.

    On the request path for every 28x28 upload, so it makes few numpy calls: the median from
    one partition, the border ring from four slice sums (corners twice, as a concatenation).
    """
    lower, upper = np.partition(image.ravel(), _MIDDLE)[list(_MIDDLE)]
    median = (float(lower) + float(upper)) / 2
    if median > 127:
        image, median = 255 - image, 255 - median
    ring = float(image[:2].sum() + image[-2:].sum() + image[:, :2].sum() + image[:, -2:].sum()) / _RING_PIXELS
    ink = image > 32
    if median > 8 or ring > 16 or np.count_nonzero(ink) < 20:
        return None
    rows, cols = np.flatnonzero(ink.any(axis=1)), np.flatnonzero(ink.any(axis=0))
    side = max(rows[-1] - rows[0], cols[-1] - cols[0]) + 1
    com = _centre_of_mass(image)
    if not 16 <= side <= 22 or max(abs(com[0] - CENTRE), abs(com[1] - CENTRE)) > 1.5:
        return None
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def _downsample(image: np.ndarray) -> np.ndarray:
    height, width = image.shape
    factor = max(height, width) / WORK_SIDE
    if factor <= 1:
        return image
    size = (max(1, round(width / factor)), max(1, round(height / factor)))
    return np.asarray(Image.fromarray(image, mode="F").resize(size, Image.Resampling.BOX))


def _fit_box(strength: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Crop to the ink, thicken hairline strokes, and scale the longer side to 20 pixels."""
    rows, cols = np.nonzero(strength > 0.1)
    if rows.size == 0:
        raise NoDigitError("no digit found: the image has no ink; send a picture of one digit")
    crop = strength[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    scale = BOX / max(crop.shape)
    radius = _thickening_radius(mask[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1], scale)
    if radius > 0:
        crop = dilate(np.pad(crop, radius), radius)
        scale = BOX / max(crop.shape)
    height, width = crop.shape
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    resized = Image.fromarray(crop.astype(np.float32), mode="F").resize(size, Image.Resampling.LANCZOS)
    return np.clip(np.asarray(resized), 0, 1) * 255


def _thickening_radius(mask: np.ndarray, scale: float) -> int:
    """Pixels to dilate by so strokes keep about MNIST's width once scaled by `scale`."""
    area = int(mask.sum())
    padded = np.pad(mask, 1)
    interior = mask & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    boundary = max(area - int(interior.sum()), 1)
    width = 2 * area / boundary  # a stroke of length L and width w: area wL, boundary ~2L
    missing = STROKE_WIDTH / scale - width
    return max(0, round(missing / 2)) if width * scale < 0.75 * STROKE_WIDTH else 0


def _centre_of_mass(image: np.ndarray) -> tuple[float, float]:
    """(row, column) of the centre of mass, from the row and column sums (no index grids)."""
    image = image.astype(np.float64, copy=False)
    total = float(image.sum())
    row_mass, col_mass = image.sum(axis=1), image.sum(axis=0)
    return float(row_mass @ np.arange(len(row_mass))) / total, float(col_mass @ np.arange(len(col_mass))) / total


def _centre_by_mass(box: np.ndarray) -> np.ndarray:
    """Place the box in the 28x28 field with its centre of mass at the centre (kept inside)."""
    com_row, com_col = _centre_of_mass(box)
    height, width = box.shape
    top = min(max(round(CENTRE - com_row), 0), FIELD - height)
    left = min(max(round(CENTRE - com_col), 0), FIELD - width)
    field = np.zeros((FIELD, FIELD), dtype=np.float32)
    field[top : top + height, left : left + width] = box
    return np.clip(np.rint(field), 0, 255).astype(np.uint8)
