"""Drawing helpers shared by the synthetic sets: hand-like strokes on a canvas, and the two ways a
picture reaches the server -- a canvas drawing (light ink on dark) or a photo or scan (dark ink on
paper, uneven light, sensor noise, blur, JPEG) -- ending in the server's preprocessing."""

from __future__ import annotations

import io
import itertools
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from digitserve.imaging.mnist import mnist_style, prepare

CANVAS = 128  # side of the working canvas, in pixels
SUPERSAMPLE = 2  # strokes are drawn at twice the size and box-filtered down: anti-aliased edges

Point = tuple[float, float]


class Canvas:
    """A square ink canvas (0 = no ink, 1 = full ink), drawn at SUPERSAMPLE x its final size."""

    def __init__(self, side: int = CANVAS) -> None:
        self.side = side
        self.image = Image.new("L", (side * SUPERSAMPLE, side * SUPERSAMPLE), 0)
        self.draw = ImageDraw.Draw(self.image)

    def _scaled(self, points: Sequence[Point]) -> list[Point]:
        return [(x * SUPERSAMPLE, y * SUPERSAMPLE) for x, y in points]

    def stroke(self, points: Sequence[Point], width: float, ink: int = 255) -> None:
        """A polyline with round joints and caps, as a pen draws it."""
        scaled = self._scaled(points)
        w = max(1, round(width * SUPERSAMPLE))
        if len(scaled) > 1:
            self.draw.line(scaled, fill=ink, width=w, joint="curve")
        r = w / 2
        for x, y in (scaled[0], scaled[-1]):
            self.draw.ellipse((x - r, y - r, x + r, y + r), fill=ink)

    def polygon(self, points: Sequence[Point], ink: int = 255) -> None:
        self.draw.polygon(self._scaled(points), fill=ink)

    def dot(self, centre: Point, radius: float, ink: int = 255) -> None:
        x, y = centre[0] * SUPERSAMPLE, centre[1] * SUPERSAMPLE
        r = radius * SUPERSAMPLE
        self.draw.ellipse((x - r, y - r, x + r, y + r), fill=ink)

    def paste(self, ink: Image.Image) -> None:
        """Add an 'L' image of ink (e.g. rendered text) the size of the supersampled canvas."""
        self.image = Image.fromarray(np.maximum(np.asarray(self.image), np.asarray(ink)))
        self.draw = ImageDraw.Draw(self.image)

    def ink(self) -> np.ndarray:
        """float32 (side, side) in [0, 1]."""
        small = self.image.resize((self.side, self.side), Image.Resampling.BOX)
        return np.asarray(small, np.float32) / 255.0


def wobble(rng: np.random.Generator, points: Sequence[Point], amount: float) -> list[Point]:
    """A hand's unsteadiness: each point moved by up to `amount` pixels, smoothly along the path."""
    n = len(points)
    noise = rng.normal(0, amount, (n, 2))
    if n > 2:  # smooth the jitter so lines bend instead of zig-zagging
        noise = (np.roll(noise, 1, 0) + 2 * noise + np.roll(noise, -1, 0)) / 4
    return [(x + dx, y + dy) for (x, y), (dx, dy) in zip(points, noise.tolist(), strict=True)]


def densify(points: Sequence[Point], step: float = 4.0, closed: bool = False) -> list[Point]:
    """More points along the same polyline (so `wobble` bends straight edges)."""
    path = list(points) + ([points[0]] if closed else [])
    out: list[Point] = []
    for (x0, y0), (x1, y1) in itertools.pairwise(path):
        n = max(1, int(np.hypot(x1 - x0, y1 - y0) / step))
        out += [(x0 + (x1 - x0) * t / n, y0 + (y1 - y0) * t / n) for t in range(n)]
    out.append(path[-1])
    return out


def smooth_curve(points: Sequence[Point], per_segment: int = 8) -> list[Point]:
    """A Catmull-Rom spline through the points: a pen's path rather than a polygon."""
    p = np.asarray(points, np.float64)
    if len(p) < 3:
        return [(float(x), float(y)) for x, y in p.tolist()]
    p = np.vstack([p[0], p, p[-1]])
    t = np.linspace(0, 1, per_segment, endpoint=False)[:, None]
    out = []
    for i in range(1, len(p) - 2):
        p0, p1, p2, p3 = p[i - 1], p[i], p[i + 1], p[i + 2]
        out.append(
            0.5
            * (2 * p1 + (-p0 + p2) * t + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t**2 + (-p0 + 3 * p1 - 3 * p2 + p3) * t**3)
        )
    curve = np.vstack([*out, p[-2]])
    return [(float(x), float(y)) for x, y in curve]


def as_canvas_drawing(ink: np.ndarray) -> np.ndarray:
    """The drawing as the web page's canvas sends it (light ink on dark), through preprocessing."""
    return mnist_style(ink)


def as_photo(rng: np.random.Generator, ink: np.ndarray) -> np.ndarray:
    """The drawing on paper, photographed or scanned: dark ink, uneven light, noise, blur and JPEG
    at a random size, then decoded and preprocessed exactly as an upload is."""
    side = int(rng.integers(64, 257))
    alpha = np.asarray(Image.fromarray(ink * 255).resize((side, side), Image.Resampling.BILINEAR), np.float32) / 255
    alpha = np.clip(alpha, 0, 1)
    paper = rng.uniform(0.65, 0.97)
    yy, xx = np.mgrid[0:side, 0:side] / side
    angle = rng.uniform(0, 2 * np.pi)
    light = paper + rng.uniform(0, 0.2) * ((xx - 0.5) * np.cos(angle) + (yy - 0.5) * np.sin(angle))
    pen = rng.uniform(0.03, 0.35)
    alpha = alpha * rng.uniform(0.8, 1.0)  # how much of the light the ink absorbs
    image = light * (1 - alpha) + pen * alpha
    image = image + rng.normal(0, rng.uniform(0.005, 0.035), image.shape)
    picture = Image.fromarray(np.clip(image * 255, 0, 255).astype(np.uint8))
    blur = rng.uniform(0, 1.2) * side / 128
    if blur > 0.3:
        picture = picture.filter(ImageFilter.GaussianBlur(blur))
    buf = io.BytesIO()
    picture.save(buf, format="JPEG", quality=int(rng.integers(55, 96)))
    return prepare(buf.getvalue())
