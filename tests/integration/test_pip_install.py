"""A user's `pip install .` into a fresh virtual environment serves both shipped models from any
folder -- with the serving install alone, which has no torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from support.server import READY_TIMEOUT_S, spawn, stop_server

from digitserve.serving.api.schemas import EXAMPLE_PNG_B64

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def run(cmd: list[str], cwd: Path, timeout_s: float = 900) -> str:
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout_s)
    assert done.returncode == 0, f"{cmd}: {done.stdout[-2000:]}{done.stderr[-3000:]}"
    return done.stdout


def test_pip_install_then_serve_from_another_folder(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", str(venv)], tmp_path)
    python = venv / "bin" / "python"
    run([str(python), "-m", "pip", "install", "--quiet", str(ROOT)], tmp_path)  # not editable: a wheel
    installed = run([str(python), "-m", "pip", "list", "--format=freeze"], tmp_path).lower()
    assert "digitserve==" in installed and "torch==" not in installed and "onnxruntime==" in installed
    # the gRPC modules are compiled from the .proto while the wheel is built (setup.py), and shipped
    code = "import digitserve.serving.grpc.server, digitserve.client; print(digitserve.serving.grpc.server.__file__)"
    assert "site-packages" in run([str(python), "-c", code], tmp_path)

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {"DIGITSERVE_REGISTRY": "", "DIGITSERVE_CACHE_DIR": str(tmp_path / "cache")}  # empty: the default
    cmd = [str(venv / "bin" / "digitserve"), "serve", "--host", "127.0.0.1"]
    process, url, _ = spawn(cmd, env, log_path=tmp_path / "server.log", ready_timeout_s=READY_TIMEOUT_S, cwd=elsewhere)
    try:
        shipped = httpx.get(f"{url}/v1/models/cnn", timeout=30).json()
        assert shipped["registry"].startswith(str(venv)), shipped["registry"]  # the wheel's baselines
        for model in ("cnn", "vit"):
            r = httpx.post(f"{url}/v1/models/{model}/predict", json={"images": [EXAMPLE_PNG_B64]}, timeout=30)
            assert r.status_code == 200, r.text
            assert r.json()["predictions"][0]["label"] == 7 and r.json()["alias"] == "production"
    finally:
        assert stop_server(process) == 0
