"""The photo-like test-set generator (digitserve.photolike): realistic, varied, reproducible."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from support.photolike import CANVAS_STYLES, make_canvas, make_photo, make_photo_set


def digit() -> np.ndarray:
    """A synthetic '7'-like MNIST-style digit: white strokes on black, 28x28."""
    image = np.zeros((28, 28), dtype=np.uint8)
    image[6:9, 7:21] = 255
    for row in range(9, 24):
        col = 20 - (row - 9) // 2
        image[row, col - 1 : col + 2] = 255
    return image


def test_photo_is_an_rgb_jpeg_of_dark_ink_on_paper() -> None:
    data = make_photo(digit(), np.random.default_rng(0))
    image = Image.open(io.BytesIO(data))
    assert image.format == "JPEG" and image.mode == "RGB"
    assert min(image.size) >= 60 and max(image.size) <= 400
    gray = np.asarray(image.convert("L"), dtype=np.float64)
    assert np.median(gray) > 120 and gray.min() < np.median(gray) - 60  # light paper, dark ink


def test_photos_vary_in_size_and_placement() -> None:
    rng = np.random.default_rng(1)
    sizes = {Image.open(io.BytesIO(make_photo(digit(), rng))).size for _ in range(10)}
    assert len(sizes) == 10


@pytest.mark.parametrize("style", CANVAS_STYLES)
def test_canvas_styles(style: str) -> None:
    image = Image.open(io.BytesIO(make_canvas(digit(), np.random.default_rng(2), style)))
    assert image.format == "PNG"
    if style == "black_on_transparent":
        alpha = np.asarray(image.getchannel("A"))
        assert image.mode == "RGBA" and alpha.min() == 0 and alpha.max() == 255
        assert np.asarray(image.convert("RGB")).max() == 0  # black everywhere, the alpha draws
    else:
        gray = np.asarray(image)
        background = 0 if style == "white_on_black" else 255
        assert np.median(gray) == background and np.abs(gray.astype(int) - background).max() == 255


def test_unknown_canvas_style_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown canvas style 'pink'"):
        make_canvas(digit(), np.random.default_rng(0), "pink")


def test_photo_set_is_reproducible_and_mixes_kinds() -> None:
    images = np.stack([digit()] * 30)
    labels = np.arange(30) % 10
    first = make_photo_set(20, seed=3, digits=(images, labels))
    assert first == make_photo_set(20, seed=3, digits=(images, labels))
    assert first != make_photo_set(20, seed=4, digits=(images, labels))
    formats = [Image.open(io.BytesIO(data)).format for data, _ in first]
    assert formats.count("PNG") == 2 and formats.count("JPEG") == 18
    assert {label for _, label in first} <= set(range(10))
