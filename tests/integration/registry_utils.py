"""Building test registries from the shipped baselines: copies, variants, damaged versions."""

from __future__ import annotations

import base64
import io
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from digitserve.preprocess import to_model_input
from digitserve.registry import ModelRegistry, build_model

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = Path(os.environ.get("DIGITSERVE_TEST_BASELINES", ROOT / "registry"))  # override: develop without baselines


def copy_shipped(dest: Path, models: tuple[str, ...] = ("cnn",)) -> ModelRegistry:
    """A private copy of the shipped registry (so tests can move aliases and damage blobs)."""
    for model in models:
        shutil.copytree(SHIPPED / model, dest / model, ignore=shutil.ignore_patterns(".*.lock"))
    return ModelRegistry.open(str(dest))


def publish_variant(
    registry: ModelRegistry, model: str, source_version: int, nudge: float = 1e-4, golden_offset: float = 0.0
) -> int:
    """A new version whose weights differ slightly from `source_version` (so its blob differs).

    Its golden logits are recomputed, then shifted by `golden_offset` (non-zero: a version
    whose recorded golden outputs its weights do not reproduce).
    """
    manifest, state = registry.load_weights(model, source_version)
    state = {k: v.clone() for k, v in state.items()}
    last_bias = [k for k in state if k.endswith("bias")][-1]
    state[last_bias] += nudge
    module = build_model(manifest, state)
    golden = dict(manifest["golden"])
    digits = np.frombuffer(base64.b64decode(golden["images_uint8_b64"]), np.uint8).reshape(golden["shape"]).copy()
    with torch.inference_mode():
        logits = module(to_model_input(digits)) + golden_offset
    golden["logits"] = logits.tolist()
    metadata: dict[str, Any] = {k: v for k, v in manifest.items() if k in ("preprocessing", "metrics", "data")}
    metadata["golden"] = golden
    return registry.publish(model, manifest["architecture"], manifest["config"], state, metadata)


def blob_path(registry: ModelRegistry, model: str, version: int) -> Path:
    sha = registry.manifest(model, version)["weights"]["sha256"]
    return Path(registry.uri) / model / "blobs" / f"{sha}.safetensors"


def png_bytes(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def png_b64(image: np.ndarray) -> str:
    return base64.b64encode(png_bytes(image)).decode()
