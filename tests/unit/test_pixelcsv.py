"""The 28x28 pixel CSV, the project's origin format: what parses, and how the rest is refused."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from digitserve.imaging.decode import InvalidImageError
from digitserve.imaging.mnist import prepare
from digitserve.imaging.pixelcsv import MAX_CSV_BYTES, looks_like_csv, parse_pixel_csv
from digitserve.serving.api.schemas import EXAMPLE_PNG_B64

SEVEN = np.asarray(Image.open(io.BytesIO(base64.b64decode(EXAMPLE_PNG_B64))).convert("L"))


def as_csv(pixels: np.ndarray, floats: bool = False, header: bool = False, one_row: bool = False) -> bytes:
    values = pixels / 255 if floats else pixels
    fmt = "{:.6f}" if floats else "{:d}"
    rows = [values.reshape(1, -1)] if one_row else list(values)
    lines = [",".join(fmt.format(v) for v in row) for row in (np.asarray(r).ravel() for r in rows)]
    if header:
        lines.insert(0, ",".join(f"pixel{i}" for i in range(len(rows[0].ravel()))))
    return ("\r\n" if header else "\n").join(lines).encode()


@pytest.mark.parametrize("floats", [False, True], ids=["0-255", "0-1"])
@pytest.mark.parametrize("header", [False, True], ids=["no-header", "header"])
@pytest.mark.parametrize("one_row", [False, True], ids=["28x28", "1x784"])
def test_every_accepted_shape_reads_back_the_same_pixels(floats: bool, header: bool, one_row: bool) -> None:
    data = as_csv(SEVEN.astype(int), floats, header, one_row)
    assert looks_like_csv(data)
    np.testing.assert_array_equal(parse_pixel_csv(data), SEVEN)


def test_a_csv_digit_is_prepared_like_the_same_png() -> None:
    png = base64.b64decode(EXAMPLE_PNG_B64)
    np.testing.assert_array_equal(prepare(as_csv(SEVEN.astype(int))), prepare(png))


def test_spaces_bom_and_blank_lines_are_fine() -> None:
    text = "\ufeff" + "\n".join(", ".join(str(v) for v in row) for row in SEVEN.astype(int)) + "\n\n"
    np.testing.assert_array_equal(parse_pixel_csv(text.encode()), SEVEN)


def grid(value: str = "0", rows: int = 28, cols: int = 28) -> list[list[str]]:
    return [[value] * cols for _ in range(rows)]


def text(cells: list[list[str]]) -> bytes:
    return "\n".join(",".join(row) for row in cells).encode()


def with_cell(value: str, row: int = 3, col: int = 5) -> bytes:
    cells = grid()
    cells[row][col] = value
    return text(cells)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (with_cell("256"), "row 4, column 6 of the CSV values is 256; whole-number values must be 0-255"),
        (with_cell("-1"), "whole-number values must be 0-255"),
        (with_cell("1.5"), "values with a decimal point must be 0-1"),
        (with_cell("1e999"), "not a number"),
        (with_cell("nan"), "not a number"),
        (with_cell("inf"), "not a number"),
        (with_cell("1_0"), "not a number"),
        (with_cell('"7"'), "not a number"),
        (with_cell(""), "not a number"),
        (text(grid(rows=27)), "27 rows of values"),
        (text(grid(cols=29)), "row 1 of the CSV values has 29 fields"),
        (text([*grid()[:27], ["0"] * 27]), "row 28 of the CSV values has 27 fields"),
        (text([["a"] * 28, ["b"] * 28, *grid()]), "30 rows"),  # two header rows
        (b"pixel0,pixel1\n", "0 rows of values"),
        (b"0," * (MAX_CSV_BYTES // 2 + 1), "byte limit"),
        (b"\n" * 40 + text(grid()), None),  # blank lines are skipped
        (b"0,\xff\xfe" + text(grid()), "not UTF-8"),
        (text(grid(rows=1, cols=783)), "1 row of values"),
    ],
)
def test_anything_else_is_refused_with_what_to_fix(data: bytes, message: str | None) -> None:
    if message is None:
        assert parse_pixel_csv(data).shape == (28, 28)
        return
    with pytest.raises(InvalidImageError, match=message.replace("(", r"\(")):
        parse_pixel_csv(data)


def test_image_files_are_not_mistaken_for_csv() -> None:
    assert not looks_like_csv(base64.b64decode(EXAMPLE_PNG_B64))
    assert not looks_like_csv(b"")
    assert not looks_like_csv(b"hello world")  # text, but no comma: an image error names both formats
    with pytest.raises(InvalidImageError, match="28x28 CSV of pixel values"):
        prepare(b"hello world")


def test_parsing_is_bounded() -> None:
    """The largest CSV that gets parsed at all is MAX_CSV_BYTES; many rows are refused by count."""
    with pytest.raises(InvalidImageError, match="rows"):
        parse_pixel_csv(b"0\n" * (MAX_CSV_BYTES // 2))
