"""The training loop's parts: the data in memory, one epoch (digits and negatives, augmented), validation.

Every batch is MNIST digits plus the project's own training negatives, all augmented
(`augment.py`). Digits are learnt with cross-entropy; negatives with outlier exposure
(cross-entropy to the uniform distribution), so the model spreads its probability over the ten
digits for what is not a digit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from digitserve.data import MNISTSplit, train_val_split
from digitserve.models.checkpoint import predict_logits, to_model_input
from digitserve.registry.feedback_snapshot import FeedbackSnapshot
from digitserve.synthetic import sets
from digitserve.training.augment import Augmentation
from digitserve.training.recipe import TrainConfig


def epoch_batches(n: int, cfg: TrainConfig, epoch: int, rank: int, world: int) -> list[torch.Tensor]:
    """This rank's batches of indices for one epoch: a seeded shuffle shared by every rank."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed * 1000 + epoch))
    share = cfg.batch_size // world
    order = order[rank : len(order) - len(order) % cfg.batch_size : world]
    return list(order.split(share))[: n // cfg.batch_size]


def run_epoch(
    model: nn.Module,
    data: TrainingData,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    cfg: TrainConfig,
    epoch: int,
    rank: int,
    world: int,
) -> tuple[float, float, float]:
    """One pass over the training digits; returns (mean digit loss, accuracy, mean outlier loss)
    on this process's share."""
    model.train()
    device = next(model.parameters()).device
    g = torch.Generator().manual_seed(cfg.seed * 1000 + epoch * world + rank)
    augment = Augmentation() if epoch <= cfg.epochs - (cfg.mild_epochs or 0) else Augmentation.mild()
    total_loss, total_outlier, correct, seen = 0.0, 0.0, 0, 0
    batches = epoch_batches(len(data.labels), cfg, epoch, rank, world)
    desc = f"epoch {epoch}/{cfg.epochs}"
    for idx in tqdm(batches, desc=desc, disable=rank != 0, leave=False, mininterval=2):
        n = len(idx)
        k = cfg.negatives_per_batch // world if len(data.negatives) else 0
        pixels = torch.cat([data.images[idx], data.negatives[torch.randint(len(data.negatives), (k,), generator=g)]])
        x = to_model_input(augment(pixels.unsqueeze(1).float().div_(255), g).mul_(255)).to(device)
        y = data.labels[idx].to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
            logits = model(x)
        logits = logits.float()
        loss = F.cross_entropy(logits[:n], y, label_smoothing=cfg.label_smoothing)
        outlier = -F.log_softmax(logits[n:], dim=1).mean() if k else torch.zeros((), device=device)
        optimizer.zero_grad(set_to_none=True)
        (loss + cfg.outlier_weight * outlier).backward()
        optimizer.step()
        scheduler.step()
        total_loss += loss.item() * n
        total_outlier += outlier.item() * n
        correct += int((logits[:n].argmax(1) == y).sum())
        seen += n
    return total_loss / max(seen, 1), correct / max(seen, 1), total_outlier / max(seen, 1)


def validate(model: nn.Module, images: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    logits, y = predict_logits(model, images), torch.from_numpy(labels)
    return F.cross_entropy(logits, y).item(), (logits.argmax(1) == y).float().mean().item()


@dataclass
class TrainingData:
    images: torch.Tensor  # (N, 28, 28) uint8 training digits (the validation split left out)
    labels: torch.Tensor
    negatives: torch.Tensor  # (M, 28, 28) uint8 training negatives
    val_images: np.ndarray
    val_labels: np.ndarray


def training_data(cfg: TrainConfig, train_set: MNISTSplit, feedback: FeedbackSnapshot | None = None) -> TrainingData:
    """MNIST's training digits (less the validation split), the training negatives, and the train
    split of accepted feedback, if any: its digits join the digits and its "not a digit" samples
    the negatives, each shown `feedback_repeat` times an epoch."""
    train_idx, val_idx = train_val_split(len(train_set), cfg.val_size, seed=0)
    if cfg.limit_train:
        train_idx = train_idx[: cfg.limit_train]
    images, labels = train_set.images[train_idx], train_set.labels[train_idx]
    negatives = sets.negatives("train", cfg.negatives).images if cfg.negatives_per_batch else np.empty((0, 28, 28))
    if feedback is not None:
        extra, extra_labels = feedback.part("train")
        digits = extra_labels >= 0
        images = np.concatenate([images, *[extra[digits]] * cfg.feedback_repeat])
        labels = np.concatenate([labels, *[extra_labels[digits].astype(labels.dtype)] * cfg.feedback_repeat])
        negatives = np.concatenate([negatives, *[extra[~digits]] * cfg.feedback_repeat])
    return TrainingData(
        torch.from_numpy(np.ascontiguousarray(images)),
        torch.from_numpy(np.ascontiguousarray(labels)),
        torch.from_numpy(np.ascontiguousarray(negatives, np.uint8)),
        train_set.images[val_idx],
        train_set.labels[val_idx],
    )
