"""Models by name: `create_model("cnn", **config)` builds any architecture the project knows."""

from __future__ import annotations

import dataclasses
from typing import Any

from torch import nn

from digitserve.models.cnn import CNN, CNNConfig
from digitserve.models.vit import ViT, ViTConfig

ARCHITECTURES: dict[str, tuple[type[nn.Module], type]] = {
    "cnn": (CNN, CNNConfig),
    "vit": (ViT, ViTConfig),
}


class UnknownArchitectureError(ValueError):
    pass


def make_config(arch: str, **overrides: Any) -> Any:
    """The architecture's frozen config with `overrides` applied (lists become tuples)."""
    if arch not in ARCHITECTURES:
        known = ", ".join(sorted(ARCHITECTURES))
        raise UnknownArchitectureError(f"unknown architecture {arch!r}; known: {known}")
    config_cls = ARCHITECTURES[arch][1]
    names = {f.name for f in dataclasses.fields(config_cls)}
    unknown = set(overrides) - names
    if unknown:
        raise UnknownArchitectureError(f"{arch} has no config fields {sorted(unknown)}")
    fixed = {k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()}
    return config_cls(**fixed)


def create_model(arch: str, **config: Any) -> nn.Module:
    """Build an architecture by name; raises UnknownArchitectureError for names it does not know."""
    model_cls = ARCHITECTURES[arch][0] if arch in ARCHITECTURES else None
    cfg = make_config(arch, **config)
    assert model_cls is not None
    return model_cls(cfg)


def config_dict(model: nn.Module) -> dict[str, Any]:
    """The JSON-able config that, with the architecture name, rebuilds `model`."""
    return dataclasses.asdict(model.config)  # type: ignore[call-overload]


__all__ = [
    "ARCHITECTURES",
    "UnknownArchitectureError",
    "config_dict",
    "create_model",
    "make_config",
]
