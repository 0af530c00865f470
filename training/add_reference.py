"""Add the answers reference (`answers_reference`: what the version answers on its validation
split, which the server's drift gauge compares live answers with) to a version published before
training measured it. Measured from its ONNX artifact with its own calibration, as a server
answers, on the validation split training held out (`train_val_split`). Nothing the version has
changes: the field is added, never replaced (`ModelRegistry.add_to_manifest`).

python training/add_reference.py --model cnn --version 4 [--registry URI]
"""

from __future__ import annotations

import argparse
import sys

from digitserve.data import load_mnist, train_val_split
from digitserve.evaluation import load_runtime, runtime_logits
from digitserve.registry import ModelRegistry
from digitserve.reporting import run_reporting_errors
from digitserve.runtime.calibration import Calibration
from digitserve.runtime.reference import MANIFEST_KEY, AnswerReference


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--version", type=int, required=True)
    p.add_argument("--registry", help="registry URI (default: $DIGITSERVE_REGISTRY, else the shipped registry)")
    args = p.parse_args(argv)
    registry = ModelRegistry.open(args.registry)
    manifest, runtime = load_runtime(registry, args.model, args.version)  # sha256-verified ONNX artifact
    train = load_mnist("train")
    training = manifest.extra.get("training")
    val_size = int(training.get("val_size", 5000)) if isinstance(training, dict) else 5000
    _, val = train_val_split(len(train.images), val_size, seed=0)  # as training/loop.py held it out
    calibration = Calibration.from_manifest(manifest.extra)
    probabilities = calibration.probabilities(runtime_logits(runtime, train.images[val]))
    reference = AnswerReference.measure(
        probabilities,
        calibration.is_digit(probabilities),
        f"validation split ({len(val)} MNIST training images held out of training), added after publishing",
    )
    registry.add_to_manifest(args.model, args.version, MANIFEST_KEY, reference.to_dict())
    print(f"{args.model} v{args.version}: {MANIFEST_KEY} added: {reference.to_dict()['answers']}")
    return 0


if __name__ == "__main__":
    sys.exit(run_reporting_errors(main))
