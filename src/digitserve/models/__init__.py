"""Models by name: `create_model("cnn", **config)` builds any architecture the project knows.

`cnn.py`, `vit.py` (one architecture each), `checkpoint.py` (safetensors weights in and out of the
registry), `export.py` (the ONNX graph, checked against the golden outputs). The torch layer: may
import config, storage, registry, runtime, imaging and data; nothing above it."""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any

from torch import nn

# name -> (module, model class, config class). Each module is imported when its architecture is
# first built, so a server of CNNs alone never imports timm, nor the torchvision and
# torch._dynamo that timm pulls in (about 2 s of start-up).
ARCHITECTURES: dict[str, tuple[str, str, str]] = {
    "cnn": ("digitserve.models.cnn", "CNN", "CNNConfig"),
    "vit": ("digitserve.models.vit", "ViT", "ViTConfig"),
}


class UnknownArchitectureError(ValueError):
    pass


def _classes(arch: str) -> tuple[type[nn.Module], type]:
    if arch not in ARCHITECTURES:
        known = ", ".join(sorted(ARCHITECTURES))
        raise UnknownArchitectureError(f"unknown architecture {arch!r}; known: {known}")
    module_name, model_name, config_name = ARCHITECTURES[arch]
    module = importlib.import_module(module_name)
    return getattr(module, model_name), getattr(module, config_name)


def make_config(arch: str, **overrides: Any) -> Any:
    """The architecture's frozen config with `overrides` applied (lists become tuples)."""
    config_cls = _classes(arch)[1]
    names = {f.name for f in dataclasses.fields(config_cls)}
    unknown = set(overrides) - names
    if unknown:
        raise UnknownArchitectureError(f"{arch} has no config fields {sorted(unknown)}")
    fixed = {k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()}
    return config_cls(**fixed)


def create_model(arch: str, **config: Any) -> nn.Module:
    """Build an architecture by name; raises UnknownArchitectureError for names it does not know."""
    model_cls = _classes(arch)[0]
    return model_cls(make_config(arch, **config))


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
