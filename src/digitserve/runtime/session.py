"""An ONNX graph under ONNX Runtime: uint8 digits (B, 28, 28) in, logits (B, 10) out; and a
`Servable`, a verified version's session with its calibration -- what a batcher calls.

The graph takes the MNIST-style pixels themselves (normalisation is part of the exported graph),
so nothing between the decoder and the runtime needs to know the model's input statistics.
ONNX Runtime releases the GIL for the whole run, so a forward pass in a worker thread leaves
the event loop free.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnxruntime as ort

from digitserve.registry import Manifest
from digitserve.runtime.calibration import Calibration
from digitserve.runtime.reference import AnswerReference

INPUT_NAME = "pixels"
OUTPUT_NAME = "logits"


@dataclass(frozen=True)
class RuntimeOptions:
    providers: Sequence[str] = ("CPUExecutionProvider",)
    intra_op_threads: int | None = None  # None: every core


class OnnxModel:
    """One ONNX Runtime session. `run` is thread-safe (ONNX Runtime sessions are)."""

    def __init__(self, graph: bytes, options: RuntimeOptions | None = None) -> None:
        options = options or RuntimeOptions()
        available = set(ort.get_available_providers())
        providers = [p for p in options.providers if p in available]
        if not providers:
            raise ValueError(
                f"none of the ONNX Runtime providers {list(options.providers)} is available here "
                f"(available: {sorted(available)})"
            )
        session_options = ort.SessionOptions()
        session_options.intra_op_num_threads = options.intra_op_threads or os.cpu_count() or 1
        session_options.inter_op_num_threads = 1
        session_options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session_options.log_severity_level = 3  # errors only
        self.session = ort.InferenceSession(graph, sess_options=session_options, providers=providers)
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if [i.name for i in inputs] != [INPUT_NAME] or OUTPUT_NAME not in [o.name for o in outputs]:
            raise ValueError(f"the graph must take '{INPUT_NAME}' (uint8 [B, 28, 28]) and give '{OUTPUT_NAME}'")
        self.providers = self.session.get_providers()

    def logits(self, images: np.ndarray) -> np.ndarray:
        """uint8 (B, 28, 28) -> float32 logits (B, 10)."""
        (out,) = self.session.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(images, np.uint8)})
        return np.asarray(out, np.float32)


@dataclass
class Servable:
    """A verified version and its runtime: what a batcher calls for each batch."""

    model: str
    version: int
    manifest: Manifest
    runtime: OnnxModel
    calibration: Calibration = field(default_factory=Calibration)
    reference: AnswerReference | None = None  # what it answers on validation data (the drift gauge's)
    loaded_at: float = field(default_factory=time.time)
    graph: bytes = field(default=b"", repr=False)  # the verified ONNX graph (for a comparison process)

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """uint8 (B, 28, 28) -> calibrated class probabilities (B, 10), float32."""
        return self.calibration.probabilities(self.runtime.logits(images))

    def summary(self) -> dict[str, Any]:
        onnx = self.manifest.onnx
        return {
            "version": self.version,
            "architecture": self.manifest.architecture,
            "weights_sha256": self.manifest.weights.sha256,
            "onnx_sha256": onnx.sha256 if onnx else None,
            "providers": self.runtime.providers,
            "calibration": self.calibration.describe(),
            "metrics": self.manifest.metrics,
            "created_at": self.manifest.created_at,
            "loaded_at": self.loaded_at,
        }
