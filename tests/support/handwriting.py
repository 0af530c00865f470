"""Pen paths for handwritten-looking digits, for a browser test to draw with a real mouse.

Each digit has one to three styles (a 1 with or without a flag, a 4 drawn in two strokes, a 5
with its bar drawn last, ...). A style is a list of strokes; a stroke is a list of pieces joined
at sharp corners; each piece is a smooth Catmull-Rom curve through key points in a unit box
(x right, y down). `handwritten(digit, seed)` picks a style and writes it the way a person
would: a little larger or smaller, slanted, off-centre, wobbly. Everything follows from the seed.
"""

from __future__ import annotations

import math

import numpy as np

Point = tuple[float, float]
Piece = list[Point]
Stroke = list[Piece]


def arc(cx: float, cy: float, rx: float, ry: float, start_deg: float, end_deg: float, n: int = 10) -> Piece:
    """Key points on an ellipse; angles in degrees, 0 = right, 90 = down (screen coordinates)."""
    angles = np.radians(np.linspace(start_deg, end_deg, n))
    return [(cx + rx * math.cos(a), cy + ry * math.sin(a)) for a in angles]


STYLES: dict[int, list[list[Stroke]]] = {
    0: [
        [[arc(0.5, 0.5, 0.2, 0.33, -95, 270, 16)]],
        [[arc(0.5, 0.5, 0.23, 0.32, -80, -440, 16)]],  # counter-clockwise, a rounder oval
    ],
    1: [
        [[[(0.52, 0.16), (0.5, 0.5), (0.48, 0.84)]]],
        [[[(0.38, 0.3), (0.53, 0.16)], [(0.53, 0.16), (0.51, 0.5), (0.5, 0.84)]]],  # with a flag
    ],
    2: [
        [
            [
                [(0.3, 0.3), (0.38, 0.18), (0.52, 0.15), (0.65, 0.22), (0.67, 0.36), (0.55, 0.53), (0.28, 0.82)],
                [(0.28, 0.82), (0.5, 0.81), (0.74, 0.82)],
            ]
        ],
        [  # a loop at the bottom left, as many people write it
            [
                [(0.3, 0.27), (0.45, 0.15), (0.62, 0.19), (0.66, 0.35), (0.5, 0.58), (0.34, 0.78), (0.3, 0.86)],
                [(0.3, 0.86), (0.38, 0.74), (0.5, 0.76), (0.62, 0.83), (0.75, 0.82)],
            ]
        ],
    ],
    3: [
        [
            [
                [(0.3, 0.22), (0.46, 0.15), (0.62, 0.18), (0.67, 0.31), (0.58, 0.43), (0.44, 0.48)],
                [(0.44, 0.48), (0.62, 0.53), (0.7, 0.66), (0.62, 0.8), (0.46, 0.85), (0.3, 0.79)],
            ]
        ],
        [
            [
                [(0.32, 0.2), (0.5, 0.14), (0.66, 0.22), (0.64, 0.36), (0.5, 0.47)],
                [(0.5, 0.47), (0.66, 0.56), (0.69, 0.7), (0.56, 0.84), (0.34, 0.82)],
            ]
        ],
    ],
    4: [
        [
            [[(0.47, 0.15), (0.27, 0.6)], [(0.27, 0.6), (0.75, 0.6)]],
            [[(0.63, 0.3), (0.62, 0.58), (0.61, 0.86)]],
        ],
        [  # the down stroke and the bar in one go, then the long stroke
            [[(0.42, 0.16), (0.33, 0.55)], [(0.33, 0.55), (0.74, 0.54)]],
            [[(0.66, 0.18), (0.64, 0.52), (0.63, 0.86)]],
        ],
    ],
    5: [
        [
            [
                [(0.66, 0.17), (0.38, 0.18)],
                [(0.38, 0.18), (0.35, 0.46)],
                [(0.35, 0.46), (0.52, 0.41), (0.67, 0.5), (0.69, 0.66), (0.58, 0.8), (0.43, 0.84), (0.3, 0.77)],
            ],
        ],
        [  # body first, the bar last
            [
                [(0.4, 0.17), (0.37, 0.47)],
                [(0.37, 0.47), (0.54, 0.42), (0.68, 0.53), (0.67, 0.7), (0.52, 0.83), (0.32, 0.8)],
            ],
            [[(0.4, 0.17), (0.55, 0.16), (0.69, 0.15)]],
        ],
    ],
    6: [
        [
            [
                [
                    *[(0.63, 0.15), (0.47, 0.26), (0.36, 0.43), (0.32, 0.62), (0.37, 0.78), (0.51, 0.85)],
                    *[(0.65, 0.78), (0.68, 0.64), (0.59, 0.53), (0.45, 0.52), (0.35, 0.6)],
                ]
            ]
        ],
        [
            [
                [
                    *[(0.58, 0.14), (0.44, 0.3), (0.35, 0.52), (0.36, 0.74), (0.5, 0.85)],
                    *[(0.64, 0.77), (0.65, 0.61), (0.52, 0.54), (0.38, 0.62)],
                ]
            ]
        ],
    ],
    7: [
        [[[(0.29, 0.18), (0.72, 0.18)], [(0.72, 0.18), (0.58, 0.5), (0.46, 0.85)]]],
        [[[(0.3, 0.2), (0.5, 0.17), (0.71, 0.16)], [(0.71, 0.16), (0.6, 0.38), (0.52, 0.6), (0.48, 0.85)]]],
    ],
    8: [
        [
            [
                [
                    *[(0.63, 0.23), (0.5, 0.15), (0.36, 0.22), (0.38, 0.37), (0.5, 0.47), (0.65, 0.6), (0.66, 0.76)],
                    *[(0.5, 0.85), (0.34, 0.76), (0.36, 0.6), (0.5, 0.47), (0.62, 0.36), (0.63, 0.23)],
                ]
            ]
        ],
        [  # two loops
            [arc(0.5, 0.31, 0.14, 0.16, -90, 270, 12)],
            [arc(0.5, 0.66, 0.18, 0.19, -90, 270, 12)],
        ],
    ],
    9: [
        [[arc(0.5, 0.33, 0.17, 0.17, 0, -360, 14), [(0.67, 0.33), (0.65, 0.6), (0.61, 0.85)]]],
        [[arc(0.48, 0.32, 0.17, 0.16, -20, -375, 14), [(0.64, 0.27), (0.6, 0.55), (0.55, 0.85)]]],
    ],
}


def _catmull_rom(points: Piece, spacing: float) -> np.ndarray:
    """A smooth curve through `points`, sampled about every `spacing` units: (n, 2)."""
    p = np.asarray(points, dtype=np.float64)
    if len(p) == 2:
        n = max(2, math.ceil(np.linalg.norm(p[1] - p[0]) / spacing) + 1)
        return np.linspace(p[0], p[1], n)
    padded = np.vstack([2 * p[0] - p[1], p, 2 * p[-1] - p[-2]])
    out = [p[:1]]
    for i in range(1, len(padded) - 2):
        p0, p1, p2, p3 = padded[i - 1 : i + 3]
        n = max(2, math.ceil(np.linalg.norm(p2 - p1) / spacing) + 1)
        t = np.linspace(0, 1, n)[1:, None]
        out.append(
            0.5
            * (2 * p1 + (-p0 + p2) * t + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t**2 + (-p0 + 3 * p1 - 3 * p2 + p3) * t**3)
        )
    return np.vstack(out)


def style_count(digit: int) -> int:
    return len(STYLES[digit])


def handwritten(digit: int, seed: int, spacing: float = 0.024) -> list[np.ndarray]:
    """The strokes of one hand-drawn `digit`: a list of (n, 2) point arrays in the unit box."""
    rng = np.random.default_rng(seed)
    style = STYLES[digit][seed % style_count(digit)]
    scale = rng.uniform(0.5, 1.05)  # some people fill the box, some write small
    aspect = rng.uniform(0.85, 1.15)
    shear = rng.uniform(-0.25, 0.1)  # negative leans forward (top to the right), as most people write
    angle = math.radians(rng.uniform(-6, 6))
    shift = rng.uniform(-1, 1, size=2) * max(0.04, (1.05 - scale) * 0.45)  # small digits wander further
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])

    def place(points: np.ndarray) -> np.ndarray:
        centred = points - 0.5
        centred[:, 0] = centred[:, 0] * aspect - shear * centred[:, 1]
        return centred @ rotation.T * scale + 0.5 + shift

    strokes = []
    for stroke in style:
        pieces: list[np.ndarray] = []
        for piece in stroke:
            # A less than steady hand; densely keyed loops get less, or they would look kinked.
            wobble = 0.012 if len(piece) <= 8 else 0.005
            keys = np.asarray(piece) + rng.normal(0, wobble, size=(len(piece), 2))
            # Pieces meet where they met before the wobble: keep the joint shared.
            if pieces:
                keys[0] = pieces[-1][-1]
            pieces.append(_catmull_rom([tuple(k) for k in keys], spacing))
        strokes.append(place(np.vstack(pieces)))
    return _inside(strokes, margin=0.04)


def _inside(strokes: list[np.ndarray], margin: float) -> list[np.ndarray]:
    """The strokes moved (not squashed) so that every point is at least `margin` from the edges."""
    points = np.vstack(strokes)
    low, high = points.min(axis=0), points.max(axis=0)
    move = np.maximum(margin - low, 0) + np.minimum(1 - margin - high, 0)
    return [stroke + move for stroke in strokes]
