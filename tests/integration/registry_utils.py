"""Building test registries from the shipped baselines: copies (local or S3), variants, damaged versions."""

from __future__ import annotations

import base64
import io
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from digitserve.preprocess import to_model_input
from digitserve.registry import ModelRegistry, build_model

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = Path(os.environ.get("DIGITSERVE_TEST_BASELINES", ROOT / "registry"))  # override: develop without baselines
SEED_SCRIPT = ROOT / "infra" / "seed_registry.py"


def copy_shipped(dest: Path, models: tuple[str, ...] = ("cnn",)) -> ModelRegistry:
    """A private copy of the shipped registry (so tests can move aliases and damage blobs)."""
    for model in models:
        shutil.copytree(SHIPPED / model, dest / model, ignore=shutil.ignore_patterns(".*.lock"))
    return ModelRegistry.open(str(dest))


def seed_s3(uri: str, models: tuple[str, ...] = ("cnn",), *, aliases: bool = True) -> None:
    """Copy the shipped `models` into the S3 registry `uri` with the operator's tool, infra/seed_registry.py
    (it creates the bucket if needed). With `aliases=False` only versions and blobs go up: no alias is set."""
    with tempfile.TemporaryDirectory() as tmp:
        copy_shipped(Path(tmp), models)
        if not aliases:
            for model in models:
                shutil.rmtree(Path(tmp) / model / "aliases")
                shutil.rmtree(Path(tmp) / model / "events")
        seeded = subprocess.run([sys.executable, str(SEED_SCRIPT), tmp, uri], capture_output=True, text=True)
    assert seeded.returncode == 0, seeded.stderr


def train_smoke(uri: str, arch: str = "cnn") -> str:
    """Run `training/train.py --arch ARCH --smoke --registry URI` (a real run of seconds that publishes); its stdout."""
    trained = subprocess.run(
        [sys.executable, str(ROOT / "training" / "train.py"), "--arch", arch, "--smoke", "--registry", uri],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert trained.returncode == 0, trained.stderr[-2000:]
    return trained.stdout


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
