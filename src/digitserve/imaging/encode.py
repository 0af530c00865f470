"""A 28x28 model input (or any uint8 image) as PNG bytes, for answers and pages that show it."""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image


def png_bytes(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def png_base64(image: np.ndarray) -> str:
    return base64.b64encode(png_bytes(image)).decode()


def png_data_url(image: np.ndarray) -> str:
    return "data:image/png;base64," + png_base64(image)


def synthetic_digit_pngs(count: int) -> list[bytes]:
    """MNIST-style PNGs (a ring and a bar, about 20 pixels tall, centred on a dark 28x28 field),
    as a client sends them: what the decoder's calibration times against their price."""
    rows, cols = np.mgrid[0:28, 0:28]
    ring = np.abs(np.hypot((rows - 14) / 8, (cols - 14) / 5.5) - 1) < 0.25
    bar = (np.abs(cols - 14) <= 1) & (np.abs(rows - 14) <= 10)
    images = [(shape * 255).astype(np.uint8) for shape in (ring, bar)]
    return [png_bytes(images[i % len(images)]) for i in range(count)]
