"""Decoding and MNIST-style normalisation of uploaded images (digitserve.imaging.mnist)."""

from __future__ import annotations

import io
import struct
import tracemalloc
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image, ImageFilter

from digitserve.data import load_mnist
from digitserve.imaging.mnist import (
    ImageError,
    ImageTooLargeError,
    InvalidImageError,
    NoDigitError,
    UnsupportedFormatError,
    decode_image,
    mnist_style,
    prepare,
)


@pytest.fixture(scope="module")
def mnist_test() -> tuple[np.ndarray, np.ndarray]:
    test = load_mnist("test")
    return test.images, test.labels


def encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **params)
    return out.getvalue()


def drawn_digit(mnist_test: tuple[np.ndarray, np.ndarray], index: int = 0, side: int = 280) -> np.ndarray:
    """An MNIST digit re-drawn large and off-centre as white-on-black (H, W) uint8."""
    digit = Image.fromarray(mnist_test[0][index]).resize((side // 2, side // 2), Image.Resampling.BICUBIC)
    canvas = Image.new("L", (side, side), 0)
    canvas.paste(digit, (side // 10, side // 3))
    return np.asarray(canvas)


def similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two images: 1 for identical shapes."""
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def png_header_only(width: int, height: int) -> bytes:
    """A valid PNG signature and IHDR claiming width x height, with a tiny IDAT: a bomb."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


# --- decode_image -----------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "BMP", "GIF"])
def test_accepted_formats_decode_to_grayscale(fmt: str) -> None:
    image = Image.new("RGB", (40, 30), (250, 250, 250))
    image.paste((0, 0, 0), (10, 5, 20, 25))
    decoded = decode_image(encode(image, fmt))
    pixels = np.asarray(decoded)
    assert decoded.mode == "L" and decoded.size == (40, 30)
    assert pixels[15, 15] < 40 and pixels[2, 2] > 215


def test_exif_orientation_is_applied() -> None:
    image = Image.new("L", (60, 30), 255)
    image.paste(0, (0, 0, 10, 30))  # dark band on the left as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # the viewer must rotate 90 degrees clockwise
    decoded = np.asarray(decode_image(encode(image, "JPEG", exif=exif.tobytes())))
    assert decoded.shape == (60, 30)  # (H, W): turned upright
    assert decoded[:10].mean() < 60 and decoded[-10:].mean() > 200  # the band is now on top


def test_transparent_canvas_is_composited_on_white() -> None:
    rgba = np.zeros((50, 50, 4), dtype=np.uint8)  # transparent black...
    rgba[10:40, 22:28, 3] = 255  # ...with an opaque black stroke
    decoded = np.asarray(decode_image(encode(Image.fromarray(rgba, "RGBA"), "PNG")))
    assert decoded[0, 0] == 255 and decoded[25, 25] == 0


def test_white_ink_on_transparent_is_composited_on_black() -> None:
    rgba = np.zeros((50, 50, 4), dtype=np.uint8)
    rgba[10:40, 22:28] = 255
    decoded = np.asarray(decode_image(encode(Image.fromarray(rgba, "RGBA"), "PNG")))
    assert decoded[0, 0] == 0 and decoded[25, 25] == 255


def test_palette_transparency_and_first_gif_frame() -> None:
    first = Image.new("P", (30, 30), 0)
    first.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    first.paste(1, (10, 10, 20, 20))  # palette index 0 is transparent, 1 is red ink
    second = Image.new("P", (30, 30), 1)
    second.putpalette(first.getpalette() or [])
    data = encode(first, "GIF", save_all=True, append_images=[second], transparency=0)
    decoded = np.asarray(decode_image(data))
    assert decoded[0, 0] == 255  # transparent -> white paper, not black
    assert decoded[15, 15] < 128  # the first frame's ink, not the second frame's fill


def test_sixteen_bit_png_is_scaled_not_clipped() -> None:
    image = Image.fromarray(np.full((8, 8), 32768, dtype=np.uint16))
    assert abs(int(np.asarray(decode_image(encode(image, "PNG")))[0, 0]) - 128) <= 1


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # Pillow's own guard
@pytest.mark.parametrize("side", [100_000, 10_000, 5_000])
def test_decompression_bomb_is_refused_from_the_header(side: int) -> None:
    bomb = png_header_only(side, side)
    tracemalloc.start()
    with pytest.raises(ImageTooLargeError, match=r"more than [\d,]+ pixels|over the limit") as refused:
        decode_image(bomb)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert len(bomb) < 200 and peak < 5_000_000
    assert "DOS" not in str(refused.value) and "decompression bomb" not in str(refused.value)  # our own words


def jpeg_with_exif(payload: bytes) -> bytes:
    """A 64x64 JPEG with `payload` (starting b"Exif\\0\\0") as its APP1 segment."""
    plain = encode(Image.new("L", (64, 64), 255), "JPEG")
    return plain[:2] + b"\xff\xe1" + (len(payload) + 2).to_bytes(2, "big") + payload + plain[2:]


@pytest.mark.parametrize(
    "payload",
    [
        b"Exif\0\0" + b"\xff" * 40,  # not a TIFF structure
        b"Exif\0\0II*\0" + (0xFFFFFF00).to_bytes(4, "little") + bytes(20),  # first IFD far past the end
        b"Exif\0\0II*\0\x08\0\0\0\x05\0\x12\x01",  # five entries announced, none there
        b"Exif\0\0II*\0\x08\0\0\0\x01\0\x12\x01\x03\0\xff\xff\xff\x7f\x01\0\0\0\0\0\0\0",  # huge orientation
        b"Exif\0\0II*\0\x08\0\0\0\x01\0\x12\x01\x03\0\x01\0\0\0\x09\0\0\0\0\0\0\0",  # orientation 9
    ],
    ids=["not-tiff", "bad-offset", "truncated-ifd", "orientation-count", "orientation-9"],
)
def test_a_corrupt_exif_block_is_named(payload: bytes) -> None:
    """Pillow only warns about a damaged EXIF block (and ignores some silently); the orientation is
    then unknown, so the image is refused with a message that names the EXIF block."""
    with pytest.raises(InvalidImageError, match="EXIF metadata block is corrupt"):
        decode_image(jpeg_with_exif(payload))
    upright = b"Exif\0\0II*\0\x08\0\0\0\x01\0\x12\x01\x03\0\x01\0\0\0\x06\0\0\0\0\0\0\0"
    assert decode_image(jpeg_with_exif(upright)).size == (64, 64)  # a valid block: rotated, served


def test_pixel_limit_is_per_call() -> None:
    data = encode(Image.new("L", (200, 100), 255), "PNG")
    with pytest.raises(ImageTooLargeError, match="200x100 = 20,000 pixels, over the limit of 10,000"):
        decode_image(data, max_pixels=10_000)
    assert decode_image(data, max_pixels=20_000).size == (200, 100)


def test_huge_jpeg_is_decoded_at_reduced_scale() -> None:
    photo = Image.new("RGB", (4200, 2400), (230, 230, 225))
    photo.paste((20, 20, 20), (1500, 600, 1560, 1800))
    decoded = decode_image(encode(photo, "JPEG"))
    assert decoded.size == (2100, 1200)
    assert np.asarray(decoded)[600, 765] < 60  # the stroke, at half scale


def test_unsupported_format_is_named() -> None:
    tiff = encode(Image.new("L", (20, 20), 255), "TIFF")
    with pytest.raises(UnsupportedFormatError, match=r"^TIFF is not accepted; send PNG, JPEG, WebP, BMP or GIF$"):
        decode_image(tiff)
    jpeg = encode(Image.new("L", (20, 20), 255), "JPEG")
    with pytest.raises(UnsupportedFormatError, match="JPEG is not accepted; send PNG"):
        decode_image(jpeg, allowed_formats=("PNG",))


def test_a_refused_format_is_named_without_running_its_parser(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the signature is checked to name it: the parser of a refused format (where Pillow's
    security fixes keep landing) never sees the bytes."""
    parsed: list[bytes] = []

    def parser(fp: object, filename: object = None) -> Image.Image:
        parsed.append(b"called")
        raise SyntaxError("never reached")

    Image.init()
    monkeypatch.setitem(Image.OPEN, "EVIL", (parser, lambda prefix: prefix.startswith(b"EVIL")))
    monkeypatch.setattr(Image, "ID", [*Image.ID, "EVIL"])
    with pytest.raises(UnsupportedFormatError, match=r"^EVIL is not accepted"):
        decode_image(b"EVIL" + bytes(100))
    assert parsed == []


@pytest.mark.parametrize(
    "data",
    [b"", b"hello, this is text", b'{"image": "x"}', png_header_only(10, 10)[:20]],
    ids=["empty", "text", "json", "cut-header"],
)
def test_non_images_are_invalid(data: bytes) -> None:
    with pytest.raises(InvalidImageError, match="send"):
        decode_image(data)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_file_is_invalid(fmt: str) -> None:
    noise = np.random.default_rng(0).integers(0, 256, (120, 120), dtype=np.uint8)
    data = encode(Image.fromarray(noise), fmt)
    with pytest.raises(InvalidImageError, match="truncated or corrupt"):
        decode_image(data[: len(data) // 2])


def test_errors_are_value_errors_with_codes() -> None:
    for cls, code in [
        (InvalidImageError, "invalid_image"),
        (UnsupportedFormatError, "unsupported_format"),
        (ImageTooLargeError, "image_too_large"),
        (NoDigitError, "no_digit"),
    ]:
        assert issubclass(cls, ImageError) and issubclass(cls, ValueError) and cls.code == code


# --- mnist_style ------------------------------------------------------------------------------


def test_mnist_test_digits_pass_through_unchanged(mnist_test: tuple[np.ndarray, np.ndarray]) -> None:
    images = mnist_test[0][:2000]
    styled = np.stack([mnist_style(image) for image in images])
    assert styled.dtype == np.uint8 and styled.shape == images.shape
    assert np.array_equal(styled, images)


def test_dark_on_light_28x28_is_inverted(mnist_test: tuple[np.ndarray, np.ndarray]) -> None:
    digit = mnist_test[0][7]
    assert np.array_equal(mnist_style(255 - digit), digit)


@pytest.mark.parametrize("index", range(5))
def test_polarity_does_not_matter(mnist_test: tuple[np.ndarray, np.ndarray], index: int) -> None:
    drawn = drawn_digit(mnist_test, index)
    light_ink, dark_ink = mnist_style(drawn), mnist_style(255 - drawn)
    assert np.abs(light_ink.astype(int) - dark_ink.astype(int)).max() <= 2
    assert similarity(light_ink, mnist_test[0][index]) > 0.85


def test_result_has_mnist_framing(mnist_test: tuple[np.ndarray, np.ndarray]) -> None:
    styled = mnist_style(Image.fromarray(255 - drawn_digit(mnist_test, 3)))
    rows, cols = np.nonzero(styled)
    assert max(rows.max() - rows.min(), cols.max() - cols.min()) + 1 == 20
    mass = styled.astype(np.float64) / styled.sum()
    grid_rows, grid_cols = np.indices(styled.shape)
    assert abs((mass * grid_rows).sum() - 14) <= 0.5 and abs((mass * grid_cols).sum() - 14) <= 0.5
    assert styled.max() == 255 and styled[0].max() == 0


def test_noisy_photo_with_gradient_and_specks(mnist_test: tuple[np.ndarray, np.ndarray]) -> None:
    rng = np.random.default_rng(1)
    ink = drawn_digit(mnist_test, 4, side=240).astype(np.float64) / 255
    ramp = np.linspace(150, 230, 240)[None, :]  # light falling off across the page
    photo = ramp * (1 - 0.8 * ink) + rng.normal(0, 8, ink.shape)
    photo[10:12, 200:202] = 40  # a speck of dirt far from the digit
    styled = mnist_style(np.clip(photo, 0, 255).astype(np.uint8))
    assert similarity(styled, mnist_test[0][4]) > 0.85


def test_bold_digit_under_strong_uneven_light(mnist_test: tuple[np.ndarray, np.ndarray]) -> None:
    eight = int(np.nonzero(mnist_test[1] == 8)[0][0])
    big = Image.fromarray(mnist_test[0][eight]).resize((220, 220), Image.Resampling.BICUBIC)
    ink = np.asarray(big.filter(ImageFilter.MaxFilter(9)), dtype=np.float64) / 255  # a felt-tip pen
    ys, xs = np.mgrid[0:220, 0:220] / 220 - 0.5
    paper = 190 - 60 * (xs + ys) - 80 * (xs**2 + ys**2)  # light falling from 212 to 91 levels
    styled = mnist_style(np.clip(paper * (1 - 0.5 * ink), 0, 255).astype(np.uint8))
    assert similarity(styled, mnist_test[0][eight]) > 0.85


def test_hairline_strokes_are_thickened(mnist_test: tuple[np.ndarray, np.ndarray]) -> None:
    big = Image.fromarray(mnist_test[0][1]).resize((560, 560), Image.Resampling.BICUBIC)
    hairline = (np.asarray(big) > 250).astype(np.uint8) * 255  # strokes a few pixels wide at 560px
    styled = mnist_style(hairline)
    assert (styled > 127).sum() >= 0.5 * (mnist_test[0][1] > 127).sum()


@pytest.mark.parametrize(
    "picture",
    [
        np.full((50, 50), 255, np.uint8),
        np.full((300, 200), 90, np.uint8),
        np.zeros((28, 28), np.uint8),
        np.random.default_rng(0).normal(128, 20, (200, 200)).clip(0, 255).astype(np.uint8),
        np.random.default_rng(1).integers(0, 256, (64, 64)).astype(np.uint8),
    ],
    ids=["white", "gray", "black-28", "gaussian-noise", "uniform-noise"],
)
def test_no_ink_raises_no_digit(picture: np.ndarray) -> None:
    with pytest.raises(NoDigitError, match="no digit found"):
        mnist_style(picture)


def test_prepare_refuses_a_blank_upload() -> None:
    with pytest.raises(NoDigitError, match="no digit found"):
        prepare(encode(Image.new("RGB", (100, 100), (240, 240, 235)), "JPEG"))


def test_prepare_reads_a_canvas_png(mnist_test: tuple[np.ndarray, np.ndarray]) -> None:
    rgba = np.zeros((280, 280, 4), dtype=np.uint8)
    rgba[:, :, 3] = drawn_digit(mnist_test, 2)  # black strokes on a transparent canvas
    styled = prepare(encode(Image.fromarray(rgba, "RGBA"), "PNG"))
    assert styled.shape == (28, 28) and styled.dtype == np.uint8
    assert similarity(styled, mnist_test[0][2]) > 0.85


# --- anything a client sends ends in a result or an ImageError, never another exception -------


@settings(max_examples=150, deadline=None)
@given(picture=arrays(np.uint8, st.tuples(st.integers(1, 64), st.integers(1, 64)), elements=st.integers(0, 255)))
def test_any_picture_gives_a_digit_or_no_digit(picture: np.ndarray) -> None:
    try:
        styled = mnist_style(picture)
    except NoDigitError:
        return
    assert styled.shape == (28, 28) and styled.dtype == np.uint8


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_damaged_files_raise_image_errors_only(data: st.DataObject) -> None:
    fmt = data.draw(st.sampled_from(["PNG", "JPEG", "WEBP", "BMP", "GIF"]))
    noise = np.random.default_rng(0).integers(0, 256, (24, 32, 3), dtype=np.uint8)
    damaged = bytearray(encode(Image.fromarray(noise), fmt))
    for _ in range(data.draw(st.integers(1, 4))):
        damaged[data.draw(st.integers(0, len(damaged) - 1))] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(1, len(damaged)))
    try:
        styled = prepare(bytes(damaged[:cut]))
    except ImageError:
        return
    assert styled.shape == (28, 28) and styled.dtype == np.uint8
