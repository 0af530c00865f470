"""Photo- and canvas-like renderings of MNIST test digits: a realistic, reproducible test set.

Photos: dark pen or pencil ink on tinted paper under uneven light, 60-400 px, off-centre,
rotated up to 10 degrees, a few specks of dirt, blurred, noisy, saved as RGB JPEG (q 50-95).
Canvas drawings: solid strokes of varying width, black on white, black on transparent, or
white on black, saved as PNG. Everything follows from the seed, so results are comparable.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageFilter

from digitserve.imaging.mnist import NoDigitError, prepare

CANVAS_STYLES = ("black_on_white", "black_on_transparent", "white_on_black")
INKS = ((25, 25, 30), (30, 40, 120), (90, 90, 95), (55, 35, 30))  # black, blue pen, pencil, brown


def _ink_alpha(digit: np.ndarray, field_px: int, angle: float, sharpness: float, threshold: float) -> np.ndarray:
    """The 28x28 digit scaled to `field_px`, rotated, with pen-like edges: alpha in [0, 1]."""
    up = Image.fromarray(np.asarray(digit, dtype=np.uint8)).resize((field_px, field_px), Image.Resampling.BICUBIC)
    if angle:
        up = up.rotate(angle, resample=Image.Resampling.BICUBIC, expand=True)
    alpha = np.asarray(up, dtype=np.float32) / 255.0
    alpha = np.clip((alpha - threshold) * sharpness + 0.5, 0, 1)
    rows, cols = np.nonzero(alpha > 0)
    return alpha[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]


def _place(alpha: np.ndarray, height: int, width: int, rng: np.random.Generator, spread: float) -> np.ndarray:
    """`alpha` pasted into a (height, width) layer at a random offset (spread 1: anywhere)."""
    layer = np.zeros((height, width), dtype=np.float32)
    free_y, free_x = height - alpha.shape[0], width - alpha.shape[1]
    top = round(free_y / 2 + rng.uniform(-spread, spread) * free_y / 2)
    left = round(free_x / 2 + rng.uniform(-spread, spread) * free_x / 2)
    layer[top : top + alpha.shape[0], left : left + alpha.shape[1]] = alpha
    return layer


def _paper(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """(H, W, 3) tinted paper lit unevenly: a linear gradient and a vignette."""
    tint = rng.uniform(165, 245) + rng.normal(0, 8, 3) + np.array([6.0, 2.0, -6.0])
    ys, xs = np.mgrid[0:height, 0:width]
    y, x = ys / height - 0.5, xs / width - 0.5
    theta = rng.uniform(0, 2 * np.pi)
    light = 1 - rng.uniform(0, 0.3) * (0.5 + np.cos(theta) * x + np.sin(theta) * y)
    light *= 1 - rng.uniform(0, 0.25) * (x * x + y * y) * 2
    return np.clip(tint[None, None, :] * light[:, :, None], 0, 255)


def _specks(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """A few small dark dots (dust, pen marks) as an alpha layer."""
    layer = np.zeros((height, width), dtype=np.float32)
    for _ in range(int(rng.integers(0, 5))):
        r = int(rng.integers(0, 2))
        y, x = int(rng.integers(r, height - r)), int(rng.integers(r, width - r))
        layer[y - r : y + r + 1, x - r : x + r + 1] = rng.uniform(0.3, 0.9)
    return layer


def make_photo(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    """One MNIST digit (28x28 uint8, white on black) as a phone-photo-like RGB JPEG."""
    height, width = (int(v) for v in rng.integers(60, 401, size=2))
    field_px = round(min(height, width) * rng.uniform(0.45, 0.85))  # the 28px field; the digit is 20/28 of it
    alpha = _ink_alpha(digit, field_px, rng.uniform(-10, 10), rng.uniform(1.5, 3.0), rng.uniform(0.3, 0.5))
    ink = _place(alpha, height, width, rng, spread=1.0) * rng.uniform(0.8, 1.0)
    ink = np.maximum(ink, _specks(height, width, rng))
    color = np.asarray(INKS[int(rng.integers(len(INKS)))], dtype=np.float64) + rng.normal(0, 8, 3)
    rgb = _paper(height, width, rng) * (1 - ink[:, :, None]) + color * ink[:, :, None]
    image = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8), mode="RGB")
    image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.0, 1.0) * max(1.0, min(height, width) / 150)))
    noisy = np.asarray(image, dtype=np.float64) + rng.normal(0, rng.uniform(2, 10), (height, width, 3))
    out = io.BytesIO()
    Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(out, "JPEG", quality=int(rng.integers(50, 96)))
    return out.getvalue()


def make_phone_upload(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    """`make_photo` as a phone uploads it: 90-260 px on its longer side, quality 90-95, and an EXIF
    block as a camera writes (orientation, model, 16-40 KB of maker notes), so the file is past
    the 16 KB a header is read from on the event loop."""
    photo = Image.open(io.BytesIO(make_photo(digit, rng)))
    side = int(rng.integers(90, 261))
    scale = side / max(photo.size)
    photo = photo.resize((max(28, round(photo.width * scale)), max(28, round(photo.height * scale))))
    exif = Image.Exif()
    exif[0x0112] = 1  # orientation: upright
    exif[0x0110] = "Phone 12"  # camera model
    exif[0x927C] = rng.integers(0, 256, int(rng.integers(16_500, 40_000)), dtype=np.uint8).tobytes()  # maker notes
    out = io.BytesIO()
    photo.save(out, "JPEG", quality=int(rng.integers(90, 96)), exif=exif)
    return out.getvalue()


def make_canvas(digit: np.ndarray, rng: np.random.Generator, style: str = "black_on_white") -> bytes:
    """One MNIST digit as a browser-canvas-like drawing (PNG): solid strokes, varying width."""
    if style not in CANVAS_STYLES:
        raise ValueError(f"unknown canvas style {style!r}; choose one of {', '.join(CANVAS_STYLES)}")
    side = int(rng.integers(200, 401))
    field_px = round(side * rng.uniform(0.6, 1.0))
    alpha = _ink_alpha(digit, field_px, 0.0, 6.0, rng.uniform(0.3, 0.7))  # higher threshold: thinner pen
    ink = (_place(alpha, side, side, rng, spread=0.3) * 255).astype(np.uint8)
    out = io.BytesIO()
    if style == "black_on_transparent":
        rgba = np.zeros((side, side, 4), dtype=np.uint8)
        rgba[:, :, 3] = ink
        Image.fromarray(rgba, mode="RGBA").save(out, "PNG")
    else:
        Image.fromarray(ink if style == "white_on_black" else 255 - ink, mode="L").save(out, "PNG")
    return out.getvalue()


def make_photo_set(
    n: int, seed: int = 0, canvas_every: int = 10, digits: tuple[np.ndarray, np.ndarray] | None = None
) -> list[tuple[bytes, int]]:
    """`n` (image bytes, label) pairs from a fixed-seed sample of the MNIST test set.

    Every `canvas_every`-th image is a canvas drawing (the styles in turn), the rest photos.
    `digits` = (images, labels) replaces the official test set (tests use small arrays).
    """
    if digits is None:
        from digitserve.data import load_mnist

        test = load_mnist("test")
        digits = (test.images, test.labels)
    images, labels = digits
    rng = np.random.default_rng(seed)
    chosen: Sequence[int] = rng.choice(len(labels), size=min(n, len(labels)), replace=False).tolist()
    samples = []
    for k, i in enumerate(chosen):
        if canvas_every and k % canvas_every == canvas_every - 1:
            style = CANVAS_STYLES[(k // canvas_every) % len(CANVAS_STYLES)]
            samples.append((make_canvas(images[i], rng, style), int(labels[i])))
        else:
            samples.append((make_photo(images[i], rng), int(labels[i])))
    return samples


def prepare_samples(samples: Sequence[tuple[bytes, int]]) -> tuple[np.ndarray, np.ndarray]:
    """Every sample through `prepare`: (N, 28, 28) uint8 and a flag per image refused as NoDigitError.

    A refused image gets a blank field; scorers should count it as an error via the flag.
    """
    prepared, refused = [], []
    for data, _ in samples:
        try:
            prepared.append(prepare(data))
            refused.append(False)
        except NoDigitError:
            prepared.append(np.zeros((28, 28), np.uint8))
            refused.append(True)
    return np.stack(prepared), np.array(refused, dtype=bool)
