"""Versions that load and pass every check a server makes, then misbehave on real digits.

A server accepts a version once its graph runs on blank images (the warm-up) and reproduces the
manifest's golden logits; these versions record blank golden images, so they pass both. Then:

- `failing`: the forward pass raises on any image with ink (the logits are reshaped to a width
  that depends on whether any pixel is lit), as a graph with a shape bug would;
- `slow`: every batch also multiplies a 1024x1024 identity matrix by itself, as many times as
  this machine needs for `SLOW_S` (timed when the version is made; the result is folded into the
  logits as an exact zero, so the answers are production's), as a version exported without its
  optimisations would crawl.
"""

from __future__ import annotations

import statistics
import time
from typing import Literal

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from digitserve.registry import Golden, ModelRegistry
from digitserve.runtime import OnnxModel, RuntimeOptions
from support.registries import republish

Fault = Literal["failing", "slow"]
SLOW_S = 0.15  # what the slow fault adds to every batch, on one core
SIZE = 1024


def publish_faulty(registry: ModelRegistry, model: str, source_version: int, fault: Fault) -> int:
    """A new version of `model`: `source_version`'s graph with `fault` built in, blank golden images."""
    _, graph = registry.read_artifact(model, source_version, "onnx")
    faulty = with_fault(graph, fault)
    if fault == "slow":
        added = batch_seconds(faulty) - batch_seconds(graph)
        # 6 is ~0.15 s on one core here; a faster core gets more (never fewer: a busy moment must
        # not make the fault milder than intended)
        matmuls = max(6, int(np.ceil(6 * SLOW_S / added)))
        if matmuls > 6:
            faulty = with_fault(graph, fault, matmuls)
            added = batch_seconds(faulty) - batch_seconds(graph)
        assert added >= SLOW_S * 0.8, f"the slow fault adds only {added:.3f} s a batch here"
    blank = np.zeros((8, 28, 28), np.uint8)
    golden = Golden(blank, OnnxModel(faulty, RuntimeOptions(intra_op_threads=1)).logits(blank))
    manifest = registry.manifest(model, source_version)
    metadata = {**manifest.extra, "metrics": manifest.metrics, "fault": fault}
    return republish(registry, model, source_version, onnx=faulty, golden=golden, metadata=metadata)


def batch_seconds(graph: bytes) -> float:
    """The median time of a one-digit batch on one intra-op thread, as a worker of the default layout runs it."""
    session, digit = OnnxModel(graph, RuntimeOptions(intra_op_threads=1)), np.full((1, 28, 28), 200, np.uint8)
    session.logits(digit)
    times = []
    for _ in range(3):
        start = time.perf_counter()
        session.logits(digit)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def with_fault(graph: bytes, fault: Fault, matmuls: int = 6) -> bytes:
    """The graph (uint8 `pixels` (B, 28, 28) -> float `logits` (B, 10)) with `fault` built in."""
    proto = onnx.load_from_string(graph)
    body = proto.graph
    [output] = body.output
    [pixels] = body.input
    names = {n for node in body.node for n in (*node.input, *node.output)} | {i.name for i in body.initializer}
    assert not any(n.startswith("fault/") for n in names), "the graph already has a fault"
    assert not any(output.name in node.input for node in body.node), "the logits feed no other node"

    def n(name: str) -> str:
        return f"fault/{name}"

    inner = n("inner_logits")
    for node in body.node:
        node.output[:] = [inner if name == output.name else name for name in node.output]
    ink = [helper.make_node("Cast", [pixels.name], [n("ink")], to=TensorProto.FLOAT)]
    zero = numpy_helper.from_array(np.array(0.0, np.float32), n("zero"))
    if fault == "failing":
        nodes = [
            *ink,
            helper.make_node("ReduceMax", [n("ink")], [n("ink_max")], keepdims=0),
            helper.make_node("Greater", [n("ink_max"), n("zero")], [n("lit")]),
            helper.make_node("Cast", [n("lit")], [n("lit_i")], to=TensorProto.INT64),
            helper.make_node("Unsqueeze", [n("lit_i"), n("axis0")], [n("lit_1")]),
            helper.make_node("Concat", [n("zero_i"), n("lit_1")], [n("widen")], axis=0),
            helper.make_node("Shape", [inner], [n("shape")]),
            helper.make_node("Add", [n("shape"), n("widen")], [n("bad_shape")]),
            helper.make_node("Reshape", [inner, n("bad_shape")], [output.name]),  # width 11 once lit: raises
        ]
        constants = [
            zero,
            numpy_helper.from_array(np.array([0], np.int64), n("zero_i")),
            numpy_helper.from_array(np.array([0], np.int64), n("axis0")),
        ]
    else:
        chain = [helper.make_node("Add", [n("eye"), n("nothing")], [n("m0")])]
        for i in range(matmuls):
            chain.append(helper.make_node("MatMul", [n(f"m{i}"), n("eye")], [n(f"m{i + 1}")]))
        nodes = [
            *ink,
            helper.make_node("ReduceSum", [n("ink")], [n("ink_sum")], keepdims=0),
            helper.make_node("Mul", [n("ink_sum"), n("zero")], [n("nothing")]),  # depends on the input: never folded
            *chain,
            helper.make_node("ReduceSum", [n(f"m{matmuls}")], [n("trace")], keepdims=0),  # 1024, finite
            helper.make_node("Mul", [n("trace"), n("zero")], [n("none")]),
            helper.make_node("Add", [inner, n("none")], [output.name]),
        ]
        constants = [zero, numpy_helper.from_array(np.eye(SIZE, dtype=np.float32), n("eye"))]
    body.node.extend(nodes)
    body.initializer.extend(constants)
    onnx.checker.check_model(proto)
    return proto.SerializeToString()
