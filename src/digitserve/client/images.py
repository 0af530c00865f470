"""What a caller may pass as an image, turned into the encoded file the server decodes.

The models were trained on MNIST: a light digit on a dark field (white on black), about 20
pixels tall in 28x28. The server normalises any picture to that (docs/preprocessing.md): it
finds the ink, decides the polarity itself (dark ink on light paper is inverted), crops,
scales and centres it, so a photo or a canvas drawing works as it is; a 28x28 white-on-black
array passes through unchanged.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TypeAlias

import numpy as np
from PIL import Image

from digitserve.imaging.encode import png_bytes

ImageInput: TypeAlias = bytes | bytearray | str | os.PathLike[str] | Image.Image | np.ndarray
"""An encoded image file's bytes (PNG, JPEG, WebP, BMP, GIF; or a 28x28 pixel CSV), a path to
one, a PIL image, or a numpy array: 2-D grayscale (H, W) or colour (H, W, 3|4), uint8 0..255 or
float 0..1."""

PNG_MODES = {"1", "L", "LA", "I", "I;16", "P", "RGB", "RGBA"}


def image_list(images: ImageInput | Sequence[ImageInput]) -> list[ImageInput]:
    """One image, or a sequence (list, tuple) of them, as a list. A str or bytes is one image."""
    if isinstance(images, bytes | bytearray | str | os.PathLike | Image.Image | np.ndarray):
        return [images]
    return list(images)


def encode_image(image: ImageInput) -> bytes:
    """The bytes to send for one image: a file's bytes as they are, anything else as a PNG."""
    if isinstance(image, bytes | bytearray):
        return bytes(image)
    if isinstance(image, str | os.PathLike):
        return Path(image).read_bytes()
    if isinstance(image, Image.Image):
        return _pil_png(image)
    if isinstance(image, np.ndarray):
        return png_bytes(_pixels(image))
    raise TypeError(
        f"cannot send a {type(image).__name__} as an image; pass bytes, a path, a PIL image or a numpy array"
    )


def _pil_png(image: Image.Image) -> bytes:
    if image.mode not in PNG_MODES:  # CMYK, YCbCr, floats, ...: what PNG cannot hold
        image = image.convert("RGBA" if "A" in image.getbands() else "RGB")
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _pixels(array: np.ndarray) -> np.ndarray:
    """A numpy image as uint8 pixels: floats are 0..1 (scaled by 255), integers 0..255."""
    colour = array.ndim == 3 and array.shape[2] in (3, 4)
    if array.ndim != 2 and not colour:
        raise ValueError(
            f"a numpy image is (H, W) or (H, W, 3|4); got shape {array.shape} (pass a list for several images)"
        )
    if array.size == 0:
        raise ValueError("a numpy image has no pixels")
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all() or array.min() < 0 or array.max() > 1:
            raise ValueError("a float image's pixels must be in 0..1 (multiply uint8 pixels by 1/255)")
        return np.rint(array * 255).astype(np.uint8)
    if np.issubdtype(array.dtype, np.integer):
        if array.min() < 0 or array.max() > 255:
            raise ValueError("an integer image's pixels must be in 0..255")
        return array.astype(np.uint8)
    raise ValueError(f"a numpy image must hold integers 0..255 or floats 0..1, not {array.dtype}")
