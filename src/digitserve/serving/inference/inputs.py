"""What a client sent, checked before anything is decoded: base64 strings (optionally data:
URLs) to bytes, the count of images, the pixels of a request. Errors name the image."""

from __future__ import annotations

import base64
import binascii
import re

from digitserve.config import RequestLimits
from digitserve.imaging.decode import TooManyPixelsError
from digitserve.serving.errors import InvalidInputError, PayloadTooLargeError

DATA_URL = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(;[\w=.+-]+)*;base64,", re.IGNORECASE)


def decode_base64(text: str, index: int | str, max_bytes: int) -> bytes:
    """One base64 image (optionally a data: URL) to bytes, with errors that name the image
    (`images[index]`, or the field name given as a string)."""
    name = f"images[{index}]" if isinstance(index, int) else index
    match = DATA_URL.match(text)
    if match:
        text = text[match.end() :]
    if len(text) * 3 // 4 > max_bytes:
        raise PayloadTooLargeError(f"{name} is over the {max_bytes} byte limit for one image")
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInputError(
            f"{name} is not valid base64; send the file's bytes base64-encoded "
            "(a data:image/png;base64,... URL is fine)"
        ) from None
    if not data:
        raise InvalidInputError(f"{name} is empty")
    return data


def check_count(n: int, limits: RequestLimits, what: str = "images") -> None:
    if n == 0:
        raise InvalidInputError(f"no {what} sent; send at least one")
    if n > limits.max_images:
        raise PayloadTooLargeError(f"{n} {what} in one request; the limit is {limits.max_images}, split the request")


def check_request_pixels(pixels: int, limit: int) -> None:
    if pixels > limit:
        raise TooManyPixelsError(
            f"the images hold {pixels:,} pixels in all, over the limit of {limit:,} per request; "
            "send smaller images or fewer per request"
        )
