"""From what a client sent (base64 strings, uploaded files) to MNIST-style uint8 arrays."""

from __future__ import annotations

import asyncio
import base64
import binascii
import re
from collections.abc import Sequence

import numpy as np

from digitserve.config import Settings
from digitserve.preprocess import ImageError, UnsupportedFormatError, prepare
from digitserve.serving.errors import (
    InvalidInputError,
    PayloadTooLargeError,
    UnsupportedMediaTypeError,
)

DATA_URL = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(;[\w=.+-]+)*;base64,", re.IGNORECASE)
# Decoding a few small images inline is cheaper than a thread hop; big payloads go to a thread.
INLINE_DECODE_BYTES = 256 * 1024


def decode_base64(text: str, index: int, max_bytes: int) -> bytes:
    """One base64 image (optionally a data: URL) to bytes, with errors that name the image."""
    match = DATA_URL.match(text)
    if match:
        text = text[match.end() :]
    if len(text) * 3 // 4 > max_bytes:
        raise PayloadTooLargeError(f"images[{index}] is over the {max_bytes} byte limit for one image")
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInputError(
            f"images[{index}] is not valid base64; send the file's bytes base64-encoded "
            "(a data:image/png;base64,... URL is fine)"
        ) from None
    if not data:
        raise InvalidInputError(f"images[{index}] is empty")
    return data


def _prepare_all(blobs: Sequence[bytes], settings: Settings, names: Sequence[str]) -> np.ndarray:
    out = np.empty((len(blobs), 28, 28), dtype=np.uint8)
    for i, data in enumerate(blobs):
        try:
            out[i] = prepare(data, max_pixels=settings.max_image_pixels)
        except ImageError as exc:
            error_cls = UnsupportedMediaTypeError if isinstance(exc, UnsupportedFormatError) else InvalidInputError
            error = error_cls(f"{names[i]}: {exc}")
            error.code = exc.code  # e.g. no_digit, image_too_large: specific enough for a client to act on
            raise error from None
    return out


async def prepare_images(blobs: Sequence[bytes], settings: Settings, names: Sequence[str]) -> np.ndarray:
    """Decode and MNIST-normalise every image: (n, 28, 28) uint8, or a 4xx naming the bad one."""
    if sum(len(b) for b in blobs) <= INLINE_DECODE_BYTES:
        return _prepare_all(blobs, settings, names)
    return await asyncio.to_thread(_prepare_all, blobs, settings, names)


def check_count(n: int, settings: Settings, what: str = "images") -> None:
    if n == 0:
        raise InvalidInputError(f"no {what} sent; send at least one")
    if n > settings.max_images:
        raise PayloadTooLargeError(f"{n} {what} in one request; the limit is {settings.max_images}, split the request")
