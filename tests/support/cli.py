"""Running the `digitserve` command as a user would, and reading its answers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def digitserve(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    script = Path(sys.executable).with_name("digitserve")
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "digitserve.cli"]
    return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=300, env={**os.environ, **(env or {})})


def error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The failure's stderr, which must be exactly one line starting with 'error: '."""
    assert result.returncode != 0, result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def succeeded(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    return result.stdout
