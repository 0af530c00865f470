"""The decode processes: "spawn" (a fork of a server with running threads is unsafe), each dying
with the server process that started it, however that one ends."""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
from concurrent.futures import ProcessPoolExecutor

PR_SET_PDEATHSIG = 1  # <sys/prctl.h>


def decode_pool(processes: int) -> ProcessPoolExecutor:
    """A pool starts its processes on its first job, so a server that never gets a large image has none."""
    context = multiprocessing.get_context("spawn")
    return ProcessPoolExecutor(processes, mp_context=context, initializer=die_with_parent, initargs=(os.getpid(),))


def die_with_parent(parent: int) -> None:
    """In a decode process: ask Linux for SIGTERM when the parent exits (even killed), so a decode
    process never outlives its server and keeps CPU, memory and multiprocessing's resource tracker.
    `parent` is the server process's pid (which may be 1: the server as a container's first process)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: the pool's own shutdown is all there is
        return
    if os.getppid() != parent:  # the parent died before the request was made
        os._exit(1)
