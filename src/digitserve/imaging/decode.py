"""Decoding uploaded image bytes safely: format allow-list, pixel limit before decoding, one frame.

Every refusal is an `ImageError` whose message says what is wrong and what to send instead.
The HTTP layer maps them (suggested): `UnsupportedFormatError` -> 415, `InvalidImageError`,
`ImageTooLargeError` and `NoDigitError` -> 422. A body that is too many *bytes* is the
server's own limit (413), checked before any of this runs.

Pillow's own decompression-bomb guard (`Image.MAX_IMAGE_PIXELS`, a process-wide setting) is
left at its default as a second line of defence; the per-call `max_pixels` limit here is
checked from the header, before any pixel is decoded, and is what callers should tune.
"""

from __future__ import annotations

import io
import re
import warnings
from collections.abc import Collection

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

DEFAULT_MAX_PIXELS = 16_000_000
ALLOWED_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF")
# JPEGs are decoded at a reduced scale (DCT scaling, nearly free) when both sides exceed this:
# a digit needs a few hundred pixels, not a 12-megapixel photo.
JPEG_DRAFT_SIDE = 1024
EXIF_ORIENTATION = 0x0112
_EXIF_WARNING = re.compile(r"EXIF|Tag data|tag \d+", re.IGNORECASE)
_FORMAT_NAMES = {"PNG": "PNG", "JPEG": "JPEG", "WEBP": "WebP", "BMP": "BMP", "GIF": "GIF"}


class ImageError(ValueError):
    """An image that cannot become model input. `code` names the problem for API errors."""

    code = "invalid_image"


class InvalidImageError(ImageError):
    """The bytes are not a readable image (not an image at all, truncated or corrupt)."""

    code = "invalid_image"


class UnsupportedFormatError(ImageError):
    """A real image, but in a format the service does not accept (TIFF, PSD, ICO, ...)."""

    code = "unsupported_format"


class TooManyPixelsError(ImageError):
    """A request's images together hold more pixels than one request may (a 413, not a 422)."""

    code = "payload_too_large"


class ImageTooLargeError(ImageError):
    """More pixels than the limit, refused from the header before anything is decoded."""

    code = "image_too_large"


class NoDigitError(ImageError):
    """The image decodes but holds no ink: blank, uniform, or only noise."""

    code = "no_digit"


def _format_list(formats: Collection[str]) -> str:
    names = [_FORMAT_NAMES.get(f, f) for f in formats]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]


def _open(data: bytes, allowed: Collection[str]) -> Image.Image:
    """Parse the header only; name the format in the error when it is a real but refused one."""
    if not data:
        raise InvalidImageError("the image is empty (0 bytes); send a PNG, JPEG, WebP, BMP or GIF file")
    try:
        return Image.open(io.BytesIO(data), formats=list(allowed))
    except Image.DecompressionBombError:
        raise ImageTooLargeError(_bomb_message()) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError):
        refused = _identify_any(data)
        if refused is not None and refused not in allowed:  # an allowed format that fails to parse is corrupt
            raise UnsupportedFormatError(f"{refused} is not accepted; send {_format_list(allowed)}") from None
        raise InvalidImageError(
            f"the bytes are not a {_format_list(allowed)} image; "
            "send the image file itself (not a path or URL), or a 28x28 CSV of pixel values"
        ) from None


def _identify_any(data: bytes) -> str | None:
    """The format whose signature `data` starts with, for the error message only.

    Only each plugin's signature check runs, on the first 16 bytes (as `Image.open` does before
    parsing): a refused format's header parser never sees the bytes, so the allow-list also
    keeps out the parser bugs of the formats it refuses.
    """
    Image.init()
    prefix = data[:16]
    for fmt in Image.ID:
        accept = Image.OPEN[fmt][1]
        try:
            if accept is not None and accept(prefix):
                return fmt
        except Exception:  # a signature check that chokes on these bytes: not this format
            continue
    return None


def _bomb_message() -> str:
    limit = 2 * (Image.MAX_IMAGE_PIXELS or 0)
    return (
        f"the image's header declares more than {limit:,} pixels, far more than a digit needs; "
        "scale it down (a few hundred pixels a side is plenty)"
    )


def check_size(width: int, height: int, max_pixels: int) -> None:
    """InvalidImageError for an image without pixels, ImageTooLargeError above `max_pixels`."""
    if width < 1 or height < 1:
        raise InvalidImageError(f"the image is {width}x{height} pixels: it has no pixels to read")
    if width * height > max_pixels:
        raise ImageTooLargeError(
            f"the image is {width}x{height} = {width * height:,} pixels, over the limit of "
            f"{max_pixels:,}; scale it down (a digit needs a few hundred pixels a side)"
        )


def _load_first_frame(im: Image.Image) -> Image.Image:
    try:
        im.seek(0)  # GIF / animated WebP: the first frame only
        if im.format in ("JPEG", "MPO") and min(im.size) > 2 * JPEG_DRAFT_SIDE:
            im.draft(im.mode, (JPEG_DRAFT_SIDE, JPEG_DRAFT_SIDE))
        im.load()
    except Image.DecompressionBombError:
        raise ImageTooLargeError(_bomb_message()) from None
    except MemoryError:
        raise
    except Exception:  # hostile bytes can fail inside any plugin: all mean "corrupt"
        raise InvalidImageError(
            f"the {_FORMAT_NAMES.get(im.format or '', im.format)} image is truncated or corrupt: its pixels "
            "could not be read; send the complete file"
        ) from None
    return im


def _upright(im: Image.Image, exif_damaged: bool) -> Image.Image:
    """Rotated as its EXIF orientation says. An image whose EXIF block cannot be read is refused:
    its orientation is unknown, and a digit read sideways is a confident wrong answer."""
    raw = im.info.get("exif")
    if isinstance(raw, bytes) and raw and raw.removeprefix(b"Exif\x00\x00")[:4] not in (b"II*\x00", b"MM\x00*"):
        exif_damaged = True  # not a TIFF structure at all: Pillow ignores it without a warning
    orientation = 1 if exif_damaged else im.getexif().get(EXIF_ORIENTATION, 1)
    if exif_damaged or orientation not in range(1, 9):
        raise InvalidImageError(
            f"the {_FORMAT_NAMES.get(im.format or '', im.format)} image's EXIF metadata block is corrupt, "
            "so which way up it is cannot be known; re-save the image without EXIF metadata"
        )
    return ImageOps.exif_transpose(im) or im


def _to_gray(im: Image.Image) -> Image.Image:
    """Grayscale 'L'; transparency is composited on white, or on black for light-on-clear ink."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit PNG: scale, do not clip
        return Image.fromarray((np.asarray(im, dtype=np.float64) / 257.0).clip(0, 255).astype(np.uint8))
    has_alpha = im.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in im.info
    if not has_alpha:
        return im.convert("L")
    rgba = im.convert("RGBA")
    alpha = np.asarray(rgba.getchannel("A"), dtype=np.float64)
    gray = rgba.convert("L")
    if alpha.min() == 255:
        return gray
    visible = np.asarray(gray, dtype=np.float64)
    light_ink = (visible * alpha).sum() / max(alpha.sum(), 1.0) > 127.5
    background = Image.new("L", im.size, 0 if light_ink else 255)
    background.paste(gray, mask=rgba.getchannel("A"))
    return background


def decode_image(
    data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS, allowed_formats: Collection[str] = ALLOWED_FORMATS
) -> Image.Image:
    """Bytes -> a grayscale ('L') PIL image, upright per EXIF, transparency flattened.

    The format comes from the header (never the file name) and must be in `allowed_formats`;
    the size comes from the header too and must be at most `max_pixels`, so a decompression
    bomb is refused before its pixels are allocated. GIFs give their first frame. JPEGs more
    than 2048 px on both sides come back reduced 2-8x by DCT scaling (at least 1024 px a side).
    """
    with warnings.catch_warnings(record=True) as caught:  # Pillow reports damaged EXIF only by warning
        warnings.simplefilter("always")
        im = _open(data, allowed_formats)
        with im:
            check_size(*im.size, max_pixels)
            frame = _load_first_frame(im)
            damaged = any(_EXIF_WARNING.search(str(w.message)) for w in caught)
            return _to_gray(_upright(frame, damaged))


def header_size(data: bytes, allowed_formats: Collection[str] = ALLOWED_FORMATS) -> tuple[int, int]:
    """(width, height) from the header alone, (0, 0) when the header cannot be read: what
    decoding the image will cost, known before any pixel is decoded."""
    try:
        with Image.open(io.BytesIO(data), formats=list(allowed_formats)) as im:
            width, height = im.size
    except Exception:  # unreadable: decoding refuses it at once, at no cost worth counting
        return 0, 0
    return max(0, width), max(0, height)


# The segments a camera's JPEG holds before its frame header: APPn, COM, DQT, DHT, DAC, DRI.
_JPEG_SEGMENTS = frozenset((*range(0xE0, 0xF0), 0xFE, 0xDB, 0xC4, 0xCC, 0xDD))
_JPEG_SEQUENTIAL = frozenset((0xC0, 0xC1))  # baseline and extended sequential Huffman frames
MAX_JPEG_SEGMENTS = 64  # segments walked before the size: phone photos have under 20


def jpeg_header_size(data: bytes) -> tuple[int, int]:
    """(width, height) of a sequential JPEG (what cameras write) from its frame header, found by
    walking segment lengths without reading what they hold: a photo with 60 KB of EXIF costs what
    a bare one does (Pillow's header parse reads it). (0, 0) -- unknown -- for anything else: a
    progressive frame (its decoding grows with its scans), a marker that is not a segment a
    camera writes before its frame, more than `MAX_JPEG_SEGMENTS`, or truncated bytes. A file
    whose walk and Pillow disagree is refused before decoding (`checked_large_size`)."""
    if data[:2] != b"\xff\xd8":
        return 0, 0
    at = 2
    for _ in range(MAX_JPEG_SEGMENTS):
        if len(data) < at + 4 or data[at] != 0xFF:
            return 0, 0
        marker, length = data[at + 1], int.from_bytes(data[at + 2 : at + 4], "big")
        if length < 2:
            return 0, 0
        if marker in _JPEG_SEQUENTIAL:
            if length < 11 or len(data) < at + 9:
                return 0, 0
            height, width = int.from_bytes(data[at + 5 : at + 7], "big"), int.from_bytes(data[at + 7 : at + 9], "big")
            return width, height
        if marker not in _JPEG_SEGMENTS:
            return 0, 0
        at += 2 + length
    return 0, 0


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def large_header_size(data: bytes) -> tuple[int, int]:
    """(width, height) of a file too large for Pillow's header parse on the event loop, (0, 0) when
    unknown: a JPEG's from `jpeg_header_size`, a PNG's from its IHDR (always its first chunk)."""
    if data[:8] == _PNG_SIGNATURE and data[12:16] == b"IHDR" and len(data) >= 24:
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    return jpeg_header_size(data)


def checked_large_size(data: bytes, width: int, height: int) -> None:
    """InvalidImageError when a file whose size `large_header_size` found is, to Pillow, another
    size: a file built to be priced as a thumbnail and decoded as a photo."""
    found = large_header_size(data)
    if found != (0, 0) and found != (width, height):
        raise InvalidImageError(
            f"the image's headers disagree on its size ({found[0]}x{found[1]} and {width}x{height}); "
            "re-save it as a plain PNG or JPEG"
        )
