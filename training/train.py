"""Train a CNN or ViT on MNIST, calibrate it, evaluate it once on the test set, export ONNX, publish.

    python training/train.py --arch cnn                       # full run, under 20 min on 2 CPU cores
    python training/train.py --arch vit --smoke               # seconds, for tests and demos
    torchrun --nproc_per_node=2 training/train.py --arch cnn  # data-parallel (gloo on CPU)

The run, in order: the recipe and flags (`recipe.py`); the data and the loop (`loop.py`,
`augment.py`); calibration, the test-set evaluation and the report (`assess.py`, `reports.py`);
then, here, the ONNX export and the publish.

Every batch is MNIST digits plus the project's own training negatives (letters, doodles,
scribbles, ...; `digitserve.synthetic.negatives`), all augmented as other writers and devices
would give them (`augment.py`). Digits are learnt with cross-entropy; negatives with outlier
exposure (cross-entropy to the uniform distribution), so the model spreads its probability over
the ten digits for what is not a digit. After training, a temperature is fitted on the validation
split and the "not a digit" threshold is chosen on validation data (`digitserve.evaluation`);
both go into the manifest, and everything that answers for the version applies them.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from digitserve.config import actor
from digitserve.data import MNISTSplit, load_mnist
from digitserve.imaging.mnist import PREPROCESSING
from digitserve.models import config_dict, create_model
from digitserve.models.checkpoint import weights_bytes
from digitserve.models.export import OPSET, export_onnx, golden_outputs
from digitserve.registry import ModelRegistry, RegistryError
from digitserve.registry.feedback import FeedbackStore
from digitserve.registry.feedback_snapshot import FeedbackSnapshot
from digitserve.reporting import run_reporting_errors
from digitserve.synthetic import sets
from digitserve.training.assess import calibrate, evaluate
from digitserve.training.loop import TrainingData, run_epoch, training_data, validate
from digitserve.training.provenance import git_commit, hardware
from digitserve.training.recipe import TrainConfig, parse_args


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


def train(cfg: TrainConfig, model: nn.Module, data: TrainingData, rank: int, world: int) -> list[dict[str, float]]:
    """The training loop (AdamW, one-cycle); returns rank 0's per-epoch history."""
    wrapped: nn.Module = DistributedDataParallel(model) if world > 1 else model
    steps = max(len(data.labels) // cfg.batch_size, 1)
    optimizer = torch.optim.AdamW(wrapped.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    # OneCycleLR divides by (pct_start * total steps - 1): at 5 steps (a smoke run with some feedback) 0.2 is zero
    pct_start = 0.25 if cfg.epochs * steps == 5 else 0.2
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=cfg.lr, epochs=cfg.epochs, steps_per_epoch=steps, pct_start=pct_start
    )
    if rank == 0:
        n_params = sum(p.numel() for p in model.parameters())
        print(
            f"{cfg.arch}: {n_params:,} parameters, {steps} batches of {cfg.batch_size // world} digits "
            f"+ {cfg.negatives_per_batch // world} negatives a rank, {len(data.negatives)} training negatives, "
            f"{len(data.val_labels)} val images, {cfg.epochs} epochs, world size {world}, "
            f"{torch.get_num_threads()} threads, bf16 {cfg.bf16}",
            flush=True,
        )
    history: list[dict[str, float]] = []
    start = time.perf_counter()
    for epoch in range(1, cfg.epochs + 1):
        loss, acc, outlier = run_epoch(wrapped, data, optimizer, scheduler, cfg, epoch, rank, world)
        if rank == 0:
            val_loss, val_acc = validate(model, data.val_images, data.val_labels)
            history.append(
                {
                    "epoch": epoch,
                    "train_loss": loss,
                    "train_accuracy": acc,
                    "outlier_loss": outlier,
                    "val_loss": val_loss,
                    "val_accuracy": val_acc,
                    "elapsed_s": round(time.perf_counter() - start, 1),
                }
            )
            print(json.dumps(history[-1]), flush=True)
    return history


def publish(
    registry: ModelRegistry,
    cfg: TrainConfig,
    model: nn.Module,
    train_set: MNISTSplit,
    test: MNISTSplit,
    metrics: dict[str, Any],
    report: dict[str, bytes],
    records: dict[str, Any],
    world: int,
) -> int:
    """Export the ONNX graph (checked against torch on the golden digits) and publish both artifacts."""
    golden = golden_outputs(model, test.images)
    onnx = export_onnx(model, golden)
    summary = {k: metrics[k] for k in ("accuracy", "errors", "num_examples", "split", "params")}
    summary.update(
        test_ece=metrics["calibration"]["test_ece_after"],
        test_nll=metrics["calibration"]["test_nll_after"],
        mnist_test_not_a_digit=metrics["not_a_digit"]["mnist_test_rate"],
        held_out_negatives_not_a_digit=metrics["not_a_digit"]["held_out_negatives_rate"],
    )
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
            **records,
            "training": training,
            "metrics": summary,
            "git_commit": git_commit(),
            "created_by": actor(),
            "data": {"train_sha256": train_set.checksum, "test_sha256": test.checksum},
        },
    )


def prepare_sets(cfg: TrainConfig) -> None:
    sets.negatives("validation", cfg.eval_negatives)
    sets.negatives("held-out", cfg.eval_negatives)
    sets.robustness_set("validation", min(cfg.robustness, sets.ROBUSTNESS_COUNTS["validation"]))
    sets.robustness_set("test", cfg.robustness)


def save_checkpoint(model: nn.Module, path: str, history: list[dict[str, float]], train_seconds: float) -> None:
    """The trained weights and their history as one safetensors file: calibration, evaluation and
    publishing can be re-run from it (`--from-checkpoint`) without training again."""
    meta = {"history": json.dumps(history), "train_seconds": str(train_seconds)}
    Path(path).write_bytes(save_safetensors({k: v.contiguous() for k, v in model.state_dict().items()}, meta))


def load_checkpoint(model: nn.Module, path: str) -> tuple[list[dict[str, float]], float]:
    data = Path(path).read_bytes()
    model.load_state_dict(load_safetensors(data), strict=True)
    meta = safe_open_metadata(data)
    return json.loads(meta["history"]), float(meta["train_seconds"])


def safe_open_metadata(data: bytes) -> dict[str, str]:
    """The metadata of safetensors bytes: the JSON header after its 8-byte little-endian length."""
    size = int.from_bytes(data[:8], "little")
    return dict(json.loads(data[8 : 8 + size]).get("__metadata__", {}))


def accepted_feedback(cfg: TrainConfig, world: int) -> FeedbackSnapshot | None:
    """With --feedback: the registry's accepted feedback now (pending and rejected samples never),
    the same on every rank."""
    if not cfg.feedback:
        return None
    if cfg.from_checkpoint:
        raise RegistryError("--feedback trains on the accepted feedback; a --from-checkpoint model was trained without")
    registry = ModelRegistry.open(cfg.registry)
    snapshot = FeedbackSnapshot.read(FeedbackStore(registry.store))
    if world > 1:  # a sample accepted while the ranks started would give them different data
        mine = torch.tensor(list(bytes.fromhex(snapshot.digest)), dtype=torch.int64)
        every = [torch.zeros_like(mine) for _ in range(world)]
        dist.all_gather(every, mine)
        if not all(torch.equal(theirs, mine) for theirs in every):
            raise RegistryError("the accepted feedback changed while the training ranks started; run again")
    summary = snapshot.summary()
    print(
        f"feedback from {registry.uri}: {summary['samples']} accepted samples ({summary['train']} to train on, "
        f"{summary['holdout']} held out for the gate), snapshot {snapshot.digest[:12]}",
        flush=True,
    )
    return snapshot


def record_feedback(
    cfg: TrainConfig, feedback: FeedbackSnapshot | None, records: dict[str, Any], report: dict[str, bytes]
) -> None:
    """The manifest names the feedback snapshot the version saw; its report lists the sample ids."""
    if feedback is not None:
        records["feedback"] = {**feedback.summary(), "repeat": cfg.feedback_repeat}
        report["feedback.json"] = json.dumps({"snapshot_sha256": feedback.digest, **feedback.ids()}, indent=1).encode()


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv, __doc__)
    rank, world = setup_distributed()
    torch.manual_seed(cfg.seed + rank)
    np.random.seed(cfg.seed)
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if torch.cuda.is_available() else None
    train_set, test = load_mnist("train"), load_mnist("test")
    feedback = accepted_feedback(cfg, world)
    data = training_data(cfg, train_set, feedback)
    if rank == 0:
        prepare_sets(cfg)  # made (or read) before training, so a problem shows in seconds, not after it
    model = create_model(cfg.arch, **cfg.model).to(device or "cpu")
    if cfg.from_checkpoint:
        history, train_seconds = load_checkpoint(model, cfg.from_checkpoint)
    else:
        start = time.perf_counter()
        history = train(cfg, model, data, rank, world)
        train_seconds = time.perf_counter() - start
    if world > 1:
        dist.barrier()
    if rank != 0:
        dist.destroy_process_group()
        return 0
    model = model.cpu().eval()
    if cfg.checkpoint:
        save_checkpoint(model, cfg.checkpoint, history, train_seconds)
    calibration, records = calibrate(cfg, model, data)
    metrics, report = evaluate(cfg, model, test, calibration, history, train_seconds)
    record_feedback(cfg, feedback, records, report)
    registry = ModelRegistry.open(cfg.registry)
    version = publish(registry, cfg, model, train_set, test, metrics, report, records, world)
    name = cfg.name or cfg.arch
    print(
        f"published {name} v{version} to {registry.uri}: test accuracy {metrics['accuracy']:.4f}, "
        f"ECE {metrics['calibration']['test_ece_after']:.4f} (T={calibration.temperature:g}), not a digit: "
        f"{metrics['not_a_digit']['mnist_test_rate']:.2%} of MNIST test, "
        f"{metrics['not_a_digit']['held_out_negatives_rate']:.2%} of held-out negatives "
        f"(threshold {calibration.threshold:g}); {train_seconds:.0f}s of training"
    )
    print(json.dumps({"model": name, "version": version, "accuracy": metrics["accuracy"]}), flush=True)
    if world > 1:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(run_reporting_errors(main))
