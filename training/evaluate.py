"""Evaluate a registry version on the official MNIST test set; the last stdout line is JSON.

What is evaluated is what serves: the version's ONNX artifact under ONNX Runtime.

python training/evaluate.py --model cnn --alias production
python training/evaluate.py --model vit --version 2 --registry s3://bucket/prefix
"""

from __future__ import annotations

import argparse
import json
import sys

from digitserve.cli import run_reporting_errors
from digitserve.evaluation import evaluate_artifact, load_runtime
from digitserve.registry import ModelRegistry


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--version", type=int)
    which.add_argument("--alias")
    p.add_argument("--registry", help="registry URI (default: $DIGITSERVE_REGISTRY, else the shipped registry)")
    p.add_argument("--limit", type=int, help="evaluate on the first N test images only")
    p.add_argument("--full", action="store_true", help="include per-class metrics and the confusion matrix")
    args = p.parse_args(argv)

    registry = ModelRegistry.open(args.registry)
    version = args.version if args.version is not None else registry.resolve_alias(args.model, args.alias)
    manifest, runtime = load_runtime(registry, args.model, version)  # sha256-verified ONNX artifact
    metrics, _ = evaluate_artifact(runtime, limit=args.limit)
    result = {"model": args.model, "version": version, "architecture": manifest.architecture, **metrics}
    if not args.full:
        result = {k: v for k, v in result.items() if k not in ("per_class", "confusion_matrix")}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(run_reporting_errors(main))
