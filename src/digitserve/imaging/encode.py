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
