"""Fixtures shared by the test suite. Each block provides one thing; add yours as a new block.

S3 (`moto_endpoint`, `moto_s3_env`, `s3_bucket`, `registry_uri`): a real moto standalone
server in a subprocess, spoken to over HTTP by boto3 exactly as production S3 would be.
"""

from __future__ import annotations

import os

# The suite runs many processes on few cores (servers, CLI runs, training, two test workers). An
# OpenMP thread that waits spins by default, taking the core from the process next to it (torch's
# forward passes in gate runs and training side by side took about twice as long). Set before
# torch is imported here; every subprocess inherits it. Same threads, same results: only how an
# idle thread waits changes.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import contextlib
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
from support import smoke
from support.net import free_port

# --- the order modules run in ---------------------------------------------------------------

# The modules that take a worker a minute or more (`--durations` of the suite), longest first:
# pytest-xdist hands out whole modules in collection order (`make test` passes
# --no-loadscope-reorder), so starting these first lets the workers finish together.
LONGEST_FIRST = (
    "test_cli_registry.py",
    "test_training.py",
    "test_store_contract.py",
    "test_web_page.py",
    "test_s3_e2e.py",
    "test_bench_smoke.py",
    "test_v2_protocol.py",
    "test_faults.py",
    "test_s3_serving.py",
    "test_feedback_loop.py",
    "test_feedback_server.py",
    "test_pip_install.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each module's own order kept


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


PREFETCH: list[smoke.Prefetch] = []


def pytest_collection_finish(session: pytest.Session) -> None:
    """Each xdist worker of `make test` (every one collects the whole suite) starts, in a thread, what
    a test of the smoke models will wait for: the first to take the lock trains, beside the
    workers' first tests; the others find the models made (or the failure recorded)."""
    wanted = any("smoke_trained" in getattr(item, "fixturenames", ()) for item in session.items)
    if wanted and os.environ.get("PYTEST_XDIST_WORKER") and os.environ.get("DIGITSERVE_TEST_CACHE"):
        PREFETCH.append(smoke.Prefetch(Path(os.environ["DIGITSERVE_TEST_CACHE"])))


def pytest_sessionfinish(session: pytest.Session) -> None:
    for prefetch in PREFETCH:  # no training outlives the session; its failure is the fixture's to report
        with contextlib.suppress(Exception):
            prefetch.result()


@pytest.fixture(scope="session")
def smoke_trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A registry folder that `training/train.py --smoke` filled, as a user runs it (support/smoke.py):
    cnn v1 (seed 0), cnn v2 (seed 1) and vit v1 (seed 0), no alias; beside it
    `checkpoints/ARCH-SEED.safetensors`. Trained once for the whole run and never changed: a test
    copies it (`smoke_copy`) before it changes anything."""
    if PREFETCH:
        return PREFETCH[0].result()
    return smoke.trained(shared_cache_dir(tmp_path_factory))


@pytest.fixture(scope="module")
def smoke_copy(smoke_trained: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This module's own copy of `smoke_trained` (its checkpoints in `../checkpoints`)."""
    copy = tmp_path_factory.mktemp("smoke-copy") / "registry"
    shutil.copytree(smoke_trained, copy)
    shutil.copytree(smoke_trained.parent / "checkpoints", copy.parent / "checkpoints")
    return copy
