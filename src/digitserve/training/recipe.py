"""What a training run does: the recipe of each architecture, and the flags that change it."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field, fields
from typing import Any

from digitserve.synthetic import sets


@dataclass
class TrainConfig:
    """The CNN recipe; RECIPES holds what another architecture changes; flags override both."""

    arch: str = "cnn"
    name: str | None = None
    epochs: int = 12
    batch_size: int = 128
    lr: float = 3e-3
    weight_decay: float = 5e-2
    label_smoothing: float = 0.0  # none: it would cap a clean digit's confidence near 95%
    mild_epochs: int | None = None  # final epochs with mild augmentation (default: a quarter)
    negatives_per_batch: int = 32  # training negatives added to each batch of digits
    outlier_weight: float = 0.5  # weight of the outlier-exposure loss on the negatives
    negatives: int = sets.NEGATIVE_COUNTS["train"]
    eval_negatives: int = sets.NEGATIVE_COUNTS["held-out"]  # validation and held-out negatives
    robustness: int = sets.ROBUSTNESS_COUNTS["test"]  # test digits in each robustness variant
    checkpoint: str | None = None  # write the trained weights here before calibrating and publishing
    from_checkpoint: str | None = None  # skip training: calibrate, evaluate and publish these weights
    bf16: bool = False  # bfloat16 autocast for the forward pass (fast on CPUs with AMX)
    feedback: bool = False  # add the registry's accepted feedback (its train split) to the training data
    feedback_repeat: int = 20  # times each feedback sample is shown per epoch: a few among 55,000 digits
    seed: int = 0
    val_size: int = 5000
    registry: str | None = None  # None: DIGITSERVE_REGISTRY, else the shipped registry
    smoke: bool = False
    limit_train: int | None = None  # train on the first N images (smoke runs, tests)
    limit_test: int | None = None
    model: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.mild_epochs is None:
            self.mild_epochs = self.epochs // 4


# What each architecture changes from TrainConfig's defaults (see README -> The models).
RECIPES: dict[str, dict[str, Any]] = {
    "cnn": {"epochs": 20, "bf16": True},  # bf16 pays for this CNN, not the ViT (bench/train_step.py)
    "vit": {
        "epochs": 30,
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
SMOKE = {
    "epochs": 1,
    "limit_train": 512,
    "limit_test": 1000,
    "val_size": 256,
    "negatives": 256,
    "eval_negatives": 256,
    "robustness": 50,
}


def parse_args(argv: list[str] | None = None, description: str | None = None) -> TrainConfig:
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
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
    p.add_argument("--checkpoint", help="also write the trained weights and history to this file")
    p.add_argument("--from-checkpoint", help="skip training: calibrate, evaluate and publish a --checkpoint file")
    p.add_argument("--bf16", action="store_true", default=None, help="bfloat16 autocast (CPUs with AMX, GPUs)")
    p.add_argument(
        "--feedback",
        action="store_true",
        default=None,
        help="also train on the registry's accepted feedback (its train split; the holdout is the gate's)",
    )
    p.add_argument("--feedback-repeat", type=int, help="times each feedback sample is shown per epoch (default 20)")
    args = vars(p.parse_args(argv))
    settings = {**RECIPES[args["arch"]], **(SMOKE if args["smoke"] else {})}
    settings.update({f.name: args[f.name] for f in fields(TrainConfig) if args.get(f.name) is not None})
    return TrainConfig(**settings)
