"""CNN vs ViT on the MNIST test set: accuracy, per-class differences, disagreements, speed.

    python training/compare.py                       # production versions of cnn and vit
    python training/compare.py --a cnn:3 --b vit:2   # explicit versions

Writes `training/reports/compare.md` and `training/reports/compare_disagreements.png`.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from digitserve.data import load_mnist
from digitserve.evaluation import classification_metrics
from digitserve.models.checkpoint import load_network, predict_logits
from digitserve.registry import ModelRegistry
from digitserve.reporting import run_reporting_errors
from digitserve.training.reports import gallery_png

REPORTS = Path(__file__).parent / "reports"


def positive(kind: type[int] | type[float]) -> Callable[[str], float]:
    """An argparse type: a number of `kind` above zero."""

    def parse(text: str) -> float:
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be above 0, not {text}")
        return value

    return parse


def resolve(registry: ModelRegistry, spec: str) -> tuple[str, int]:
    """'cnn' (its production alias) or 'cnn:3' (version 3)."""
    name, _, version = spec.partition(":")
    return name, int(version) if version else registry.resolve_alias(name, "production")


def images_per_second(model: torch.nn.Module, images: np.ndarray, batch_size: int, seconds: float) -> float:
    batch = images[:batch_size]
    predict_logits(model, batch, batch_size)  # warm up
    runs, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        predict_logits(model, batch, batch_size)
        runs += 1
    return runs * len(batch) / (time.perf_counter() - start)


def compare(
    registry: ModelRegistry,
    a: tuple[str, int],
    b: tuple[str, int],
    speed_seconds: float = 2.0,
    limit: int | None = None,
) -> dict[str, Any]:
    test = load_mnist("test")
    images, labels = test.images[:limit], test.labels[:limit]
    out: dict[str, Any] = {}
    for key, (name, version) in (("a", a), ("b", b)):
        manifest, model = load_network(registry, name, version)
        preds = predict_logits(model, images).argmax(1).numpy()
        out[key] = {
            "name": f"{name} v{version}",
            "arch": manifest.architecture,
            "preds": preds,
            "metrics": classification_metrics(labels, preds),
            "params": sum(p.numel() for p in model.parameters()),
            "ips_1": images_per_second(model, images, 1, speed_seconds),
            "ips_256": images_per_second(model, images, 256, speed_seconds),
        }
    out["labels"], out["images"] = labels, images
    return out


def write_report(result: dict[str, Any], path: Path) -> str:
    a, b, labels = result["a"], result["b"], result["labels"]
    ok_a, ok_b = a["preds"] == labels, b["preds"] == labels
    only_a, only_b = np.flatnonzero(ok_a & ~ok_b), np.flatnonzero(ok_b & ~ok_a)
    both_wrong = np.flatnonzero(~ok_a & ~ok_b)
    lines = [
        f"# {a['name']} vs {b['name']} on the MNIST test set ({len(labels):,} images)",
        "",
        f"| | {a['name']} | {b['name']} |",
        "|---|---|---|",
        f"| accuracy | {a['metrics']['accuracy']:.4f} | {b['metrics']['accuracy']:.4f} |",
        f"| errors | {a['metrics']['errors']} | {b['metrics']['errors']} |",
        f"| parameters | {a['params']:,} | {b['params']:,} |",
        f"| images/s, batch 1 | {a['ips_1']:.0f} | {b['ips_1']:.0f} |",
        f"| images/s, batch {min(256, len(labels))} | {a['ips_256']:.0f} | {b['ips_256']:.0f} |",
        "",
        f"Right only by {a['name']}: {len(only_a)}; right only by {b['name']}: {len(only_b)}; "
        f"wrong by both: {len(both_wrong)}.",
        "",
        "| digit | recall A | recall B | B − A |",
        "|---|---|---|---|",
    ]
    for c in range(10):
        ra, rb = a["metrics"]["per_class"][str(c)]["recall"], b["metrics"]["per_class"][str(c)]["recall"]
        lines.append(f"| {c} | {ra:.4f} | {rb:.4f} | {rb - ra:+.4f} |")
    picture = path.with_name("compare_disagreements.png")
    idx = np.concatenate([only_a, only_b])[:60]
    captions = [f"{labels[i]}: {a['preds'][i]} / {b['preds'][i]}" for i in idx]
    title = f"true: {a['name']} / {b['name']} (first {len(only_a)} right only by A, then right only by B)"
    picture.write_bytes(gallery_png([result["images"][i] for i in idx], captions, title))
    lines += ["", f"![disagreements]({picture.name})", ""]
    text = "\n".join(lines)
    path.write_text(text)
    return text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--a", default="cnn", help="model[:version] (default: cnn production)")
    p.add_argument("--b", default="vit", help="model[:version] (default: vit production)")
    p.add_argument("--registry")
    p.add_argument("--out", type=Path, default=REPORTS / "compare.md")
    p.add_argument(
        "--speed-seconds", type=positive(float), default=2.0, help="how long each images/s figure is measured"
    )
    p.add_argument("--limit", type=positive(int), help="compare on the first N test images (default: all 10,000)")
    args = p.parse_args(argv)
    registry = ModelRegistry.open(args.registry)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    result = compare(registry, resolve(registry, args.a), resolve(registry, args.b), args.speed_seconds, args.limit)
    print(write_report(result, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(run_reporting_errors(main))
