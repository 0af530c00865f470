"""Taking feedback without ever slowing a prediction: a local spool, a writer that retries, a rate limit.

`POST /v1/feedback` only writes the sample to a spool folder on local disk (an atomic,
create-only file named by the sample's id, so a duplicate is one file) and answers 201. A
background task moves spooled samples into the registry with create-only writes, in a thread
of its own; while the registry is unreachable it retries with a growing pause (up to a
minute, at once when new feedback arrives), and on shutdown it makes one last bounded attempt.
Whatever is still spooled stays on disk and is written by the next server that starts with the
same spool folder: nothing accepted is lost on SIGTERM or a restart. Several workers (or
replicas sharing a folder) may drain the same spool: the registry's create-only write makes them
agree. No folder is listed on the event loop: the count of spooled samples is kept in memory and
re-counted by the writer's thread.

A duplicate is known to every worker sharing the folder, without a registry read: a sample
written to the registry leaves an empty marker under `written/` (made before its spooled file
is removed, so one of the two always exists), and a sample is new only if neither exists once
its file is linked in. The newest `RECENT_IDS` markers are kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from digitserve.registry import RegistryError
from digitserve.registry.cache import cache_folder
from digitserve.registry.feedback import FeedbackError, FeedbackSample, FeedbackStore
from digitserve.serving.errors import OverloadedError, ServiceUnavailableError

log = logging.getLogger(__name__)
RETRY_FIRST_S, RETRY_MAX_S = 0.5, 60.0
FLUSH_ON_SHUTDOWN_S = 5.0
RECENT_IDS = 10_000  # ids of samples spooled lately: a duplicate of one is known without a registry read
PRUNE_EVERY = 500  # samples written between prunings of the `written/` markers
STALE_TEMP_S = 60.0  # a temporary file this old is what a crash mid-write left
T = TypeVar("T")


class FeedbackSpool:
    """Samples on local disk until the registry has them."""

    def __init__(
        self,
        root: Path,
        registry_uri: str,
        store: FeedbackStore,
        max_spooled: int,
        on_change: Callable[[int, int], None] = lambda pending, written: None,
        spooler: Executor | None = None,
    ) -> None:
        self.on_change = on_change  # (samples spooled now, samples just written): for the metrics
        self._recent: OrderedDict[str, None] = OrderedDict()  # ids spooled lately, for duplicates
        self.folder = cache_folder(root, registry_uri)  # one registry's samples never reach another
        self.store = store
        self.max_spooled = max_spooled
        # one thread of its own (the composition root's), so a spool write never waits behind a slow one
        self.spooler = spooler or ThreadPoolExecutor(1, thread_name_prefix="feedback-spool")
        self.stopping = False
        self.last_error: str | None = None
        self.written = 0  # samples this process moved into the registry (or found there already)
        self.pending = self._count()
        self._wakeup = asyncio.Event()

    def _files(self) -> list[Path]:
        found = []
        for path in self.folder.glob("*.json"):
            with contextlib.suppress(FileNotFoundError):  # drained by another worker meanwhile
                found.append((path.stat().st_mtime, path))
        return [path for _, path in sorted(found)]

    def _count(self) -> int:
        """Spooled samples on disk (and stale temporary files removed): for the writer's thread."""
        if not self.folder.is_dir():
            return 0
        for tmp in self.folder.glob(".*.tmp"):
            with contextlib.suppress(OSError):
                if time.time() - tmp.stat().st_mtime > STALE_TEMP_S:
                    tmp.unlink()
        return sum(1 for _ in self.folder.glob("*.json"))

    async def put(self, sample: FeedbackSample) -> bool:
        """Spool the sample (fsync'd before this returns); False if it was already spooled."""
        if self.pending >= self.max_spooled:
            raise OverloadedError(
                f"{self.max_spooled} feedback samples are waiting for the registry; retry in a minute"
            )
        sid = sample.id
        if sid in self._recent:
            self._recent.move_to_end(sid)
            return False
        try:
            new = await asyncio.get_running_loop().run_in_executor(self.spooler, self._spool, sample)
        except OSError as exc:
            raise ServiceUnavailableError(
                f"feedback cannot be saved now: the server's spool folder is not writable ({exc.strerror or exc})"
            ) from None
        self._recent[sid] = None
        if len(self._recent) > RECENT_IDS:
            self._recent.popitem(last=False)
        self.pending += new
        self.on_change(self.pending, 0)
        self._wakeup.set()
        return new

    def _spool(self, sample: FeedbackSample) -> bool:
        """Link the sample in (create-only); False if it is spooled already, or written already
        (by any worker on this folder)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        marker = self.folder / "written" / sample.id
        if marker.exists():
            return False
        spooled = self.folder / f"{sample.id}.json"
        fd, tmp = tempfile.mkstemp(prefix=".", suffix=".tmp", dir=self.folder)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(sample.to_bytes())
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(tmp, spooled)  # create-only: a duplicate is one file
            except FileExistsError:
                return False
        finally:
            os.unlink(tmp)
        if marker.exists():  # written meanwhile (its marker is made before its file goes): not new
            spooled.unlink(missing_ok=True)
            return False
        _fsync_folder(self.folder)
        return True

    def drain(self) -> int:
        """Write every spooled sample to the registry (blocking); returns how many are left.

        Stops at the first registry failure: the rest wait for the next try."""
        for path in self._files():
            if self.stopping:
                break
            try:
                if not self._write(path):
                    break
            except Exception as exc:  # anything else about one file must not stop the writer
                log.exception("spooled feedback %s could not be written: %s", path.name, exc)
        self.pending = self._count()
        return self.pending

    def _write(self, path: Path) -> bool:
        """One spooled file into the registry; False when the registry failed (try again later)."""
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return True  # another worker wrote it
        try:
            sample = FeedbackSample.parse(data, f"spooled feedback {path.name}")
            self.store.write_bytes(sample.id, data)
        except FeedbackError as exc:  # not a sample (never spooled by a server): set aside, never retried
            log.error("%s; moved to %s", exc, self.folder / "damaged")
            (self.folder / "damaged").mkdir(exist_ok=True)
            with contextlib.suppress(FileNotFoundError):
                path.replace(self.folder / "damaged" / path.name)
            return True
        except RegistryError as exc:
            self.last_error = str(exc)
            return False
        self.last_error = None
        self.written += 1
        written = self.folder / "written"
        written.mkdir(exist_ok=True)
        (written / sample.id).touch()  # before the spooled file goes: a duplicate is known all along
        path.unlink(missing_ok=True)
        if self.written % PRUNE_EVERY == 0:
            self._prune_markers(written)
        return True

    @staticmethod
    def _prune_markers(written: Path) -> None:
        """Keep the newest RECENT_IDS markers of written samples (an older duplicate is a registry
        create that finds the sample there: stored once all the same, answered as new)."""
        found = []
        for marker in written.iterdir():
            with contextlib.suppress(FileNotFoundError):
                found.append((marker.stat().st_mtime, marker))
        for _, marker in sorted(found, reverse=True)[RECENT_IDS:]:
            marker.unlink(missing_ok=True)

    async def run(self) -> None:
        """Drain whenever something is spooled; while the registry fails, retry with a growing pause."""
        pause = RETRY_FIRST_S
        while True:
            written = self.written
            try:
                left = await in_daemon_thread(self.drain)
            except Exception:
                log.exception("feedback writer failed; retrying")
                left = self.pending
            self.on_change(left, self.written - written)
            if left and self.last_error:
                log.warning(
                    "feedback: %d samples wait for the registry (%s); retry in %.0fs", left, self.last_error, pause
                )
                self._wakeup.clear()
                with contextlib.suppress(TimeoutError):  # new feedback tries again at once
                    await asyncio.wait_for(self._wakeup.wait(), pause)
                pause = min(pause * 2, RETRY_MAX_S)
                continue
            pause = RETRY_FIRST_S
            self._wakeup.clear()
            if not left:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), RETRY_MAX_S)  # also picks up other workers' files

    async def close(self) -> None:
        """One last bounded attempt to write what is spooled; the rest stays on disk for the next start.
        Whoever owns the spooler shuts it down first, so every sample answered 201 is on disk."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(in_daemon_thread(self.drain), FLUSH_ON_SHUTDOWN_S)
        self.stopping = True  # a drain still running stops after the sample it is writing
        if self.pending:
            log.warning("feedback: %d samples stay spooled in %s for the next start", self.pending, self.folder)


async def in_daemon_thread(fn: Callable[[], T]) -> T:
    """`fn()` in a daemon thread: a registry call that hangs can never keep the process from exiting."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def run() -> None:
        try:
            result = fn()
        except BaseException as exc:  # handed to the awaiting coroutine
            loop.call_soon_threadsafe(_settle, future, None, exc)
        else:
            loop.call_soon_threadsafe(_settle, future, result, None)

    threading.Thread(target=run, name="feedback-writer", daemon=True).start()
    return await asyncio.shield(future)


def _settle(future: asyncio.Future[T], result: T | None, exc: BaseException | None) -> None:
    if future.done():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)  # type: ignore[arg-type]


def _fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
