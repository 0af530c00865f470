"""Accuracy of a registry model on photo-like images, with and without `prepare`, and on MNIST.

    python bench/preprocess_accuracy.py                      # cnn@production, 1000 photo-like images
    python bench/preprocess_accuracy.py --registry /tmp/dev-reg --version 1 -n 300

Prints one JSON document: accuracies on the photo-like set through `prepare`, through a naive
resize to 28x28 (as is, and inverted), and on the official 10k test set raw vs `mnist_style`.
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the test suite's photo-like set
from support.photolike import make_photo_set, prepare_samples

from digitserve.data import load_mnist
from digitserve.evaluation import load_runtime, runtime_logits
from digitserve.imaging.mnist import mnist_style
from digitserve.registry import ModelRegistry


def naive(data: bytes) -> np.ndarray:
    """What a person would do without this module: open, grayscale, resize to 28x28."""
    return np.asarray(Image.open(io.BytesIO(data)).convert("L").resize((28, 28), Image.Resampling.BILINEAR))


def accuracy(model: Any, images: np.ndarray, labels: np.ndarray, refused: np.ndarray | None = None) -> float:
    """Top-1 accuracy; images that were `refused` (NoDigitError) count as errors."""
    correct = runtime_logits(model, images).argmax(1) == labels
    if refused is not None:
        correct &= ~refused
    return float(correct.mean())


def photo_results(model: Any, n: int, seed: int) -> dict[str, Any]:
    samples = make_photo_set(n, seed=seed)
    labels = np.array([label for _, label in samples])
    start = time.perf_counter()
    prepared, refused = prepare_samples(samples)
    per_image_ms = (time.perf_counter() - start) / len(samples) * 1000
    raw = np.stack([naive(data) for data, _ in samples])
    canvas = np.array([data.startswith(b"\x89PNG") for data, _ in samples])  # photos are JPEGs
    return {
        "n": len(samples),
        "seed": seed,
        "prepare": accuracy(model, prepared, labels, refused),
        "prepare_photos_only": accuracy(model, prepared[~canvas], labels[~canvas], refused[~canvas]),
        "prepare_canvas_only": accuracy(model, prepared[canvas], labels[canvas], refused[canvas]),
        "prepare_refused_no_digit": int(refused.sum()),
        "prepare_ms_per_image": round(per_image_ms, 2),
        "naive_resize": accuracy(model, raw, labels),
        "naive_resize_inverted": accuracy(model, 255 - raw, labels),
    }


def mnist_results(model: Any) -> dict[str, Any]:
    test = load_mnist("test")
    styled = np.stack([mnist_style(image) for image in test.images])
    return {
        "n": len(test),
        "raw": accuracy(model, test.images, test.labels),
        "mnist_style": accuracy(model, styled, test.labels),
        "unchanged_images": int((styled == test.images).all(axis=(1, 2)).sum()),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--registry", help="registry URI (default: $DIGITSERVE_REGISTRY or ./registry)")
    p.add_argument("--model", default="cnn")
    p.add_argument("--alias", default="production")
    p.add_argument("--version", type=int, help="a version number instead of the alias")
    p.add_argument("-n", type=int, default=1000, help="photo-like images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, help="also merge the report into this JSON file, keyed by seed")
    args = p.parse_args()
    registry = ModelRegistry.open(args.registry)
    version = args.version or registry.resolve_alias(args.model, args.alias)
    _, model = load_runtime(registry, args.model, version)  # the ONNX artifact: what serves
    report = {
        "model": args.model,
        "version": version,
        "photolike": photo_results(model, args.n, args.seed),
        "mnist_test": mnist_results(model),
    }
    print(json.dumps(report, indent=2))
    if args.out is not None:
        doc = json.loads(args.out.read_text()) if args.out.exists() else {}
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
        doc[f"seed {args.seed}"] = {**report, "n": args.n, "commit": commit, "date": time.strftime("%Y-%m-%d")}
        args.out.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
