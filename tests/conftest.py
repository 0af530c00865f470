"""Fixtures shared by the test suite. Each block provides one thing; add yours as a new block.

S3 (`moto_endpoint`, `moto_s3_env`, `s3_bucket`, `registry_uri`): a real moto standalone
server in a subprocess, spoken to over HTTP by boto3 exactly as production S3 would be.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from support.net import free_port

# --- S3 through a real moto server ---------------------------------------------------------

MOTO_START_TIMEOUT_S = 60


def _wait_until_answers(proc: subprocess.Popen[bytes], endpoint: str, log: Path) -> None:
    deadline = time.monotonic() + MOTO_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"moto server exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            urllib.request.urlopen(endpoint, timeout=2).close()
            return
        except urllib.error.HTTPError:
            return  # an HTTP error is an answer
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"moto server at {endpoint} did not answer in {MOTO_START_TIMEOUT_S}s")


@contextmanager
def run_moto_server(log: Path, extra_env: dict[str, str] | None = None, port: int | None = None) -> Iterator[str]:
    """Start `python -m moto.server` on `port` (default: a free loopback port); yields its endpoint URL.

    A given port brings S3 "back" at the same endpoint after an earlier server there stopped.
    """
    port = port or free_port()
    endpoint = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "moto.server", "-p", str(port), "-H", "127.0.0.1"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(extra_env or {})})
    try:
        _wait_until_answers(proc, endpoint, log)
        yield endpoint
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="session")
def moto_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One moto S3 server for the whole session (tests isolate themselves by bucket)."""
    with run_moto_server(tmp_path_factory.mktemp("moto") / "moto.log") as endpoint:
        yield endpoint


def set_fake_aws_env(monkeypatch: pytest.MonkeyPatch, endpoint: str, tmp_path: Path) -> None:
    """Point boto3 (here and in subprocesses) at `endpoint` with fake credentials only."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    # Never read a developer's real AWS profile or config.
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def moto_s3_env(monkeypatch: pytest.MonkeyPatch, moto_endpoint: str, tmp_path: Path) -> str:
    """AWS_* variables set for the moto server; returns its endpoint."""
    set_fake_aws_env(monkeypatch, moto_endpoint, tmp_path)
    return moto_endpoint


@pytest.fixture
def s3_client(moto_s3_env: str) -> Any:
    import boto3

    return boto3.session.Session().client("s3")


@pytest.fixture
def s3_bucket(s3_client: Any) -> str:
    """A fresh, empty bucket on the moto server for this test."""
    name = f"digitserve-test-{uuid.uuid4().hex[:12]}"
    s3_client.create_bucket(Bucket=name)
    return name


@pytest.fixture(params=["local", "s3"])
def registry_uri(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh empty registry: a folder in tmp_path, then an s3:// bucket on moto."""
    if request.param == "local":
        return str(tmp_path / "registry")
    bucket = request.getfixturevalue("s3_bucket")
    return f"s3://{bucket}/registry"


@pytest.fixture
def unreachable_s3_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    """AWS_ENDPOINT_URL pointing at a closed loopback port; returns that endpoint."""
    endpoint = f"http://127.0.0.1:{free_port()}"
    set_fake_aws_env(monkeypatch, endpoint, tmp_path)
    return endpoint


@pytest.fixture
def moto_auth_s3_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[str]:
    """A separate moto server that checks credentials, so the fake keys are refused (403)."""
    with run_moto_server(tmp_path / "moto-auth.log", {"INITIAL_NO_AUTH_ACTION_COUNT": "0"}) as endpoint:
        set_fake_aws_env(monkeypatch, endpoint, tmp_path)
        yield endpoint


# --- smoke-trained models, trained once per run ---------------------------------------------

SMOKE_RUNS = (("cnn", "0"), ("cnn", "1"), ("vit", "0"))


def shared_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder every process of this run shares: `DIGITSERVE_TEST_CACHE` (`make test` sets it for
    its parallel and its solo part), else this pytest run's base temp (the workers' common parent
    under pytest-xdist)."""
    if os.environ.get("DIGITSERVE_TEST_CACHE"):
        folder = Path(os.environ["DIGITSERVE_TEST_CACHE"])
    else:
        base = tmp_path_factory.getbasetemp()
        folder = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def code_digest(*folders: Path) -> str:
    """A digest of the Python sources under `folders` and the torch version: what a training result depends on."""
    import hashlib

    import torch

    digest = hashlib.sha256(torch.__version__.encode())
    for folder in folders:
        for path in sorted(folder.rglob("*.py")):
            digest.update(str(path.relative_to(folder)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock between processes (the xdist workers), held for the block."""
    import fcntl

    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@pytest.fixture(scope="session")
def smoke_trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A registry folder that `training/train.py --smoke` filled, as a user runs it: cnn v1 (seed 0),
    cnn v2 (seed 1) and vit v1 (seed 0), no alias; beside it `checkpoints/ARCH-SEED.safetensors`,
    each run's `--checkpoint`. Trained once for the whole run -- the first
    process to need it trains while the others wait, keyed by a digest of the training code
    (a smoke run with a given seed publishes the same weights every time, as test_training
    checks) -- and never changed: a test copies it (`smoke_copy`) before it changes anything."""
    from support.registries import ROOT

    key = code_digest(ROOT / "training", ROOT / "src" / "digitserve")
    cache = shared_cache_dir(tmp_path_factory)
    done = cache / f"smoke-trained-{key}"
    root = done / "registry"
    with file_lock(cache / f"smoke-trained-{key}.lock"):
        if (done / "complete").exists():
            return root
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
            trained = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
            assert trained.returncode == 0, trained.stderr[-2000:]
            assert json.loads(trained.stdout.strip().splitlines()[-1])["model"] == arch, trained.stdout[-500:]
        (done / "complete").touch()
    return root


@pytest.fixture(scope="module")
def smoke_copy(smoke_trained: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This module's own copy of `smoke_trained` (its checkpoints in `../checkpoints`)."""
    copy = tmp_path_factory.mktemp("smoke-copy") / "registry"
    shutil.copytree(smoke_trained, copy)
    shutil.copytree(smoke_trained.parent / "checkpoints", copy.parent / "checkpoints")
    return copy
