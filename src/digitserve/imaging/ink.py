"""Finding the ink in a grayscale picture: background, polarity, noise floor, specks.

The output is an ink-strength map in [0, 1] (0 = paper, 1 = the stroke's core) whose soft
edges are kept, so that the final downscale anti-aliases the way MNIST's did.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from digitserve.imaging.decode import NoDigitError

NOISE_FLOOR_SIGMAS = 5.0  # a pixel is ink only this many noise sigmas above the paper
MIN_CONTRAST_SIGMAS = 10.0  # the ink's typical strength must stand this far above the noise
MIN_CONTRAST_LEVELS = 12.0  # ... and this many gray levels (of 255) above the paper
KEEP_COMPONENT_FRACTION = 0.08  # keep ink blobs at least this fraction of the largest one
MIN_INK_FRACTION = 3e-4  # the largest blob must cover this fraction of the picture


@dataclass(frozen=True)
class Ink:
    strength: np.ndarray  # (H, W) float32 in [0, 1], 0 outside the kept blobs
    mask: np.ndarray  # (H, W) bool, the kept blobs at the ink threshold


def _pad_along(axis: int, radius: int) -> list[tuple[int, int]]:
    return [(radius, radius) if a == axis else (0, 0) for a in (0, 1)]


def _window(a: np.ndarray, start: int, n: int, axis: int) -> np.ndarray:
    index = [slice(None), slice(None)]
    index[axis] = slice(start, start + n)
    return a[tuple(index)]


def gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur with edge padding (numpy only; Pillow cannot blur floats)."""
    if sigma < 0.3:
        return image
    radius = int(np.ceil(3 * sigma))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps /= taps.sum()
    out = image
    for axis in (0, 1):
        padded = np.pad(out, _pad_along(axis, radius), mode="edge")
        n = out.shape[axis]
        out = sum(t * _window(padded, k, n, axis) for k, t in enumerate(taps))
    return np.asarray(out, dtype=np.float32)


def dilate(image: np.ndarray, radius: int) -> np.ndarray:
    """Grey-level dilation with a (2r+1) square: separable running maximum."""
    out = image
    for axis in (0, 1):
        padded = np.pad(out, _pad_along(axis, radius))
        n = out.shape[axis]
        out = np.max([_window(padded, k, n, axis) for k in range(2 * radius + 1)], axis=0)
    return out


def noise_sigma(image: np.ndarray, lag: int) -> float:
    """Robust noise level from differences of pixels `lag` apart: lighting gradients and the
    (few) ink edges barely move the median, unlike the spread of the picture itself."""
    diffs = [np.abs(np.diff(image[:, ::lag], axis=1)).ravel(), np.abs(np.diff(image[::lag], axis=0)).ravel()]
    pooled = np.concatenate(diffs)
    return 1.4826 * float(np.median(pooled)) / np.sqrt(2) if pooled.size else 0.0


def _quadratic(ys: np.ndarray, xs: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    y, x = ys / shape[0] - 0.5, xs / shape[1] - 0.5
    return np.stack([np.ones_like(x), x, y, x * x, x * y, y * y], axis=-1)


def fit_background(image: np.ndarray, noise: float, iterations: int = 4) -> tuple[np.ndarray, float]:
    """Robust quadratic surface through the paper (lighting gradients), and the residual sigma.

    The first fit uses the picture's rim, where the paper is; later fits use every pixel
    within 3 sigma of the surface, so ink of either polarity does not pull the surface.
    """
    h, w = image.shape
    step = max(1, int(np.sqrt(h * w / 2048)))
    ys, xs = (g.ravel() for g in np.mgrid[0:h:step, 0:w:step])
    design = _quadratic(ys, xs, image.shape)
    values = image[::step, ::step].ravel().astype(np.float64)
    rim = (np.minimum(ys, h - 1 - ys) < 0.08 * h) | (np.minimum(xs, w - 1 - xs) < 0.08 * w)
    rim_level = float(np.median(values[rim]))
    rim_spread = max(1.4826 * float(np.median(np.abs(values[rim] - rim_level))), noise, 1.0)
    inliers = rim & (np.abs(values - rim_level) <= 3 * rim_spread)
    coef, spread = np.array([rim_level, 0, 0, 0, 0, 0]), rim_spread
    for _ in range(iterations):
        if inliers.sum() >= 12:  # normal equations: a 6x6 solve, far cheaper than lstsq here
            a = design[inliers]
            coef = np.linalg.solve(a.T @ a + 1e-9 * np.eye(6), a.T @ values[inliers])
        residual = values - design @ coef
        spread = max(1.4826 * float(np.median(np.abs(residual[inliers]))) if inliers.any() else 0, noise, 1.0)
        inliers = np.abs(residual) <= 3 * spread
    return _surface(coef, image.shape), spread


def _surface(coef: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """The fitted quadratic at every pixel, by broadcasting a row and a column (the same sum as
    `_quadratic(rows, cols) @ coef` without building an (H, W, 6) array)."""
    y = (np.arange(shape[0], dtype=np.float64) / shape[0] - 0.5)[:, None]
    x = (np.arange(shape[1], dtype=np.float64) / shape[1] - 0.5)[None, :]
    c = coef.tolist()
    surface = (c[0] + c[1] * x + c[3] * x * x) + y * (c[2] + c[4] * x + c[5] * y)
    return surface.astype(np.float32)


def label_runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """8-connected components by run-length union-find: (row, start, end, label) per run."""
    padded = np.zeros((mask.shape[0], mask.shape[1] + 2), dtype=np.int8)
    padded[:, 1:-1] = mask
    edges = np.diff(padded, axis=1)
    rows, starts = np.nonzero(edges == 1)
    _, ends = np.nonzero(edges == -1)  # exclusive
    parent = list(range(len(starts)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first = np.searchsorted(rows, np.arange(mask.shape[0] + 1)).tolist()
    s, e = starts.tolist(), ends.tolist()
    for y in range(1, mask.shape[0]):
        i, j = first[y - 1], first[y]
        while i < first[y] and j < first[y + 1]:
            if s[i] <= e[j] and s[j] <= e[i]:  # touching, diagonals included
                parent[find(i)] = find(j)
            if e[i] < e[j]:
                i += 1
            else:
                j += 1
    labels = np.array([find(i) for i in range(len(s))], dtype=np.int64)
    return rows, starts, ends, labels


def keep_main_blobs(mask: np.ndarray) -> np.ndarray:
    """The mask without specks: blobs smaller than a fraction of the largest are dropped."""
    rows, starts, ends, labels = label_runs(mask)
    if len(labels) == 0:
        return mask
    areas = np.bincount(labels, weights=ends - starts)
    keep = areas[labels] >= KEEP_COMPONENT_FRACTION * areas.max()
    if areas.max() < max(4.0, MIN_INK_FRACTION * mask.size):
        raise NoDigitError(
            "no digit found: the only marks are specks too small to be a digit; "
            "send a picture in which the digit fills more of the frame"
        )
    out = np.zeros_like(mask)
    for r, a, b in zip(rows[keep].tolist(), starts[keep].tolist(), ends[keep].tolist(), strict=True):
        out[r, a:b] = True
    return out


def find_ink(gray: np.ndarray) -> Ink:
    """Ink strength of a grayscale picture (any polarity); NoDigitError when there is none."""
    blur = max(gray.shape) / 300
    blurred = gaussian_blur(gray.astype(np.float32), sigma=blur)
    surface, sigma = fit_background(blurred, noise_sigma(blurred, lag=1 + int(np.ceil(2 * blur))))
    residual = blurred - surface
    floor = NOISE_FLOOR_SIGMAS * sigma
    light_ink = residual[residual > floor].sum() >= -residual[residual < -floor].sum()
    signal = np.maximum(residual if light_ink else -residual, 0)
    candidates = signal[signal > floor]
    if candidates.size == 0:
        raise NoDigitError("no digit found: the image has no ink (it is blank or uniform); send a picture of one digit")
    level = float(np.percentile(candidates, 90))
    if level < max(MIN_CONTRAST_SIGMAS * sigma, MIN_CONTRAST_LEVELS):
        raise NoDigitError(
            "no digit found: nothing stands out from the background noise; "
            "send a sharper, better-lit picture of the digit"
        )
    mask = keep_main_blobs(signal > max(floor, 0.35 * level))
    zero = max(3 * sigma, 0.15 * level)
    strength = np.clip((signal - zero) / (0.8 * level - zero), 0, 1)
    strength *= dilate(mask.astype(np.float32), 2)
    return Ink(strength.astype(np.float32), mask)
