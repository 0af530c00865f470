"""Versions that load and pass every check a server makes, then misbehave on real digits.

A server accepts a version once its graph runs on blank images (the warm-up) and reproduces the
manifest's golden logits; these versions record blank golden images, so they pass both. Then:

- `failing`: the forward pass raises on any image with ink (the logits are reshaped to a width
  that depends on whether any pixel is lit), as a graph with a shape bug would;
- `slow`: every batch also multiplies a 1024x1024 matrix by itself `SLOW_MATMULS` times (the
  result is folded into the logits as an exact zero, so the answers are production's), as a
  version exported without its optimisations would crawl.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from digitserve.registry import Golden, ModelRegistry
from digitserve.runtime import OnnxModel, RuntimeOptions
from support.registries import republish

Fault = Literal["failing", "slow"]
SLOW_MATMULS = 6  # about 25 ms each on one core here: a batch takes ~0.15 s more than production's
SIZE = 1024


def publish_faulty(registry: ModelRegistry, model: str, source_version: int, fault: Fault) -> int:
    """A new version of `model`: `source_version`'s graph with `fault` built in, blank golden images."""
    _, graph = registry.read_artifact(model, source_version, "onnx")
    faulty = with_fault(graph, fault)
    blank = np.zeros((8, 28, 28), np.uint8)
    golden = Golden(blank, OnnxModel(faulty, RuntimeOptions(intra_op_threads=1)).logits(blank))
    manifest = registry.manifest(model, source_version)
    metadata = {**manifest.extra, "metrics": manifest.metrics, "fault": fault}
    return republish(registry, model, source_version, onnx=faulty, golden=golden, metadata=metadata)


def with_fault(graph: bytes, fault: Fault) -> bytes:
    """The graph (uint8 `pixels` (B, 28, 28) -> float `logits` (B, 10)) with `fault` built in."""
    proto = onnx.load_from_string(graph)
    body = proto.graph
    [output] = body.output
    [pixels] = body.input
    inner = "inner_logits"
    for node in body.node:
        node.output[:] = [inner if name == output.name else name for name in node.output]
    ink = [helper.make_node("Cast", [pixels.name], ["ink_f"], to=TensorProto.FLOAT)]
    if fault == "failing":
        nodes = [
            *ink,
            helper.make_node("ReduceMax", ["ink_f"], ["ink_max"], keepdims=0),
            helper.make_node("Greater", ["ink_max", "zero_f"], ["lit"]),
            helper.make_node("Cast", ["lit"], ["lit_i"], to=TensorProto.INT64),
            helper.make_node("Unsqueeze", ["lit_i", "axis0"], ["lit_1"]),
            helper.make_node("Concat", ["zero_i", "lit_1"], ["widen"], axis=0),
            helper.make_node("Shape", [inner], ["shape"]),
            helper.make_node("Add", ["shape", "widen"], ["bad_shape"]),
            helper.make_node("Reshape", [inner, "bad_shape"], [output.name]),
        ]
        constants = [
            numpy_helper.from_array(np.array(0.0, np.float32), "zero_f"),
            numpy_helper.from_array(np.array([0], np.int64), "zero_i"),
            numpy_helper.from_array(np.array([0], np.int64), "axis0"),
        ]
    else:
        chain = [helper.make_node("Add", ["eye", "nothing"], ["m0"])]
        for i in range(SLOW_MATMULS):
            chain.append(helper.make_node("MatMul", [f"m{i}", "eye"], [f"m{i + 1}"]))
        nodes = [
            *ink,
            helper.make_node("ReduceSum", ["ink_f"], ["ink_sum"], keepdims=0),
            helper.make_node("Mul", ["ink_sum", "zero_f"], ["nothing"]),  # depends on the input: never folded
            *chain,
            helper.make_node("ReduceSum", [f"m{SLOW_MATMULS}"], ["trace"], keepdims=0),  # 1024, finite
            helper.make_node("Mul", ["trace", "zero_f"], ["none"]),
            helper.make_node("Add", [inner, "none"], [output.name]),
        ]
        constants = [
            numpy_helper.from_array(np.array(0.0, np.float32), "zero_f"),
            numpy_helper.from_array(np.eye(SIZE, dtype=np.float32), "eye"),
        ]
    body.node.extend(nodes)
    body.initializer.extend(constants)
    onnx.checker.check_model(proto)
    return proto.SerializeToString()
