"""Add `test_samples.json` (what the version answered for each MNIST test image) to the report of a
version published before training wrote it, so the models pages can show its confusion matrix
cell by cell and compare it digit by digit. The version itself (manifest, artifacts) is unchanged:
the file is measured from its ONNX artifact with its own calibration, as a server answers.

python training/report_samples.py --model cnn --version 4 [--registry URI]
"""

from __future__ import annotations

import argparse
import sys

from digitserve.data import load_mnist
from digitserve.evaluation import evaluate_artifact, load_runtime
from digitserve.registry import ModelRegistry
from digitserve.registry.samples import NAME, make_test_samples
from digitserve.reporting import run_reporting_errors
from digitserve.runtime.calibration import Calibration


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--version", type=int, required=True)
    p.add_argument("--registry", help="registry URI (default: $DIGITSERVE_REGISTRY, else the shipped registry)")
    args = p.parse_args(argv)
    registry = ModelRegistry.open(args.registry)
    manifest, runtime = load_runtime(registry, args.model, args.version)  # sha256-verified ONNX artifact
    metrics, logits = evaluate_artifact(runtime)
    calibration = Calibration.from_manifest(manifest.extra)
    probabilities = calibration.probabilities(logits)
    test = load_mnist("test")
    data = make_test_samples(test.images, test.labels, probabilities, calibration.is_digit(probabilities))
    registry.store.put(f"{args.model}/versions/{args.version}/report/{NAME}", data)
    print(f"{args.model} v{args.version}: {NAME} written ({len(data):,} bytes, accuracy {metrics['accuracy']:.4f})")
    return 0


if __name__ == "__main__":
    sys.exit(run_reporting_errors(main))
