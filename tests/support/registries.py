"""Building test registries from the shipped baselines: copies (local or S3), variants, damaged versions."""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from digitserve.models.checkpoint import build_model, load_weights, predict_logits, weights_bytes
from digitserve.models.export import OPSET
from digitserve.registry import Golden, ModelRegistry
from support.exports import export_onnx_once

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = Path(os.environ.get("DIGITSERVE_TEST_BASELINES", ROOT / "registry"))  # override: develop without baselines
SEED_SCRIPT = ROOT / "infra" / "seed_registry.py"


def copy_shipped(dest: Path, models: tuple[str, ...] = ("cnn",)) -> ModelRegistry:
    """A private registry (so tests can move aliases and damage blobs) whose v1 is the shipped
    production version of each model, with `production` pointing at it and no history."""
    shipped = ModelRegistry.open(str(SHIPPED))
    for model in models:
        version = shipped.resolve_alias(model, "production")
        manifest = shipped.manifest(model, version)
        (dest / model / "blobs").mkdir(parents=True, exist_ok=True)
        for artifact in (manifest.weights, manifest.onnx):
            if artifact is not None:
                shutil.copyfile(SHIPPED / artifact.key(model), dest / artifact.key(model))
        shutil.copytree(SHIPPED / model / "versions" / str(version), dest / model / "versions" / "1")
        doc = {**manifest.to_dict(), "version": 1}
        (dest / model / "versions" / "1" / "manifest.json").write_text(json.dumps(doc, indent=2))
        (dest / model / "aliases").mkdir(exist_ok=True)
        alias = {"version": 1, "previous": None, "updated_at": manifest.created_at, "reason": "test copy"}
        (dest / model / "aliases" / "production.json").write_text(json.dumps(alias))
    return ModelRegistry.open(str(dest))


def add_shipped_version(registry: ModelRegistry, model: str, shipped_version: int) -> int:
    """Copy another shipped version of `model` into a `copy_shipped` registry as its next version."""
    return add_version_from(SHIPPED, registry, model, shipped_version)


def add_version_from(source: Path, registry: ModelRegistry, model: str, source_version: int) -> int:
    """Copy version `source_version` of `model` from the local registry at `source` into the local
    `registry` as its next version (the artifacts as they are; the manifest renumbered)."""
    manifest = ModelRegistry.open(str(source)).manifest(model, source_version)
    dest = Path(registry.uri)
    version = max(registry.list_versions(model)) + 1
    (dest / model / "blobs").mkdir(parents=True, exist_ok=True)
    for artifact in (manifest.weights, manifest.onnx):
        if artifact is not None:
            shutil.copyfile(source / artifact.key(model), dest / artifact.key(model))
    shutil.copytree(source / model / "versions" / str(source_version), dest / model / "versions" / str(version))
    doc = {**manifest.to_dict(), "version": version}
    (dest / model / "versions" / str(version) / "manifest.json").write_text(json.dumps(doc, indent=2))
    return version


def seed_s3(uri: str, models: tuple[str, ...] = ("cnn",), *, aliases: bool = True) -> None:
    """Copy the shipped `models` into the S3 registry `uri` with the operator's tool, infra/seed_registry.py
    (it creates the bucket if needed). With `aliases=False` only versions and blobs go up: no alias is set."""
    with tempfile.TemporaryDirectory() as tmp:
        copy_shipped(Path(tmp), models)
        if not aliases:
            for model in models:
                shutil.rmtree(Path(tmp) / model / "aliases")
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
    """A new version whose weights differ slightly from `source_version` (so its blobs differ).

    Its golden logits are recomputed, then shifted by `golden_offset` (non-zero: a version
    whose recorded golden outputs its artifacts do not reproduce). Its ONNX graph is exported
    and checked against the true logits, as training does.
    """
    manifest, state = load_weights(registry, model, source_version)
    state = {k: v.clone() for k, v in state.items()}
    last_bias = [k for k in state if k.endswith("bias")][-1]
    state[last_bias] += nudge
    module = build_model(manifest, state)
    assert manifest.golden is not None
    true_golden = Golden(manifest.golden.images, predict_logits(module, manifest.golden.images).numpy())
    onnx = export_onnx_once(module, true_golden)
    golden = Golden(true_golden.images, true_golden.logits + golden_offset, true_golden.atol)
    keep = ("preprocessing", "data", "calibration", "not_a_digit")  # the nudge is far too small to change them
    metadata: dict[str, Any] = {k: v for k, v in manifest.extra.items() if k in keep}
    metadata["metrics"] = manifest.metrics
    return registry.publish(
        model,
        architecture=manifest.architecture,
        config=manifest.config,
        weights=weights_bytes(state),
        onnx=onnx,
        onnx_opset=OPSET,
        golden=golden,
        metadata=metadata,
    )


def blob_path(registry: ModelRegistry, model: str, version: int, kind: str = "onnx") -> Path:
    """Where a local registry keeps one of the version's artifacts ("onnx", what serves; or "weights")."""
    artifact = registry.manifest(model, version).artifact(kind)
    return Path(registry.uri) / artifact.key(model)


def png_bytes(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def png_b64(image: np.ndarray) -> str:
    return base64.b64encode(png_bytes(image)).decode()


def publish_network(
    registry: ModelRegistry,
    model: str,
    network: Any,
    metadata: dict[str, Any] | None = None,
    report: dict[str, bytes] | None = None,
    golden_images: np.ndarray | None = None,
) -> int:
    """Publish a torch network as training does: safetensors weights, golden outputs, a checked ONNX graph.

    `network` is a `digitserve.models` architecture (it has `.config`); the golden digits are
    MNIST-like random digits unless `golden_images` are given.
    """
    from digitserve.models import config_dict
    from digitserve.models.export import golden_outputs

    network = network.cpu().eval()
    if golden_images is None:
        golden_images = np.random.default_rng(0).integers(0, 256, (8, 28, 28), dtype=np.uint8)
    golden = golden_outputs(network, golden_images)
    arch = "vit" if type(network).__name__ == "ViT" else "cnn"
    return registry.publish(
        model,
        architecture=arch,
        config=config_dict(network),
        weights=weights_bytes(network.state_dict()),
        onnx=export_onnx_once(network, golden),
        onnx_opset=OPSET,
        golden=golden,
        metadata=metadata or {},
        report=report,
    )


def republish(
    registry: ModelRegistry,
    model: str,
    source_version: int,
    *,
    onnx: bytes | None = None,
    golden: Golden | None = None,
    metadata: dict[str, Any] | None = None,
    report: dict[str, bytes] | None = None,
) -> int:
    """A new version made of `source_version`'s artifacts and manifest, with what is given in place
    of its graph, golden outputs or metadata, and with `report` files."""
    manifest, weights = registry.read_artifact(model, source_version, "weights")
    _, source_onnx = registry.read_artifact(model, source_version, "onnx")
    assert manifest.onnx is not None and manifest.golden is not None
    return registry.publish(
        model,
        architecture=manifest.architecture,
        config=manifest.config,
        weights=weights,
        onnx=source_onnx if onnx is None else onnx,
        onnx_opset=manifest.onnx.opset or OPSET,
        golden=golden or manifest.golden,
        metadata={**manifest.extra, "metrics": manifest.metrics} if metadata is None else metadata,
        report=report,
    )


def publish_with_rule(registry: ModelRegistry, model: str, source_version: int, rule: dict[str, Any]) -> int:
    """A new version with the same artifacts as `source_version` but the calibration and
    not-a-digit entries in `rule` (an empty rule: a version published before either existed)."""
    manifest = registry.manifest(model, source_version)
    metadata = {k: v for k, v in manifest.extra.items() if k not in ("calibration", "not_a_digit")}
    metadata.update(rule, metrics=manifest.metrics)
    return republish(registry, model, source_version, metadata=metadata)
