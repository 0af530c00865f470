"""The synthetic sets at their standard sizes, cached on disk next to MNIST.

Generating them takes a few minutes of CPU; they are deterministic, so each is made once and
kept as a plain `.npz` (read with `allow_pickle=False`) whose name carries a hash of the code
that draws and preprocesses them: change that code and the next run makes a fresh set.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from digitserve.config import data_dir
from digitserve.data import load_mnist, train_val_split
from digitserve.imaging import decode, ink, mnist
from digitserve.synthetic import negatives as negatives_module
from digitserve.synthetic import render, robustness
from digitserve.synthetic.negatives import NegativeSet, Split, make_negatives
from digitserve.synthetic.robustness import RobustnessSet, make_robustness_set

NEGATIVE_COUNTS: dict[str, int] = {"train": 20000, "validation": 3000, "held-out": 3000}
ROBUSTNESS_COUNTS = {"test": 2000, "validation": 1000}
VALIDATION_SIZE = 5000  # MNIST training images held out for validation (data.train_val_split)


def code_hash() -> str:
    """sha256 (16 hex digits) of the code the sets depend on."""
    digest = hashlib.sha256()
    for module in (negatives_module, robustness, render, mnist, ink, decode):
        digest.update(Path(module.__file__ or "").read_bytes())
    return digest.hexdigest()[:16]


def _cached(name: str, make: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The set stored under `name`, made (and stored) first if it is not there. Processes that need
    the same set at once make it once: the others wait on its lock file, then read it."""
    folder = data_dir().parent / "synthetic"
    path = folder / f"{name}-{code_hash()}.npz"
    if path.exists():
        return _load(path)
    folder.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if path.exists():  # made by the process that held the lock
            return _load(path)
        arrays = make()
        _store(folder, path, arrays)
    return arrays


def _load(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as stored:
        return {k: stored[k] for k in stored.files}


def _store(folder: Path, path: Path, arrays: dict[str, np.ndarray]) -> None:
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".npz")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, allow_pickle=False, **arrays)
        os.replace(tmp, path)  # readers see a whole file or none
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def negatives(split: Split, count: int | None = None) -> NegativeSet:
    """The negatives of one split (train / validation / held-out)."""
    n = count or NEGATIVE_COUNTS[split]

    def make() -> dict[str, np.ndarray]:
        s = make_negatives(split, n)
        return {"images": s.images, "kinds": s.kinds, "photo": s.photo}

    arrays = _cached(f"negatives-{split}-{n}", make)
    return NegativeSet(arrays["images"], arrays["kinds"], arrays["photo"])


def validation_digits() -> tuple[np.ndarray, np.ndarray]:
    """MNIST's validation split: (images, labels) held out of the training images."""
    train = load_mnist("train")
    _, val_idx = train_val_split(len(train), VALIDATION_SIZE, seed=0)
    return train.images[val_idx], train.labels[val_idx]


def robustness_set(source: str = "test", count: int | None = None) -> RobustnessSet:
    """The robustness variants of MNIST test digits (for reports) or validation digits (for choices)."""
    n = count or ROBUSTNESS_COUNTS[source]
    if source == "test":
        test = load_mnist("test")
        images, labels = test.images, test.labels
    elif source == "validation":
        images, labels = validation_digits()
    else:
        raise ValueError(f"robustness sets come from 'test' or 'validation', not {source!r}")

    def make() -> dict[str, np.ndarray]:
        s = make_robustness_set(images, labels, n)
        return {"labels": s.labels, "indices": s.indices, **{f"variant:{k}": v for k, v in s.images.items()}}

    arrays = _cached(f"robustness-{source}-{n}", make)
    variants = {k.removeprefix("variant:"): v for k, v in arrays.items() if k.startswith("variant:")}
    return RobustnessSet(variants, arrays["labels"], arrays["indices"])
