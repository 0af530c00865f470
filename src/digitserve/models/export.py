"""From a trained torch model to what serves: an ONNX graph that takes uint8 pixels.

`export_onnx` wraps the network in `ServingGraph` (uint8 (B, 28, 28) -> normalised float ->
logits), exports it with the dynamo exporter and a dynamic batch axis, and checks the graph
under ONNX Runtime against the torch model's golden outputs before anything is published.
"""

from __future__ import annotations

import contextlib
import io
import logging

import numpy as np
import torch
from torch import nn

from digitserve.imaging.mnist import MNIST_MEAN, MNIST_STD
from digitserve.models.checkpoint import predict_logits
from digitserve.registry import Golden
from digitserve.runtime import OnnxModel, RuntimeOptions

OPSET = 18
GOLDEN_COUNT = 8  # test digits whose logits are recorded so a server can check a loaded artifact
GOLDEN_ATOL = 1e-3  # logits; ONNX Runtime and torch differ by ~3e-6 on these models
MAX_BATCH = 4096


class ExportError(RuntimeError):
    """The ONNX graph could not be made, or it does not reproduce the torch model."""


class ServingGraph(nn.Module):
    """The network with its input normalisation: uint8 (B, 28, 28) -> logits (B, 10)."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = (pixels.to(torch.float32).unsqueeze(1) / 255.0 - MNIST_MEAN) / MNIST_STD  # (B, 1, 28, 28)
        return self.network(x)  # (B, 10)


def golden_outputs(model: nn.Module, images: np.ndarray) -> Golden:
    """A few fixed digits and the logits `model` gives them."""
    digits = np.ascontiguousarray(images[:GOLDEN_COUNT], np.uint8)
    return Golden(digits, predict_logits(model, digits).numpy(), GOLDEN_ATOL)


def export_onnx(model: nn.Module, golden: Golden) -> bytes:
    """The ONNX graph of `model` (eval mode, CPU), checked against `golden` under ONNX Runtime."""
    graph = ServingGraph(model.cpu().eval()).eval()
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    example = torch.zeros(2, 28, 28, dtype=torch.uint8)
    quiet = io.StringIO()
    logging.getLogger("torch.onnx").setLevel(logging.WARNING)
    try:
        with contextlib.redirect_stdout(quiet):
            program = torch.onnx.export(
                graph,
                (example,),
                dynamo=True,
                input_names=["pixels"],
                output_names=["logits"],
                dynamic_shapes={"pixels": {0: batch}},
                opset_version=OPSET,
            )
            assert program is not None
            program.optimize()
    except Exception as exc:
        raise ExportError(f"ONNX export failed: {exc}") from exc
    data = program.model_proto.SerializeToString()
    worst = golden.mismatch(OnnxModel(data, RuntimeOptions(intra_op_threads=1)).logits(golden.images))
    if worst is not None:
        raise ExportError(f"the ONNX graph differs from the torch model by {worst:.3g} on the golden digits")
    return data
