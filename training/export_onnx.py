"""Give a version published before ONNX serving a new version that carries its ONNX artifact.

    python training/export_onnx.py --model cnn --version 1 [--registry URI]

Versions are immutable, so the ONNX graph cannot be added to version 1: this publishes version
n+1 with the same weights (the same blob, so the same torch outputs, checked against version 1's
recorded golden logits), its ONNX graph, and version 1's metrics, training record and report.
Move an alias to it through the gate as usual (`digitserve registry promote cnn n+1`).
"""

from __future__ import annotations

import argparse
import json
import sys

from digitserve.models.checkpoint import load_network, predict_logits, weights_bytes
from digitserve.models.export import OPSET, export_onnx
from digitserve.registry import ModelRegistry, RegistryError
from digitserve.reporting import run_reporting_errors


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--version", type=int, required=True)
    p.add_argument("--registry", help="registry URI (default: $DIGITSERVE_REGISTRY, else the shipped registry)")
    args = p.parse_args(argv)
    registry = ModelRegistry.open(args.registry)
    manifest, network = load_network(registry, args.model, args.version)  # sha256-verified weights
    golden = manifest.golden
    if golden is None:
        raise RegistryError(f"{args.model} v{args.version} records no golden outputs to check the export against")
    worst = golden.mismatch(predict_logits(network, golden.images).numpy())
    if worst is not None:
        raise RegistryError(f"the rebuilt network differs from v{args.version}'s golden logits by {worst:.3g}")
    report = {
        name: registry.read_report(args.model, args.version, name)
        for name in registry.list_report(args.model, args.version)
    }
    metadata = {**manifest.extra, "metrics": manifest.metrics, "republished_from": {"version": args.version}}
    version = registry.publish(
        args.model,
        architecture=manifest.architecture,
        config=manifest.config,
        weights=weights_bytes(network.state_dict()),
        onnx=export_onnx(network, golden),
        onnx_opset=OPSET,
        golden=golden,
        metadata=metadata,
        report=report,
    )
    print(f"published {args.model} v{version}: v{args.version}'s weights with their ONNX artifact")
    print(json.dumps({"model": args.model, "version": version, "from": args.version}))
    return 0


if __name__ == "__main__":
    sys.exit(run_reporting_errors(main))
