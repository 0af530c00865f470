"""The compute limit: images/s of a model's forward pass in-process, with no HTTP and no decoding.

Times `Servable.probabilities` (uint8 in, probabilities out: exactly what the batcher calls, the
version's ONNX artifact under ONNX Runtime) at each batch size, on real MNIST test digits, with
the server's ONNX Runtime thread count.

    .venv/bin/python bench/compute.py --registry /tmp/reg --model cnn --batch-sizes 1 16 64
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable

import numpy as np

from digitserve.data import load_mnist
from digitserve.registry import ModelRegistry
from digitserve.runtime import RuntimeOptions, load_servable


def images_per_second(forward: Callable[[np.ndarray], np.ndarray], images: np.ndarray, seconds: float) -> float:
    forward(images)  # warm
    count, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        forward(images)
        count += 1
    return count * len(images) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--registry", required=True)
    parser.add_argument("--model", default="cnn")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--threads", type=int, default=None, help="ONNX Runtime threads (default: every core)")
    args = parser.parse_args()
    threads = args.threads or os.cpu_count() or 1
    registry = ModelRegistry.open(args.registry)
    version = registry.resolve_alias(args.model, "production")
    servable = load_servable(registry, args.model, version, RuntimeOptions(intra_op_threads=threads))
    digits = load_mnist("test").images
    forward = servable.probabilities
    result = {str(b): images_per_second(forward, digits[:b].copy(), args.seconds) for b in args.batch_sizes}
    print(json.dumps({"model": args.model, "threads": threads, "images_s": result}))


if __name__ == "__main__":
    main()
