"""A digit as a CSV of pixel values, the format the project grew from.

Accepted: 28 rows of 28 values, or one row of 784 (a row of the common MNIST CSV files), each
optionally after one header row (a first row in which no field is a number, such as
`pixel0,pixel1,...`). Values are either all integers 0-255 or, when any has a decimal point or
an exponent, numbers 0-1 (scaled to 0-255). Fields are separated by commas; spaces around them
and a UTF-8 byte-order mark are allowed. Anything else is an `InvalidImageError` that says what
to fix, found by reading at most `MAX_CSV_BYTES` -- a CSV is one more hostile input.

`looks_like_csv` tells a CSV from an image file by its first bytes: image formats start with a
binary signature, a CSV with text.
"""

from __future__ import annotations

import math
import re

import numpy as np

from digitserve.imaging.decode import InvalidImageError

SIDE = 28
MAX_CSV_BYTES = 64 * 1024  # 784 values of "0.123456789," with a header row fit well within this
_TEXT = frozenset(b"\t\r\n") | frozenset(range(0x20, 0x7F))  # printable ASCII
_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")


def looks_like_csv(data: bytes) -> bool:
    """True when `data` starts like text (a CSV) rather than like a binary image file."""
    head = data[:64].removeprefix(b"\xef\xbb\xbf")
    return bool(head) and all(b in _TEXT for b in head) and b"," in data[:MAX_CSV_BYTES]


def _number(field: str) -> float | None:
    """The field's value; None unless it is a plain decimal number (no "nan", "inf" or "1_0")."""
    return float(field) if _NUMBER.fullmatch(field) else None


def _rows(data: bytes) -> list[list[str]]:
    if len(data) > MAX_CSV_BYTES:
        raise InvalidImageError(f"the CSV is {len(data):,} bytes, over the {MAX_CSV_BYTES:,} byte limit for 784 values")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InvalidImageError("the CSV is not UTF-8 text; send 28 rows of 28 comma-separated numbers") from None
    lines = [line for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n") if line.strip()]
    if len(lines) > SIDE + 1:
        raise InvalidImageError(f"the CSV has {len(lines)} rows; send 28 rows of 28 values (or one row of 784)")
    return [[field.strip() for field in line.split(",")] for line in lines]


def _values(rows: list[list[str]]) -> list[list[str]]:
    """The rows of numbers: a first row with no numeric field is a header and is dropped."""
    if rows and all(_number(f) is None for f in rows[0]):
        rows = rows[1:]
    if len(rows) == 1 and len(rows[0]) == SIDE * SIDE:
        return [rows[0][i : i + SIDE] for i in range(0, SIDE * SIDE, SIDE)]
    if len(rows) != SIDE:
        counted = f"{len(rows)} row{'' if len(rows) == 1 else 's'}"
        raise InvalidImageError(
            f"the CSV has {counted} of values; send 28 rows of 28 values (or one row of 784), "
            "with at most one header row"
        )
    for r, row in enumerate(rows, start=1):
        if len(row) != SIDE:
            raise InvalidImageError(f"row {r} of the CSV values has {len(row)} fields; every row needs 28")
    return rows


def parse_pixel_csv(data: bytes) -> np.ndarray:
    """CSV bytes -> (28, 28) uint8 grayscale, or InvalidImageError naming the first problem."""
    rows = _values(_rows(data))
    floats = any(any(c in f for c in ".eE") for row in rows for f in row)
    out = np.empty((SIDE, SIDE), dtype=np.uint8)
    for r, row in enumerate(rows):
        for c, field in enumerate(row):
            value = _number(field)
            where = f"row {r + 1}, column {c + 1} of the CSV values"
            if value is None or not math.isfinite(value):
                raise InvalidImageError(f"{where} is {field[:20]!r}, not a number")
            if floats and not 0.0 <= value <= 1.0:
                raise InvalidImageError(f"{where} is {field[:20]}; values with a decimal point must be 0-1")
            if not floats and not (value.is_integer() and 0 <= value <= 255):
                raise InvalidImageError(f"{where} is {field[:20]}; whole-number values must be 0-255")
            out[r, c] = round(value * 255) if floats else int(value)
    return out
