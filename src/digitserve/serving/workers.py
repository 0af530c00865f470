"""Several worker processes that behave as one server: shared metrics, reloads that reach all.

`digitserve serve --workers N` makes a runtime folder that every worker shares (through the
environment, which uvicorn's worker processes inherit):
- `metrics/`: Prometheus multiprocess files, so `/metrics` on any worker shows every worker;
- `reload`: a generation counter. `POST /v1/admin/reload` on whichever worker it reaches bumps
  it; every worker watches it, re-reads its aliases, and writes `acks/<pid>` with the
  generation it has handled, so the answering worker can report that all of them did.
Hot-swaps stay per process and drop nothing, as with one worker. The supervisor of the workers
is uvicorn's, with one change for a clean stop (`DrainingMultiprocess`).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

from uvicorn.supervisors.multiprocess import Multiprocess

from digitserve.config import SettingError, Settings, join_worker_group, worker_group

WATCH_INTERVAL_S = 0.2
log = logging.getLogger(__name__)


CGROUP = Path("/sys/fs/cgroup")


def available_cores(cgroup: Path = CGROUP) -> int:
    """The cores this process may use: those it may run on, within its container's CPU limit
    (cgroup v2 `cpu.max`, or v1's CFS quota), rounded up -- `os.cpu_count()` is the host's, so a
    2-CPU pod on a 16-core node would start 16 workers with a model each."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    for quota_file, period_file in (("cpu.max", None), ("cpu/cpu.cfs_quota_us", "cpu/cpu.cfs_period_us")):
        try:
            fields = (cgroup / quota_file).read_text().split()
            quota, period = fields[0], fields[1] if period_file is None else (cgroup / period_file).read_text().strip()
            if quota not in ("max", "-1"):
                cores = min(cores, max(1, -(-int(quota) // int(period))))
            break
        except (OSError, ValueError, IndexError, ZeroDivisionError):
            continue
    return max(1, cores)


def worker_count(setting: str) -> int:
    """Worker processes for a `--workers` value. `auto` is one process per available core, each with one
    ONNX Runtime thread: measured best on 2 cores at every load but a single client, where it
    ties (bench/README.md -> layout). One event loop per core is what the HTTP work needs."""
    if setting == "auto":
        return available_cores()
    try:
        count = int(setting)
    except ValueError:
        raise SettingError(f"--workers must be a number or auto, got {setting!r}") from None
    if not 1 <= count <= 64:
        raise SettingError(f"--workers must be between 1 and 64, got {count}")
    return count


@contextlib.contextmanager
def prepare_workers(settings: Settings, workers: int) -> Iterator[Path]:
    """The shared runtime folder for a multi-worker server, exported to the workers' environment."""
    made = settings.runtime_dir is None
    root = Path(tempfile.mkdtemp(prefix="digitserve-")) if made else Path(settings.runtime_dir or "")
    (root / "metrics").mkdir(parents=True, exist_ok=True)
    (root / "acks").mkdir(exist_ok=True)
    for stale in (root / "metrics").glob("*.db"):
        stale.unlink()
    (root / "feedback-buckets").unlink(missing_ok=True)  # a new server: no bucket of an earlier one
    join_worker_group(root, workers)
    try:
        yield root
    finally:
        if made:
            shutil.rmtree(root, ignore_errors=True)


def runtime_threads(setting: int | None) -> int:
    """ONNX Runtime threads for this process: the setting, else the cores divided among the workers."""
    if setting is not None:
        return setting
    return max(1, available_cores() // worker_group()[1])


class ReloadBroadcast:
    """The reload generation shared by the workers of one server (see the module docstring)."""

    def __init__(self, root: Path, workers: int) -> None:
        self.root = root
        self.workers = workers
        self.counter = root / "reload"
        self.acks = root / "acks"

    @classmethod
    def from_env(cls) -> ReloadBroadcast | None:
        root, workers = worker_group()
        return cls(root, workers) if root else None

    def generation(self) -> int:
        try:
            return int(self.counter.read_text() or 0)
        except (FileNotFoundError, ValueError):
            return 0

    def request(self) -> int:
        """Bump the generation (under a lock, so two requests at once give two generations)."""
        with open(self.root / "reload.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            generation = self.generation() + 1
            tmp = self.counter.with_suffix(".tmp")
            tmp.write_text(str(generation))
            os.replace(tmp, self.counter)
        return generation

    def acknowledge(self, generation: int) -> None:
        (self.acks / str(os.getpid())).write_text(str(generation))

    def acknowledged(self, generation: int) -> int:
        """How many workers have handled `generation` (or a later one)."""
        count = 0
        for ack in self.acks.iterdir():
            with contextlib.suppress(ValueError, OSError):
                count += int(ack.read_text() or 0) >= generation
        return count

    async def wait(self, generation: int, timeout_s: float) -> int:
        deadline = time.monotonic() + timeout_s
        while self.acknowledged(generation) < self.workers and time.monotonic() < deadline:
            await asyncio.sleep(WATCH_INTERVAL_S / 2)
        return self.acknowledged(generation)

    async def watch(self, reload: Callable[[], Awaitable[Any]]) -> None:
        """Run `reload` in this worker whenever the generation moves; acknowledge each one."""
        seen = self.generation()
        self.acknowledge(seen)
        while True:
            await asyncio.sleep(WATCH_INTERVAL_S)
            current = self.generation()
            if current != seen:
                seen = current
                await reload()
                self.acknowledge(current)


class WorkerSocket(socket.socket):
    """The address the workers listen on, one listening socket per worker.

    Workers that share one listening socket race for each new connection: a worker's event loop
    accepts every connection waiting when it wakes, so a burst of new keep-alive connections (a
    load generator's 64, a proxy's pool) could all land on one worker and stay there, at half the
    server's speed (one fresh start in ten in `make bench`: one worker at 0 CPU seconds). With
    SO_REUSEPORT each worker has a socket of its own on the same address and the kernel spreads
    connections over them by their addresses. The supervisor's socket holds the port and never
    listens; pickled into a worker (spawn), it becomes a new socket there, in the same group."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (reuseport_socket, (self.family, self.getsockname()))


def reuseport_socket(family: int, address: tuple[Any, ...]) -> WorkerSocket:
    """A socket bound to `address` with SO_REUSEPORT (port 0: a free one), ready to listen."""
    sock = WorkerSocket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        log.error("cannot listen on %s: %s", address, exc)
        sys.exit(3)  # uvicorn's STARTUP_FAILURE
    sock.set_inheritable(True)
    return sock


def workers_socket(host: str, port: int, what: str = "HTTP") -> WorkerSocket:
    """The supervisor's socket for `host:port` (IPv6 when the host has a colon); for gRPC, only
    a port held for the workers' gRPC servers (serving/grpc/server.py), which join it."""
    sock = reuseport_socket(socket.AF_INET6 if ":" in host else socket.AF_INET, (host, port))
    if what == "HTTP":
        log.info("Uvicorn running on http://%s:%d (a listening socket per worker)", host, sock.getsockname()[1])
    else:
        log.info("%s port %s:%d held for the workers, each listening on it", what, host, sock.getsockname()[1])
    return sock


class DrainingMultiprocess(Multiprocess):
    """uvicorn's worker supervisor, but on SIGTERM it closes its own socket before it stops the
    workers. Each worker closes its own listener once it has taken in what the kernel queued
    there (serving/http/shutdown.py); a connection after the last one closed is refused, never
    reset. (With a shared listening socket, the parent -- which never accepts -- held it open
    until the last worker had drained, and connections made meanwhile were accepted, then reset.)"""

    def handle_term(self) -> None:
        for sock in self.sockets:
            sock.close()
        log.info("SIGTERM: the supervisor let go of the listening socket; the workers drain")
        super().handle_term()
