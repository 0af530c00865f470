"""A compact VGG-style CNN for 28x28 digits: three conv stages, global pooling, linear head."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class CNNConfig:
    channels: tuple[int, int, int] = (32, 64, 128)
    depths: tuple[int, int, int] = (1, 2, 2)  # convs per stage; stages 1 and 2 end in a 2x2 pool
    dropout: float = 0.2
    num_classes: int = 10


def _conv_bn(c_in: int, c_out: int) -> list[nn.Module]:
    return [
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    ]


class CNN(nn.Module):
    def __init__(self, config: CNNConfig) -> None:
        super().__init__()
        self.config = config
        layers: list[nn.Module] = []
        c_in = 1
        for stage, (c_out, depth) in enumerate(zip(config.channels, config.depths, strict=True)):
            for _ in range(depth):
                layers += _conv_bn(c_in, c_out)
                c_in = c_out
            if stage < 2:
                layers.append(nn.MaxPool2d(2))
        # (B, 1, 28, 28) -> (B, c1, 14, 14) -> (B, c2, 7, 7) -> (B, c3, 7, 7)
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Dropout(config.dropout), nn.Linear(c_in, config.num_classes))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)  # (B, c3, 7, 7)
        return x.mean(dim=(2, 3))  # (B, c3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))  # (B, num_classes)
