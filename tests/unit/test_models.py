"""Models: built by name, shapes, and bit-identical rebuilds from a registry manifest."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from support.registries import publish_network

from digitserve.models import UnknownArchitectureError, create_model, make_config
from digitserve.models.checkpoint import load_network, predict_logits
from digitserve.models.cnn import CNNConfig
from digitserve.models.vit import ViTConfig
from digitserve.registry import ModelRegistry
from digitserve.runtime import OnnxModel, RuntimeOptions


@pytest.mark.parametrize("arch", ["cnn", "vit"])
def test_models_map_digits_to_ten_logits(arch: str) -> None:
    model = create_model(arch).eval()
    x = torch.randn(3, 1, 28, 28)
    assert model(x).shape == (3, 10)
    features = model.forward_features(x)
    assert features.ndim == 2 and features.shape[0] == 3


def test_unknown_architecture_names_the_known_ones() -> None:
    with pytest.raises(UnknownArchitectureError, match="known: cnn, vit"):
        create_model("resnet")
    with pytest.raises(UnknownArchitectureError, match="no config fields"):
        create_model("cnn", width=3)


def test_configs_are_frozen_and_lists_become_tuples() -> None:
    cfg = make_config("cnn", channels=[8, 16, 16])
    assert cfg.channels == (8, 16, 16)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.dropout = 0.5  # type: ignore[misc]
    assert isinstance(create_model("vit").config, ViTConfig)
    assert isinstance(create_model("cnn").config, CNNConfig)


@pytest.mark.parametrize("arch,config", [("cnn", {"channels": [8, 16, 16]}), ("vit", {"embed_dim": 32, "depth": 2})])
def test_rebuilt_from_manifest_gives_bit_identical_outputs(tmp_path: Path, arch: str, config: dict) -> None:
    torch.manual_seed(0)
    model = create_model(arch, **config).eval()
    # Give BatchNorm non-trivial running statistics, as training would.
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.5, 2)
    registry = ModelRegistry.open(str(tmp_path))
    version = publish_network(registry, "m", model)
    manifest, rebuilt = load_network(registry, "m", version)
    assert manifest.architecture == arch
    x = torch.randn(16, 1, 28, 28)
    with torch.inference_mode():
        assert torch.equal(model(x), rebuilt(x))
    # The version's ONNX artifact (what serves) takes uint8 pixels and agrees with the rebuilt network.
    _, graph = registry.read_artifact("m", version, "onnx")
    pixels = torch.randint(0, 256, (16, 28, 28), dtype=torch.uint8).numpy()
    served = OnnxModel(graph, RuntimeOptions(intra_op_threads=1)).logits(pixels)
    torch.testing.assert_close(torch.from_numpy(served), predict_logits(rebuilt, pixels), atol=1e-3, rtol=0)
