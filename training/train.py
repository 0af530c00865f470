"""Train a CNN or ViT on MNIST, evaluate it once on the test set, publish it to the registry.

    python training/train.py --arch cnn                       # full run, ~12 min on 2 CPU cores
    python training/train.py --arch vit --smoke               # seconds, for tests and demos
    torchrun --nproc_per_node=2 training/train.py --arch cnn  # data-parallel (gloo on CPU)

Reads top to bottom: config, data, model, loop, evaluation, publish.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from torchvision.transforms import v2
from tqdm import tqdm

from digitserve.cli import run_reporting_errors
from digitserve.data import load_mnist, train_val_split
from digitserve.evaluation import evaluate_model, predict_logits
from digitserve.models import config_dict, create_model
from digitserve.preprocess import PREPROCESSING, to_model_input
from digitserve.registry import ModelRegistry
from digitserve.reports import confusion_matrix_png, curves_png, misclassified_png

# Recipes that reach the targets within the CPU budgets (see README -> Results).
RECIPES: dict[str, dict[str, Any]] = {
    "cnn": {"epochs": 12, "lr": 3e-3, "weight_decay": 5e-2, "batch_size": 128, "label_smoothing": 0.05},
    "vit": {
        "epochs": 25,
        "lr": 2e-3,
        "weight_decay": 5e-2,
        "batch_size": 128,
        "label_smoothing": 0.05,
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
GOLDEN_COUNT = 8  # test digits whose logits are recorded so a server can check a loaded model


@dataclass
class TrainConfig:
    arch: str = "cnn"
    name: str | None = None
    epochs: int = 15
    batch_size: int = 128
    lr: float = 3e-3
    weight_decay: float = 5e-2
    label_smoothing: float = 0.05
    seed: int = 0
    val_size: int = 5000
    registry: str | None = None
    smoke: bool = False
    limit_train: int | None = None  # train on the first N images (smoke runs, tests)
    limit_test: int | None = None
    model: dict[str, Any] = field(default_factory=dict)


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", choices=sorted(RECIPES), required=True)
    p.add_argument("--name", help="model name in the registry (default: the architecture)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--registry", help="registry URI (default: $DIGITSERVE_REGISTRY or ./registry)")
    p.add_argument("--smoke", action="store_true", help="a few hundred images, one epoch: seconds")
    p.add_argument("--limit-train", type=int, help="train on the first N training images")
    p.add_argument("--limit-test", type=int, help="evaluate on the first N test images")
    args = p.parse_args(argv)
    recipe = dict(RECIPES[args.arch])
    cfg = TrainConfig(
        arch=args.arch, name=args.name, seed=args.seed, registry=args.registry, smoke=args.smoke, **recipe
    )
    for key in ("epochs", "batch_size", "lr", "limit_train", "limit_test"):
        if getattr(args, key) is not None:
            setattr(cfg, key, getattr(args, key))
    if cfg.smoke:
        cfg.epochs = args.epochs or 1
        cfg.limit_train = cfg.limit_train or 512
        cfg.limit_test = cfg.limit_test or 1000
        cfg.val_size = 256
    return cfg


class AugmentedDigits(Dataset):
    """uint8 digits with torchvision v2 augmentation: small rotations, shifts and scaling."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, augment: bool) -> None:
        self.images = torch.from_numpy(images).unsqueeze(1)  # (N, 1, 28, 28) uint8
        self.labels = torch.from_numpy(labels)
        self.transform = v2.RandomAffine(degrees=10, translate=(0.1, 0.1), scale=(0.9, 1.1)) if augment else None

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.images[i]
        if self.transform is not None:
            image = self.transform(image)
        return image, self.labels[i]


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


def hardware() -> dict[str, Any]:
    info: dict[str, Any] = {
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


def run_epoch(
    model: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    cfg: TrainConfig,
    device: torch.device,
    desc: str,
    show: bool,
) -> tuple[float, float]:
    """One pass over the training data; returns (mean loss, accuracy) on this process's share."""
    model.train()
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


@torch.inference_mode()
def validate(model: nn.Module, images: np.ndarray, labels: np.ndarray, device: torch.device) -> tuple[float, float]:
    model.eval()
    logits = torch.cat(
        [model(to_model_input(images[i : i + 1000]).to(device)).cpu() for i in range(0, len(images), 1000)]
    )
    y = torch.from_numpy(labels)
    return F.cross_entropy(logits, y).item(), (logits.argmax(1) == y).float().mean().item()


def golden_outputs(model: nn.Module, images: np.ndarray) -> dict[str, Any]:
    """A few fixed test digits and the logits this model gives them, for load-time checks."""
    digits = np.ascontiguousarray(images[:GOLDEN_COUNT])
    logits = predict_logits(model, digits)
    return {
        "images_uint8_b64": base64.b64encode(digits.tobytes()).decode(),
        "shape": list(digits.shape),
        "logits": [[round(float(v), 6) for v in row] for row in logits],
        "atol": 1e-3,
    }


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)
    rank, world = setup_distributed()
    is_main = rank == 0
    torch.manual_seed(cfg.seed + rank)
    np.random.seed(cfg.seed)
    device = (
        torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if torch.cuda.is_available() else torch.device("cpu")
    )
    registry = ModelRegistry.open(cfg.registry)

    # --- data: the validation split is carved from the 60k training set; the test set is used once
    train, test = load_mnist("train"), load_mnist("test")
    train_idx, val_idx = train_val_split(len(train), cfg.val_size, seed=0)
    if cfg.limit_train:
        train_idx = train_idx[: cfg.limit_train]
    dataset = AugmentedDigits(train.images[train_idx], train.labels[train_idx], augment=True)
    sampler: DistributedSampler | None = (
        DistributedSampler(dataset, world, rank, shuffle=True, seed=cfg.seed) if world > 1 else None
    )
    generator = torch.Generator().manual_seed(cfg.seed)
    loader = DataLoader(
        dataset,
        batch_size=cfg.batch_size // world,
        shuffle=sampler is None,
        sampler=sampler,
        drop_last=True,
        generator=generator,
    )

    # --- model and optimiser: AdamW with a one-cycle schedule
    model = create_model(cfg.arch, **cfg.model).to(device)
    n_params = sum(p.numel() for p in model.parameters())
    wrapped: nn.Module = DistributedDataParallel(model) if world > 1 else model
    optimizer = torch.optim.AdamW(wrapped.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=cfg.lr, epochs=cfg.epochs, steps_per_epoch=max(len(loader), 1), pct_start=0.2
    )
    if is_main:
        print(
            f"{cfg.arch}: {n_params:,} parameters, {len(dataset)} train / {len(val_idx)} val images, "
            f"{cfg.epochs} epochs, world size {world}, {torch.get_num_threads()} threads",
            flush=True,
        )

    # --- training loop
    history: list[dict[str, float]] = []
    start = time.perf_counter()
    for epoch in range(1, cfg.epochs + 1):
        if sampler is not None:
            sampler.set_epoch(epoch)
        train_loss, train_acc = run_epoch(
            wrapped, loader, optimizer, scheduler, cfg, device, f"epoch {epoch}/{cfg.epochs}", is_main
        )
        if is_main:
            val_loss, val_acc = validate(model, train.images[val_idx], train.labels[val_idx], device)
            history.append(
                {
                    "epoch": epoch,
                    "train_loss": train_loss,
                    "train_accuracy": train_acc,
                    "val_loss": val_loss,
                    "val_accuracy": val_acc,
                    "elapsed_s": round(time.perf_counter() - start, 1),
                }
            )
            print(json.dumps(history[-1]), flush=True)
    train_seconds = time.perf_counter() - start
    if world > 1:
        dist.barrier()
    if not is_main:
        dist.destroy_process_group()
        return 0

    # --- evaluation, once, on the official test set (the final epoch's weights; no selection)
    model = model.cpu().eval()
    test_images, test_labels = test.images[: cfg.limit_test], test.labels[: cfg.limit_test]
    metrics, preds = evaluate_model(model, test_images, test_labels)
    confidences = torch.softmax(predict_logits(model, test_images), 1).max(1).values.numpy()
    metrics.update(
        params=n_params,
        train_seconds=round(train_seconds, 1),
        hardware=hardware(),
        smoke=cfg.smoke,
        split="test" if cfg.limit_test is None else f"test[:{cfg.limit_test}]",
    )
    name = cfg.name or cfg.arch
    title = f"{name} ({cfg.arch}) test accuracy {metrics['accuracy']:.4f}"
    report = {
        "metrics.json": json.dumps({**metrics, "history": history}, indent=2).encode(),
        "confusion_matrix.png": confusion_matrix_png(metrics["confusion_matrix"], title),
        "misclassified.png": misclassified_png(test_images, test_labels, preds, confidences, title),
        "curves.png": curves_png(history, title),
    }

    # --- publish an immutable version
    summary = {k: metrics[k] for k in ("accuracy", "errors", "num_examples", "split", "params")}
    version = registry.publish(
        name,
        cfg.arch,
        config_dict(model),
        model.state_dict(),
        metadata={
            "preprocessing": PREPROCESSING,
            "training": {
                **asdict(cfg),
                "world_size": world,
                "train_seconds": round(train_seconds, 1),
                "hardware": hardware(),
            },
            "data": {"train_sha256": train.checksum, "test_sha256": test.checksum},
            "git_commit": git_commit(),
            "metrics": summary,
            "golden": golden_outputs(model, test.images),
        },
        report=report,
    )
    print(
        f"published {name} v{version} to {registry.uri}: test accuracy {metrics['accuracy']:.4f} "
        f"in {train_seconds:.0f}s of training",
        flush=True,
    )
    print(json.dumps({"model": name, "version": version, "accuracy": metrics["accuracy"]}))
    if world > 1:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(run_reporting_errors(main))
