"""How every command (the `digitserve` CLI, the training scripts) reports an expected failure: one
line on stderr saying why, and exit status 1. Unexpected errors keep their traceback."""

from __future__ import annotations

import sys
from collections.abc import Callable

from digitserve.config import SettingError
from digitserve.data import DataError
from digitserve.registry import RegistryError


def run_reporting_errors(command: Callable[[], int]) -> int:
    """Run a command; an expected failure (data, registry, a setting) is one 'error: ...' line and exit code 1."""
    try:
        return int(command())
    except (DataError, RegistryError, SettingError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
