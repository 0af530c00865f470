"""Smoke-trained models (`training/train.py --smoke`), trained once per test run and shared by
every process of it: the xdist workers and `make test`'s solo part.

`trained(cache)` trains them into `cache` unless a finished copy for this training code is there;
the first process to ask trains while the others wait on a file lock. `Prefetch` asks in a thread
as soon as a worker knows it will need them, so the training overlaps other tests instead of
holding up the first test that needs it.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SMOKE_RUNS = (("cnn", "0"), ("cnn", "1"), ("vit", "0"))


def code_digest(*folders: Path) -> str:
    """A digest of the Python sources under `folders` and the torch version: what a training result depends on."""
    import torch

    digest = hashlib.sha256(torch.__version__.encode())
    for folder in folders:
        for path in sorted(folder.rglob("*.py")):
            digest.update(str(path.relative_to(folder)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock between processes (and between threads: each holds its own open file)."""
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def trained(cache: Path) -> Path:
    """The registry folder the smoke runs filled -- cnn v1 (seed 0), cnn v2 (seed 1), vit v1 (seed 0),
    no alias -- with `../checkpoints/ARCH-SEED.safetensors` beside it, each run's `--checkpoint`.
    Keyed by the training code's digest: a smoke run with a given seed publishes the same weights
    every time (test_training checks it)."""
    key = code_digest(ROOT / "training", ROOT / "src" / "digitserve")
    done = cache / f"smoke-trained-{key}"
    root = done / "registry"
    failed = cache / f"smoke-trained-{key}.failed"  # a failed training is reported, not tried again by each process
    with file_lock(cache / f"smoke-trained-{key}.lock"):
        if (done / "complete").exists():
            return root
        if failed.exists():
            raise RuntimeError(failed.read_text())
        shutil.rmtree(done, ignore_errors=True)
        (done / "checkpoints").mkdir(parents=True)
        for arch, seed in SMOKE_RUNS:
            command = [sys.executable, "training/train.py", "--arch", arch, "--smoke", "--seed", seed]
            command += [
                "--registry",
                str(root),
                "--checkpoint",
                str(done / "checkpoints" / f"{arch}-{seed}.safetensors"),
            ]
            run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
            if run.returncode != 0 or json.loads(run.stdout.strip().splitlines()[-1])["model"] != arch:
                failed.write_text(f"train.py --arch {arch} --smoke --seed {seed} failed: {run.stderr[-2000:]}")
                raise RuntimeError(failed.read_text())
        (done / "complete").touch()
    return root


class Prefetch:
    """`trained(cache)` in a thread of this process; `result()` waits for it and returns its folder,
    or raises what it raised."""

    def __init__(self, cache: Path) -> None:
        self._root: Path | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(cache,), name="smoke-prefetch", daemon=True)
        self._thread.start()

    def _run(self, cache: Path) -> None:
        try:
            self._root = trained(cache)
        except BaseException as exc:  # handed to whoever asks for the result, never lost with the thread
            self._error = exc

    def result(self) -> Path:
        self._thread.join()
        if self._error is not None:
            raise self._error
        assert self._root is not None
        return self._root
