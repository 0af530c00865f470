"""The doodled shapes of the negative set, as pen paths: (polyline, closed) pieces centred on the
canvas. None is a digit in anyone's hand: no lone circle (0), no lone straight line (1), zigzags
of four or more teeth, spirals of two or more turns."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from digitserve.synthetic.render import CANVAS, Point

Pieces = list[tuple[list[Point], bool]]
C = CANVAS / 2


def regular(n: int, cx: float, cy: float, r: float, rot: float, inner: float | None = None) -> list[Point]:
    """A regular n-gon (or, with `inner`, an n-pointed star) around (cx, cy)."""
    points = []
    corners = n * (2 if inner else 1)
    for k in range(corners):
        radius = r if inner is None or k % 2 == 0 else r * inner
        a = rot + np.pi * 2 * k / corners
        points.append((cx + radius * np.cos(a), cy + radius * np.sin(a)))
    return points


def rotate(points: list[Point], angle: float) -> list[Point]:
    ca, sa = np.cos(angle), np.sin(angle)
    return [(C + (x - C) * ca - (y - C) * sa, C + (x - C) * sa + (y - C) * ca) for x, y in points]


def triangle(rng: np.random.Generator, r: float, rot: float) -> Pieces:
    return [(regular(3, C, C, r, rot), True)]


def rectangle(rng: np.random.Generator, r: float, rot: float) -> Pieces:
    w, h = r, r * rng.uniform(0.5, 1.0)
    return [([(C - w, C - h), (C + w, C - h), (C + w, C + h), (C - w, C + h)], True)]


def star(rng: np.random.Generator, r: float, rot: float) -> Pieces:
    return [(regular(int(rng.integers(5, 8)), C, C, r, rot, inner=0.45), True)]


def heart(rng: np.random.Generator, r: float, rot: float) -> Pieces:
    t = np.linspace(0, 2 * np.pi, 40)
    x, y = 16 * np.sin(t) ** 3, -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
    return [([(C + r * a / 17, C + r * b / 17) for a, b in zip(x, y, strict=True)], True)]


def arrow(rng: np.random.Generator, r: float, rot: float) -> Pieces:
    head = [(C + r * 0.5, C - r * 0.4), (C + r, C), (C + r * 0.5, C + r * 0.4)]
    return [(rotate([(C - r, C), (C + r, C)], rot), False), (rotate(head, rot), False)]


def house(rng: np.random.Generator, r: float, rot: float) -> Pieces:
    body = [(C - r * 0.7, C), (C + r * 0.7, C), (C + r * 0.7, C + r), (C - r * 0.7, C + r)]
    roof = [(C - r * 0.9, C), (C, C - r), (C + r * 0.9, C)]
    door = [(C - r * 0.15, C + r), (C - r * 0.15, C + r * 0.5), (C + r * 0.15, C + r * 0.5), (C + r * 0.15, C + r)]
    return [(body, True), (roof, False), (door, False)]


def smiley(rng: np.random.Generator, r: float, rot: float) -> Pieces:
    mouth = [(C + r * 0.5 * np.cos(a), C + r * 0.5 * np.sin(a)) for a in np.linspace(0.3, np.pi - 0.3, 10)]
    eyes = [[(C + dx, C - r * 0.3), (C + dx, C - r * 0.2)] for dx in (-r * 0.35, r * 0.35)]
    return [(regular(24, C, C, r, 0), True), (mouth, False), (eyes[0], False), (eyes[1], False)]


def spiral(rng: np.random.Generator, r: float, rot: float) -> Pieces:
    turns = rng.uniform(2, 4)
    t = np.linspace(0, turns * 2 * np.pi, int(30 * turns))
    radii = r * (0.1 + 0.9 * t / t[-1])
    return [([(C + a * np.cos(b + rot), C + a * np.sin(b + rot)) for a, b in zip(radii, t, strict=True)], False)]


def zigzag(rng: np.random.Generator, r: float, rot: float) -> Pieces:
    n = int(rng.integers(4, 8))
    return [(rotate([(C - r + 2 * r * k / n, C + (r * 0.4 if k % 2 else -r * 0.4)) for k in range(n + 1)], rot), False)]


def wave(rng: np.random.Generator, r: float, rot: float) -> Pieces:
    waves = rng.uniform(2, 4)
    return [
        (rotate([(C + r * a, C + r * 0.3 * np.sin(waves * np.pi * a)) for a in np.linspace(-1, 1, 40)], rot), False)
    ]


def diamond(rng: np.random.Generator, r: float, rot: float) -> Pieces:
    d = regular(4, C, C, r, rot)
    return [(d, True), ([d[0], d[2]], False), ([d[1], d[3]], False)]


def grid(rng: np.random.Generator, r: float, rot: float) -> Pieces:
    g = r * 0.4
    lines = [[(C - r, C - g), (C + r, C - g)], [(C - r, C + g), (C + r, C + g)]]
    lines += [[(C - g, C - r), (C - g, C + r)], [(C + g, C - r), (C + g, C + r)]]
    return [(rotate(line, rot * 0.2), False) for line in lines]


def flower(rng: np.random.Generator, r: float, rot: float) -> Pieces:
    petals = int(rng.integers(5, 9))
    pieces: Pieces = [(regular(10, C, C, r * 0.2, 0), True)]
    for k in range(petals):
        a = rot + 2 * np.pi * k / petals
        pieces.append((regular(10, C + r * 0.6 * np.cos(a), C + r * 0.6 * np.sin(a), r * 0.3, 0), True))
    return pieces


def envelope(rng: np.random.Generator, r: float, rot: float) -> Pieces:
    w, h = r, r * 0.65
    box = [(C - w, C - h), (C + w, C - h), (C + w, C + h), (C - w, C + h)]
    return [(box, True), ([(C - w, C - h), (C, C + h * 0.1), (C + w, C - h)], False)]


SHAPES: tuple[Callable[[np.random.Generator, float, float], Pieces], ...] = (
    triangle,
    rectangle,
    star,
    heart,
    arrow,
    house,
    smiley,
    spiral,
    zigzag,
    wave,
    diamond,
    grid,
    flower,
    envelope,
)


def shape_pieces(rng: np.random.Generator) -> Pieces:
    """The pieces of one randomly chosen, sized and turned shape."""
    r, rot = float(rng.uniform(30, 55)), float(rng.uniform(0, 2 * np.pi))
    return SHAPES[int(rng.integers(0, len(SHAPES)))](rng, r, rot)
