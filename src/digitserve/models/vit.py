"""A Vision Transformer for 28x28 one-channel digits, built on timm's `VisionTransformer`.

The patch embedding is a small convolutional stem (Xiao et al., 2021, "Early convolutions help
transformers see better") instead of a single strided conv: on 60k images it trains faster and
more stably. It keeps timm's `PatchEmbed` interface, so timm's position embeddings, blocks and
head are used unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from timm.layers import PatchEmbed
from timm.models.vision_transformer import VisionTransformer
from torch import nn


@dataclass(frozen=True)
class ViTConfig:
    img_size: int = 28
    patch_size: int = 4  # the stem downsamples 28 -> 7: a 7x7 grid of tokens
    embed_dim: int = 96
    depth: int = 6
    num_heads: int = 4
    mlp_ratio: float = 3.0
    stem_channels: int = 48
    drop_rate: float = 0.1
    drop_path_rate: float = 0.1
    num_classes: int = 10


class ConvStemEmbed(PatchEmbed):
    """Two stride-2 3x3 convs and a 1x1 projection in place of PatchEmbed's single conv."""

    def __init__(self, stem_channels: int = 48, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        embed_dim = self.proj.out_channels
        in_chans = self.proj.in_channels
        c = stem_channels
        self.proj = nn.Sequential(  # type: ignore[assignment]
            nn.Conv2d(in_chans, c // 2, 3, stride=2, padding=1, bias=False),  # (B, c/2, 14, 14)
            nn.BatchNorm2d(c // 2),
            nn.GELU(),
            nn.Conv2d(c // 2, c, 3, stride=2, padding=1, bias=False),  # (B, c, 7, 7)
            nn.BatchNorm2d(c),
            nn.GELU(),
            nn.Conv2d(c, embed_dim, 1),  # (B, D, 7, 7)
        )


class ViT(nn.Module):
    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        self.config = config
        self.vit = VisionTransformer(
            img_size=config.img_size,
            patch_size=config.patch_size,
            in_chans=1,
            num_classes=config.num_classes,
            embed_dim=config.embed_dim,
            depth=config.depth,
            num_heads=config.num_heads,
            mlp_ratio=config.mlp_ratio,
            drop_rate=config.drop_rate,
            drop_path_rate=config.drop_path_rate,
            embed_layer=partial(ConvStemEmbed, stem_channels=config.stem_channels),
        )

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.vit.forward_features(x)  # (B, 1 + 49, D)
        return self.vit.forward_head(tokens, pre_logits=True)  # (B, D)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.vit.head(self.forward_features(x))  # (B, num_classes)
