"""Evaluate a registry version on the official MNIST test set; the last stdout line is JSON.

What is evaluated is what serves: the version's ONNX artifact under ONNX Runtime, with the
calibration and not-a-digit threshold its manifest records. Besides accuracy: test ECE and NLL
before and after calibration, the not-a-digit rates on MNIST test and on the held-out negatives,
and the robustness set (`--no-trust` skips these).

python training/evaluate.py --model cnn --alias production
python training/evaluate.py --model vit --version 2 --registry s3://bucket/prefix
"""

from __future__ import annotations

import argparse
import json
import sys

from digitserve.data import load_mnist
from digitserve.evaluation import evaluate_artifact, load_runtime, runtime_logits, trust_metrics
from digitserve.registry import ModelRegistry
from digitserve.reporting import run_reporting_errors
from digitserve.runtime.calibration import Calibration
from digitserve.synthetic import sets


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--version", type=int)
    which.add_argument("--alias")
    p.add_argument("--registry", help="registry URI (default: $DIGITSERVE_REGISTRY, else the shipped registry)")
    p.add_argument("--limit", type=int, help="evaluate on the first N test images only")
    p.add_argument("--full", action="store_true", help="include per-class metrics, confusion matrix, reliability bins")
    p.add_argument("--no-trust", action="store_true", help="accuracy only: no calibration, negatives or robustness")
    args = p.parse_args(argv)

    registry = ModelRegistry.open(args.registry)
    version = args.version if args.version is not None else registry.resolve_alias(args.model, args.alias)
    manifest, runtime = load_runtime(registry, args.model, version)  # sha256-verified ONNX artifact
    metrics, logits = evaluate_artifact(runtime, limit=args.limit)
    result = {"model": args.model, "version": version, "architecture": manifest.architecture, **metrics}
    if not args.no_trust:
        sizes = sets.NEGATIVE_COUNTS["held-out"], sets.ROBUSTNESS_COUNTS["test"]
        if args.limit:  # a quick look: smaller sets too
            sizes = min(args.limit, sizes[0]), min(args.limit, sizes[1])
        held_out, robust = sets.negatives("held-out", sizes[0]), sets.robustness_set("test", sizes[1])
        labels = load_mnist("test").labels[: len(logits)]
        trust = trust_metrics(
            Calibration.from_manifest(manifest.extra),
            logits,
            labels,
            runtime_logits(runtime, held_out.images),
            held_out.kinds,
            {name: runtime_logits(runtime, images) for name, images in robust.images.items()},
            robust.labels,
        )
        result.update(trust)
    if not args.full:
        result = {k: v for k, v in result.items() if k not in ("per_class", "confusion_matrix")}
        result.get("calibration", {}).pop("reliability_after", None)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(run_reporting_errors(main))
