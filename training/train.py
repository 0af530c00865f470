"""Train a CNN or ViT on MNIST, evaluate it once on the test set, export ONNX, publish a version.

    python training/train.py --arch cnn                       # full run, ~15 min on 2 CPU cores
    python training/train.py --arch vit --smoke               # seconds, for tests and demos
    torchrun --nproc_per_node=2 training/train.py --arch cnn  # data-parallel (gloo on CPU)

Reads top to bottom: config, data, model, loop, evaluation, export, publish.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from datetime import timedelta
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from augment import AugmentedDigits
from provenance import git_commit, hardware
from reports import confusion_matrix_png, curves_png, misclassified_png
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from digitserve.cli import run_reporting_errors
from digitserve.data import MNISTSplit, load_mnist, train_val_split
from digitserve.evaluation import metrics_from_logits
from digitserve.models import config_dict, create_model
from digitserve.models.checkpoint import predict_logits, to_model_input, weights_bytes
from digitserve.models.export import OPSET, export_onnx, golden_outputs
from digitserve.preprocess import PREPROCESSING
from digitserve.registry import ModelRegistry


@dataclass
class TrainConfig:
    """The CNN recipe; RECIPES holds what another architecture changes; flags override both."""

    arch: str = "cnn"
    name: str | None = None
    epochs: int = 12
    batch_size: int = 128
    lr: float = 3e-3
    weight_decay: float = 5e-2
    label_smoothing: float = 0.05
    seed: int = 0
    val_size: int = 5000
    registry: str | None = None  # None: DIGITSERVE_REGISTRY, else the shipped registry
    smoke: bool = False
    limit_train: int | None = None  # train on the first N images (smoke runs, tests)
    limit_test: int | None = None
    model: dict[str, Any] = field(default_factory=dict)


# What each architecture changes from TrainConfig's defaults (see README -> The models).
RECIPES: dict[str, dict[str, Any]] = {
    "cnn": {},
    "vit": {
        "epochs": 25,
        "lr": 2e-3,
        "model": {
            "embed_dim": 64,
            "depth": 6,
            "num_heads": 4,
            "mlp_ratio": 3.0,
            "drop_rate": 0.0,
            "drop_path_rate": 0.05,
        },
    },
}
SMOKE = {"epochs": 1, "limit_train": 512, "limit_test": 1000, "val_size": 256}


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", choices=sorted(RECIPES), required=True)
    p.add_argument("--name", help="model name in the registry (default: the architecture)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--registry", help="registry URI (default: $DIGITSERVE_REGISTRY, else the shipped registry)")
    p.add_argument("--smoke", action="store_true", help="a few hundred images, one epoch: seconds")
    p.add_argument("--limit-train", type=int, help="train on the first N training images")
    p.add_argument("--limit-test", type=int, help="evaluate on the first N test images")
    args = vars(p.parse_args(argv))
    settings = {**RECIPES[args["arch"]], **(SMOKE if args["smoke"] else {})}
    settings.update({f.name: args[f.name] for f in fields(TrainConfig) if args.get(f.name) is not None})
    return TrainConfig(**settings)


def setup_distributed() -> tuple[int, int]:
    """(rank, world size); under torchrun joins the process group (NCCL on GPU, gloo on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        # A rank that never shows up fails the run after five minutes instead of hanging it.
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo", timeout=timedelta(minutes=5))
        # Share the CPU cores between the processes instead of oversubscribing them.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", world))))
        return dist.get_rank(), world
    return 0, 1


def make_loader(cfg: TrainConfig, train: MNISTSplit, rank: int, world: int) -> tuple[DataLoader, np.ndarray]:
    """The augmented training loader, and the indices of the fixed validation split."""
    train_idx, val_idx = train_val_split(len(train), cfg.val_size, seed=0)
    if cfg.limit_train:
        train_idx = train_idx[: cfg.limit_train]
    dataset = AugmentedDigits(train.images[train_idx], train.labels[train_idx], augment=True)
    sampler: DistributedSampler | None = (
        DistributedSampler(dataset, world, rank, shuffle=True, seed=cfg.seed) if world > 1 else None
    )
    loader = DataLoader(
        dataset,
        batch_size=cfg.batch_size // world,
        shuffle=sampler is None,
        sampler=sampler,
        drop_last=True,
        generator=torch.Generator().manual_seed(cfg.seed),
    )
    return loader, val_idx


def run_epoch(
    model: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    cfg: TrainConfig,
    desc: str,
    show: bool,
) -> tuple[float, float]:
    """One pass over the training data; returns (mean loss, accuracy) on this process's share."""
    model.train()
    device = next(model.parameters()).device
    total_loss, correct, seen = 0.0, 0, 0
    for images, labels in tqdm(loader, desc=desc, disable=not show, leave=False, mininterval=2):
        x, y = to_model_input(images).to(device), labels.to(device)
        logits = model(x)
        loss = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        total_loss += loss.item() * len(y)
        correct += int((logits.argmax(1) == y).sum())
        seen += len(y)
    return total_loss / max(seen, 1), correct / max(seen, 1)


def validate(model: nn.Module, images: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    logits, y = predict_logits(model, images), torch.from_numpy(labels)
    return F.cross_entropy(logits, y).item(), (logits.argmax(1) == y).float().mean().item()


def train(cfg: TrainConfig, model: nn.Module, train_set: MNISTSplit, rank: int, world: int) -> list[dict[str, float]]:
    """The training loop (AdamW, one-cycle); returns rank 0's per-epoch history."""
    loader, val_idx = make_loader(cfg, train_set, rank, world)
    wrapped: nn.Module = DistributedDataParallel(model) if world > 1 else model
    optimizer = torch.optim.AdamW(wrapped.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=cfg.lr, epochs=cfg.epochs, steps_per_epoch=max(len(loader), 1), pct_start=0.2
    )
    if rank == 0:
        n_params = sum(p.numel() for p in model.parameters())
        print(
            f"{cfg.arch}: {n_params:,} parameters, {len(loader)} batches of {cfg.batch_size // world} a rank, "
            f"{len(val_idx)} val images, {cfg.epochs} epochs, world size {world}, "
            f"{torch.get_num_threads()} threads",
            flush=True,
        )
    history: list[dict[str, float]] = []
    start = time.perf_counter()
    for epoch in range(1, cfg.epochs + 1):
        if isinstance(loader.sampler, DistributedSampler):
            loader.sampler.set_epoch(epoch)
        loss, acc = run_epoch(wrapped, loader, optimizer, scheduler, cfg, f"epoch {epoch}/{cfg.epochs}", rank == 0)
        if rank == 0:
            val_loss, val_acc = validate(model, train_set.images[val_idx], train_set.labels[val_idx])
            history.append(
                {
                    "epoch": epoch,
                    "train_loss": loss,
                    "train_accuracy": acc,
                    "val_loss": val_loss,
                    "val_accuracy": val_acc,
                    "elapsed_s": round(time.perf_counter() - start, 1),
                }
            )
            print(json.dumps(history[-1]), flush=True)
    return history


def evaluate(
    cfg: TrainConfig, model: nn.Module, test: MNISTSplit, history: list[dict[str, float]], train_seconds: float
) -> tuple[dict[str, Any], dict[str, bytes]]:
    """Metrics on the official test set, once (the final epoch's weights; no selection), and the report."""
    images, labels = test.images[: cfg.limit_test], test.labels[: cfg.limit_test]
    start = time.perf_counter()
    logits = predict_logits(model, images)
    metrics = metrics_from_logits(logits.numpy(), labels, time.perf_counter() - start)
    preds, confidences = logits.argmax(1).numpy(), torch.softmax(logits, 1).max(1).values.numpy()
    metrics.update(
        params=sum(p.numel() for p in model.parameters()),
        train_seconds=round(train_seconds, 1),
        hardware=hardware(),
        smoke=cfg.smoke,
        split="test" if cfg.limit_test is None else f"test[:{cfg.limit_test}]",
    )
    title = f"{cfg.name or cfg.arch} ({cfg.arch}) test accuracy {metrics['accuracy']:.4f}"
    report = {
        "metrics.json": json.dumps({**metrics, "history": history}, indent=2).encode(),
        "confusion_matrix.png": confusion_matrix_png(metrics["confusion_matrix"], title),
        "misclassified.png": misclassified_png(images, labels, preds, confidences, title),
        "curves.png": curves_png(history, title),
    }
    return metrics, report


def publish(
    registry: ModelRegistry,
    cfg: TrainConfig,
    model: nn.Module,
    train_set: MNISTSplit,
    test: MNISTSplit,
    metrics: dict[str, Any],
    report: dict[str, bytes],
    world: int,
) -> int:
    """Export the ONNX graph (checked against torch on the golden digits) and publish both artifacts."""
    golden = golden_outputs(model, test.images)
    onnx = export_onnx(model, golden)
    summary = {k: metrics[k] for k in ("accuracy", "errors", "num_examples", "split", "params")}
    training = {**asdict(cfg), "world_size": world, "train_seconds": metrics["train_seconds"], "hardware": hardware()}
    return registry.publish(
        cfg.name or cfg.arch,
        architecture=cfg.arch,
        config=config_dict(model),
        weights=weights_bytes(model.state_dict()),
        onnx=onnx,
        onnx_opset=OPSET,
        golden=golden,
        report=report,
        metadata={
            "preprocessing": PREPROCESSING,
            "training": training,
            "metrics": summary,
            "git_commit": git_commit(),
            "data": {"train_sha256": train_set.checksum, "test_sha256": test.checksum},
        },
    )


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)
    rank, world = setup_distributed()
    torch.manual_seed(cfg.seed + rank)
    np.random.seed(cfg.seed)
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if torch.cuda.is_available() else None
    train_set, test = load_mnist("train"), load_mnist("test")
    model = create_model(cfg.arch, **cfg.model).to(device or "cpu")
    start = time.perf_counter()
    history = train(cfg, model, train_set, rank, world)
    train_seconds = time.perf_counter() - start
    if world > 1:
        dist.barrier()
    if rank != 0:
        dist.destroy_process_group()
        return 0
    model = model.cpu().eval()
    metrics, report = evaluate(cfg, model, test, history, train_seconds)
    registry = ModelRegistry.open(cfg.registry)
    version = publish(registry, cfg, model, train_set, test, metrics, report, world)
    name = cfg.name or cfg.arch
    print(
        f"published {name} v{version} to {registry.uri}: test accuracy {metrics['accuracy']:.4f} "
        f"in {train_seconds:.0f}s of training"
    )
    print(json.dumps({"model": name, "version": version, "accuracy": metrics["accuracy"]}), flush=True)
    if world > 1:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(run_reporting_errors(main))
