"""One training step of each architecture, float32 against bfloat16 autocast, on this machine's CPU.

The recipes (`training/recipe.py`) train the CNN under bfloat16 autocast and the ViT in float32.
Whether bfloat16 pays depends on the CPU (matrix units such as Intel's AMX make it faster; without
them it is emulated and slower), so the README quotes this file's figures with the CPU they were
measured on. A step is what `training/loop.py` does per batch: forward (autocast or not), the
loss in float32, backward, AdamW; batches of the recipe's size (128 digits + 32 negatives), on
all cores, the median of `--steps` steps after warm-up steps, the two precisions interleaved.

    .venv/bin/python bench/train_step.py [--steps 20]   # writes bench/train_step_results.json
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import harness as h
import torch
import torch.nn.functional as F

from digitserve.models import create_model
from digitserve.training.recipe import RECIPES, TrainConfig

HERE = Path(__file__).resolve().parent
WARM_UP = 3


def step_seconds(arch: str, bf16: bool, steps: int, seed: int = 0) -> list[float]:
    torch.manual_seed(seed)
    cfg = TrainConfig(arch=arch, **{k: v for k, v in RECIPES[arch].items() if k != "bf16"})
    model = create_model(arch, **cfg.model).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    n = cfg.batch_size + cfg.negatives_per_batch
    x, y = torch.randn(n, 1, 28, 28), torch.randint(10, (cfg.batch_size,))
    times = []
    for _ in range(WARM_UP + steps):
        started = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(x)
        logits = logits.float()
        loss = F.cross_entropy(logits[: cfg.batch_size], y) - F.log_softmax(logits[cfg.batch_size :], 1).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - started)
    return times[WARM_UP:]


def measure(steps: int, rounds: int) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    for arch in ("cnn", "vit"):
        seconds: dict[str, list[float]] = {"float32": [], "bfloat16": []}
        for _ in range(rounds):  # interleaved: a neighbour's load falls on both alike
            seconds["float32"] += step_seconds(arch, False, steps)
            seconds["bfloat16"] += step_seconds(arch, True, steps)
        medians = {k: statistics.median(v) for k, v in seconds.items()}
        figures[arch] = {
            "recipe_bf16": bool(RECIPES[arch].get("bf16", False)),
            "float32_ms": round(1000 * medians["float32"], 1),
            "bfloat16_ms": round(1000 * medians["bfloat16"], 1),
            "bfloat16_speedup": round(medians["float32"] / medians["bfloat16"], 2),
        }
        print(f"{arch}: {figures[arch]}", file=sys.stderr)
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=HERE / "train_step_results.json")
    args = parser.parse_args()
    cpu_flags = Path("/proc/cpuinfo").read_text()
    doc = {
        "results": measure(args.steps, args.rounds),
        "steps": args.steps,
        "rounds": args.rounds,
        "threads": torch.get_num_threads(),
        "amx": " amx_bf16 " in cpu_flags.replace("\n", " "),
        "avx512_bf16": " avx512_bf16 " in cpu_flags.replace("\n", " "),
    }
    return h.write_results(args.out, doc)


if __name__ == "__main__":
    sys.exit(main())
