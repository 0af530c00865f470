"""Import each named module alone: `python import_each.py MODULE...` prints a JSON list of
[module, error] for those that fail.

Each module is imported in a fork of this process taken before any of the project's modules
is imported, so an import circle fails the module that starts it, as in a fresh interpreter.
The third-party packages the modules import (numpy, torch, fastapi, ...) are imported once
here, before the forks: they are what made one fresh interpreter per module cost seconds.
"""

from __future__ import annotations

import ast
import contextlib
import importlib
import importlib.util
import io
import json
import os
import select
import signal
import sys
import traceback
from pathlib import Path

PACKAGE = "digitserve"
CONCURRENT = 2
CHILD_TIMEOUT_S = 120  # one module's import, as the fresh interpreter per module had


def third_party(source_root: Path) -> set[str]:
    """The top-level names every module under `source_root` imports that are neither the
    standard library nor the project."""
    names: set[str] = set()
    for path in source_root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names - set(sys.stdlib_module_names) - {PACKAGE, "__future__"}


def preload(names: set[str]) -> None:
    for name in sorted(names):
        with contextlib.suppress(Exception), contextlib.redirect_stderr(io.StringIO()):
            importlib.import_module(name)  # one that fails here fails again, and is reported, in its fork
    assert not [m for m in sys.modules if m.split(".")[0] == PACKAGE], "a preload imported the project"


def import_in_fork(module: str) -> tuple[int, int]:
    """Start the import of `module` in a child; its pid and the read end of its error pipe."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        os.close(read)
        status = 0
        try:
            importlib.import_module(module)
        except BaseException:
            os.write(write, traceback.format_exc()[-800:].encode())
            status = 1
        os._exit(status)
    os.close(write)
    return pid, read


def collect(pid: int, read: int) -> str | None:
    """The child's error, or None when its import succeeded; a child past CHILD_TIMEOUT_S is killed."""
    with os.fdopen(read, "rb") as pipe:
        ready, _, _ = select.select([pipe], [], [], CHILD_TIMEOUT_S)
        if not ready:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return f"the import did not finish within {CHILD_TIMEOUT_S:g} s"
        error = pipe.read().decode(errors="replace")  # the child writes at most 800 bytes, then exits
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    return None if code == 0 else error or f"exit status {code}"


def main(modules: list[str]) -> int:
    spec = importlib.util.find_spec(PACKAGE)
    assert spec is not None and spec.origin is not None, f"{PACKAGE} is not installed"
    preload(third_party(Path(spec.origin).parent))
    failed: list[tuple[str, str]] = []
    running: list[tuple[str, int, int]] = []

    def finish(name: str, pid: int, read: int) -> None:
        error = collect(pid, read)
        if error is not None:
            failed.append((name, error))

    for module in modules:
        if len(running) == CONCURRENT:
            finish(*running.pop(0))
        running.append((module, *import_in_fork(module)))
    for child in running:
        finish(*child)
    print(json.dumps(failed))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
