"""Loading one version to serve: fetch, verify, build the session, warm up, check golden outputs.

A version takes traffic only after every step passed; a failure names its step, so an
operator sees in `GET /v1/models/{model}` and in metrics what went wrong.
"""

from __future__ import annotations

import logging

import numpy as np

from digitserve.registry import (
    IntegrityError,
    Manifest,
    MissingArtifactError,
    ModelRegistry,
    NotFoundError,
    RegistryError,
    StoreUnavailableError,
)
from digitserve.runtime.calibration import Calibration, CalibrationError
from digitserve.runtime.reference import AnswerReference
from digitserve.runtime.session import OnnxModel, RuntimeOptions, Servable

log = logging.getLogger(__name__)
STEPS = ("fetch", "verify", "build", "warmup", "golden")


class LoadError(RuntimeError):
    """A version failed a loading step (one of STEPS); `missing` when the version does not exist."""

    def __init__(self, step: str, message: str, *, missing: bool = False, transient: bool = False) -> None:
        super().__init__(f"{step}: {message}")
        self.step = step
        self.message = message
        self.missing = missing
        self.transient = transient  # the registry could not be reached: trying again later may work


def _fetch(registry: ModelRegistry, model: str, version: int) -> tuple[Manifest, bytes]:
    try:
        return registry.read_artifact(model, version, "onnx")
    except IntegrityError as exc:
        raise LoadError("verify", str(exc)) from exc
    except NotFoundError as exc:
        raise LoadError("fetch", str(exc), missing=True) from exc
    except StoreUnavailableError as exc:
        raise LoadError("fetch", str(exc), transient=True) from exc
    except (MissingArtifactError, RegistryError) as exc:
        raise LoadError("fetch", str(exc)) from exc


def load_servable(
    registry: ModelRegistry, model: str, version: int, options: RuntimeOptions, warmup_batch: int = 64
) -> Servable:
    """Fetch, verify (sha256), build, warm up and golden-check a version. Runs in a thread."""
    manifest, graph = _fetch(registry, model, version)
    try:
        calibration = Calibration.from_manifest(manifest.extra)
    except CalibrationError as exc:
        raise LoadError("verify", f"manifest: {exc}") from exc
    try:
        runtime = OnnxModel(graph, options)
    except Exception as exc:  # a damaged graph or an unavailable provider: never serves
        raise LoadError("build", f"ONNX Runtime cannot load the graph: {str(exc)[:300]}") from exc
    try:
        runtime.logits(np.zeros((warmup_batch, 28, 28), np.uint8))
    except Exception as exc:
        raise LoadError("warmup", f"forward pass failed: {str(exc)[:300]}") from exc
    golden = manifest.golden
    if golden is None:
        raise LoadError("golden", "the manifest records no golden outputs to check the artifact against")
    worst = golden.mismatch(runtime.logits(golden.images))
    if worst is not None:
        raise LoadError("golden", f"outputs differ from the recorded golden logits by {worst:.3g}")
    log.info("loaded %s v%d (onnx sha256 %s...)", model, version, manifest.artifact("onnx").sha256[:12])
    reference = AnswerReference.from_manifest(manifest.extra, f"{model} v{version}")
    return Servable(model, version, manifest, runtime, calibration, reference=reference, graph=graph)
