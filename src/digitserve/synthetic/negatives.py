"""Things people draw or upload that are not digits, made deterministically from a seed.

Six kinds, each drawn on a 128x128 canvas with a hand's wobble and then shown to the model the way
the server would show it: half as canvas drawings, half as photos or scans of paper
(`render.as_photo`), all through the server's preprocessing.

- `letters`: one to three letters or symbols in 27 fonts and weights (the DejaVu, STIX and
  Computer Modern faces matplotlib ships), rotated and scaled;
- `shapes`: triangles, squares, stars, hearts, arrows, houses, smileys, spirals, zigzags, ...;
- `scribbles`: smooth pen paths through random points, crossing themselves;
- `strokes`: several unrelated pen strokes of different widths;
- `textures`: stripes, checks, dots, hatching and blotches that fill most of the frame;
- `clutter`: many small marks scattered over the frame.

Shapes that are digits in other hands are left out: no lone circle or ellipse (0), no lone
straight line (1), and no letters or symbols that are read as digits (O, o, I, l, i, j, S, s, Z, z,
B, b, G, g, q, y, Θ, δ, ε, $, !, ...).

Splits never share a seed, and the held-out split also uses fonts that train and validation
never see (`HELD_OUT_FONTS`), so its rate says how the rule carries to new material.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from digitserve.imaging.decode import NoDigitError
from digitserve.synthetic.render import (
    CANVAS,
    SUPERSAMPLE,
    Canvas,
    Point,
    as_canvas_drawing,
    as_photo,
    densify,
    smooth_curve,
    wobble,
)
from digitserve.synthetic.shapes import regular, shape_pieces

Split = Literal["train", "validation", "held-out"]
SPLIT_SEEDS: dict[str, int] = {"train": 1, "validation": 2, "held-out": 3}
KINDS = ("letters", "shapes", "scribbles", "strokes", "textures", "clutter")
# How often each kind is drawn: letters and doodles are what people try first.
KIND_WEIGHTS = np.array([0.3, 0.22, 0.16, 0.1, 0.1, 0.12])

# Letters and symbols no one reads as a digit (see the module docstring for those left out).
GLYPHS = "ACEFHKMNPRUVWXYacdefhkmnprtuvwx" + "ΔΛΞΠΣΦΨΩαγλμπφψω" + "#@&%*+={}<>?€£¥♥♦♣♠★☺✓✗☂☀♪"
FONT_FILES = (
    "DejaVuSans.ttf",
    "DejaVuSans-Bold.ttf",
    "DejaVuSans-Oblique.ttf",
    "DejaVuSans-BoldOblique.ttf",
    "DejaVuSansMono.ttf",
    "DejaVuSansMono-Bold.ttf",
    "DejaVuSansMono-Oblique.ttf",
    "DejaVuSerif.ttf",
    "DejaVuSerif-Bold.ttf",
    "DejaVuSerif-Italic.ttf",
    "STIXGeneral.ttf",
    "STIXGeneralBol.ttf",
    "STIXGeneralItalic.ttf",
    "STIXNonUni.ttf",
    "STIXNonUniBol.ttf",
    "cmr10.ttf",
    "cmb10.ttf",
    "cmti10.ttf",
    "cmss10.ttf",
    "cmtt10.ttf",
    "cmmi10.ttf",
)
HELD_OUT_FONTS = (
    "DejaVuSerif-BoldItalic.ttf",
    "DejaVuSansMono-BoldOblique.ttf",
    "STIXGeneralBolIta.ttf",
    "STIXNonUniIta.ttf",
    "DejaVuSansDisplay.ttf",
    "DejaVuSerifDisplay.ttf",
)


@dataclass(frozen=True)
class NegativeSet:
    images: np.ndarray  # (N, 28, 28) uint8, preprocessed as the server does
    kinds: np.ndarray  # (N,) index into KINDS
    photo: np.ndarray  # (N,) bool: rendered as a photo or scan (else a canvas drawing)

    def __len__(self) -> int:
        return len(self.images)


def font_dir() -> Path:
    try:
        import matplotlib
    except ImportError:
        raise RuntimeError("the negative set's letters use matplotlib's fonts: install digitserve[train]") from None
    return Path(matplotlib.get_data_path()) / "fonts" / "ttf"


@cache
def _font(name: str, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(str(font_dir() / name), size)


def fonts_for(split: Split) -> tuple[str, ...]:
    return FONT_FILES + HELD_OUT_FONTS if split == "held-out" else FONT_FILES


# --- the kinds ---------------------------------------------------------------------------------


def _pen(rng: np.random.Generator) -> float:
    return float(rng.uniform(3, 12))


def draw_letters(rng: np.random.Generator, canvas: Canvas, fonts: tuple[str, ...]) -> None:
    count = int(rng.choice([1, 1, 1, 2, 3]))
    text = "".join(GLYPHS[int(i)] for i in rng.integers(0, len(GLYPHS), count))
    font = fonts[int(rng.integers(0, len(fonts)))]
    size = max(int(rng.integers(60, 120)) * SUPERSAMPLE // count, 28 * SUPERSAMPLE)
    side = CANVAS * SUPERSAMPLE
    layer = Image.new("L", (side * 2, side * 2), 0)
    draw = ImageDraw.Draw(layer)
    weight = int(rng.choice([0, 0, 1, 2, 4]))
    draw.text((side, side), text, fill=255, font=_font(font, size), anchor="mm", stroke_width=weight, stroke_fill=255)
    layer = layer.rotate(float(rng.uniform(-25, 25)), resample=Image.Resampling.BILINEAR)
    box = layer.getbbox()
    if box is None:
        return
    glyph = layer.crop(box)
    scale = min(1.0, 0.85 * side / max(glyph.size))
    glyph = glyph.resize((max(1, int(glyph.width * scale)), max(1, int(glyph.height * scale))))
    out = Image.new("L", (side, side), 0)
    out.paste(glyph, ((side - glyph.width) // 2, (side - glyph.height) // 2))
    canvas.paste(out)


def draw_shapes(rng: np.random.Generator, canvas: Canvas, fonts: tuple[str, ...]) -> None:
    pen = _pen(rng)
    for points, closed in shape_pieces(rng):
        canvas.stroke(wobble(rng, densify(points, closed=closed), pen * 0.25), pen)


def draw_scribbles(rng: np.random.Generator, canvas: Canvas, fonts: tuple[str, ...]) -> None:
    n = int(rng.integers(7, 18))
    points = [(float(x), float(y)) for x, y in rng.uniform(12, CANVAS - 12, (n, 2))]
    canvas.stroke(smooth_curve(points), _pen(rng))


def draw_strokes(rng: np.random.Generator, canvas: Canvas, fonts: tuple[str, ...]) -> None:
    for _ in range(int(rng.integers(3, 7))):
        n = int(rng.integers(2, 5))
        points = [(float(x), float(y)) for x, y in rng.uniform(10, CANVAS - 10, (n, 2))]
        canvas.stroke(smooth_curve(points), float(rng.uniform(2, 14)))


def draw_textures(rng: np.random.Generator, canvas: Canvas, fonts: tuple[str, ...]) -> None:
    kind = int(rng.integers(0, 5))
    margin = float(rng.uniform(4, 24))
    lo, hi = margin, CANVAS - margin
    pen = float(rng.uniform(2, 7))
    if kind in (0, 1):  # stripes, or hatching (two directions)
        spacing = float(rng.uniform(8, 20))
        for direction in range(1 + kind):
            angle = float(rng.uniform(0, np.pi)) + direction * np.pi / 2
            for k in np.arange(-CANVAS, CANVAS, spacing):
                line = _clip_line(k, angle, lo, hi)
                if line:
                    canvas.stroke(line, pen)
    elif kind == 2:  # checks
        cells = int(rng.integers(3, 8))
        size = (hi - lo) / cells
        for i in range(cells):
            for j in range(cells):
                if (i + j) % 2 == 0:
                    x, y = lo + i * size, lo + j * size
                    canvas.polygon([(x, y), (x + size, y), (x + size, y + size), (x, y + size)])
    elif kind == 3:  # dots on a grid
        cells = int(rng.integers(4, 9))
        size = (hi - lo) / cells
        for i in range(cells):
            for j in range(cells):
                canvas.dot((lo + (i + 0.5) * size, lo + (j + 0.5) * size), size * float(rng.uniform(0.15, 0.4)))
    else:  # blotches: smoothed noise, thresholded
        field = rng.normal(size=(8, 8))
        big = np.asarray(
            Image.fromarray(field.astype(np.float32), mode="F").resize((CANVAS, CANVAS), Image.Resampling.BICUBIC)
        )
        mask = big > np.quantile(big, float(rng.uniform(0.5, 0.75)))
        canvas.paste(Image.fromarray((mask * 255).astype(np.uint8)).resize(canvas.image.size))


def _clip_line(offset: float, angle: float, lo: float, hi: float) -> list[Point] | None:
    """The part inside the square [lo, hi]^2 of the line at `offset` from the centre, normal `angle`."""
    c = CANVAS / 2
    nx, ny = np.cos(angle), np.sin(angle)
    px, py = c + offset * nx, c + offset * ny
    ts = np.linspace(-2 * CANVAS, 2 * CANVAS, 801)
    xs, ys = px - ny * ts, py + nx * ts
    inside = (xs >= lo) & (xs <= hi) & (ys >= lo) & (ys <= hi)
    if inside.sum() < 2:
        return None
    idx = np.flatnonzero(inside)
    return [(float(xs[idx[0]]), float(ys[idx[0]])), (float(xs[idx[-1]]), float(ys[idx[-1]]))]


def draw_clutter(rng: np.random.Generator, canvas: Canvas, fonts: tuple[str, ...]) -> None:
    for _ in range(int(rng.integers(6, 20))):
        x, y = (float(v) for v in rng.uniform(8, CANVAS - 8, 2))
        mark = int(rng.integers(0, 3))
        if mark == 0:
            canvas.dot((x, y), float(rng.uniform(2, 6)))
        elif mark == 1:
            a = float(rng.uniform(0, np.pi))
            length = float(rng.uniform(6, 18))
            canvas.stroke([(x, y), (x + length * np.cos(a), y + length * np.sin(a))], float(rng.uniform(2, 5)))
        else:
            canvas.stroke(densify(regular(8, x, y, float(rng.uniform(3, 8)), 0), closed=True), 2.5)


DRAWERS: dict[str, Callable[[np.random.Generator, Canvas, tuple[str, ...]], None]] = {
    "letters": draw_letters,
    "shapes": draw_shapes,
    "scribbles": draw_scribbles,
    "strokes": draw_strokes,
    "textures": draw_textures,
    "clutter": draw_clutter,
}


def make_one(rng: np.random.Generator, kind: str, photo: bool, fonts: tuple[str, ...]) -> np.ndarray:
    """One negative as the model sees it: (28, 28) uint8. NoDigitError if nothing was drawn."""
    canvas = Canvas()
    DRAWERS[kind](rng, canvas, fonts)
    ink = canvas.ink()
    return as_photo(rng, ink) if photo else as_canvas_drawing(ink)


def make_negatives(split: Split, count: int, seed: int = 0) -> NegativeSet:
    """`count` negatives of one split, the same for the same (split, count, seed) on any machine."""
    fonts = fonts_for(split)
    images = np.empty((count, 28, 28), np.uint8)
    kinds = np.empty(count, np.int64)
    photo = np.empty(count, bool)
    weights = KIND_WEIGHTS / KIND_WEIGHTS.sum()
    for i in range(count):
        # one generator per image: image i is the same whatever `count` is
        rng = np.random.default_rng([SPLIT_SEEDS[split], seed, i, zlib.crc32(split.encode())])
        while True:
            kind = int(rng.choice(len(KINDS), p=weights))
            is_photo = bool(rng.random() < 0.5)
            try:
                images[i] = make_one(rng, KINDS[kind], is_photo, fonts)
                break
            except NoDigitError:  # a drawing the preprocessing finds no ink in: draw another
                continue
        kinds[i], photo[i] = kind, is_photo
    return NegativeSet(images, kinds, photo)
