"""Taking feedback without ever slowing a prediction: a local spool, a writer that retries, a rate limit.

`POST /v1/feedback` only writes the sample to a spool folder on local disk (an atomic,
create-only file named by the sample's id, so a duplicate is one file) and answers 201. A
background task moves spooled samples into the registry with create-only writes, in a thread
of its own; while the registry is unreachable it retries with a growing pause (up to a
minute), and on shutdown it makes one last bounded attempt. Whatever is still spooled stays on
disk and is written by the next server that starts with the same spool folder: nothing
accepted is lost on SIGTERM or a restart. Several workers (or replicas sharing a folder) may
drain the same spool: the registry's create-only write makes them agree.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tempfile
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from digitserve.registry import RegistryError
from digitserve.registry.cache import cache_folder
from digitserve.registry.feedback import FeedbackError, FeedbackSample, FeedbackStore
from digitserve.serving.errors import OverloadedError

log = logging.getLogger(__name__)
RETRY_FIRST_S, RETRY_MAX_S = 0.5, 60.0
FLUSH_ON_SHUTDOWN_S = 5.0
RECENT_IDS = 10_000  # ids of samples spooled lately: a duplicate of one is known without a registry read


class FeedbackSpool:
    """Samples on local disk until the registry has them."""

    def __init__(
        self,
        root: Path,
        registry_uri: str,
        store: FeedbackStore,
        max_spooled: int,
        on_change: Callable[[int, int], None] = lambda pending, written: None,
    ) -> None:
        self.on_change = on_change  # (samples spooled now, samples just written): for the metrics
        self._recent: OrderedDict[str, None] = OrderedDict()  # ids spooled lately, for duplicates
        self.folder = cache_folder(root, registry_uri)  # one registry's samples never reach another
        self.store = store
        self.max_spooled = max_spooled
        # Spooling and draining have a thread each: a registry write that hangs never delays a spool write.
        self.spooler = ThreadPoolExecutor(1, thread_name_prefix="feedback-spool")
        self.drainer = ThreadPoolExecutor(1, thread_name_prefix="feedback-drain")
        self.stopping = False
        self.last_error: str | None = None
        self.written = 0  # samples this process moved into the registry
        self._wakeup = asyncio.Event()

    def _files(self) -> list[Path]:
        try:
            return sorted(self.folder.glob("*.json"), key=lambda p: p.stat().st_mtime)
        except FileNotFoundError:  # a file drained by another worker between listing and stat
            return sorted(self.folder.glob("*.json"))

    def pending(self) -> int:
        return sum(1 for _ in self.folder.glob("*.json")) if self.folder.is_dir() else 0

    async def put(self, sample: FeedbackSample) -> bool:
        """Spool the sample (fsync'd before this returns); False if it was already spooled."""
        if self.pending() >= self.max_spooled:
            raise OverloadedError(
                f"{self.max_spooled} feedback samples are waiting for the registry; retry in a minute"
            )
        sid = sample.id
        if sid in self._recent:
            self._recent.move_to_end(sid)
            return False
        new = await asyncio.get_running_loop().run_in_executor(self.spooler, self._spool, sample)
        self._recent[sid] = None
        if len(self._recent) > RECENT_IDS:
            self._recent.popitem(last=False)
        self.on_change(self.pending(), 0)
        self._wakeup.set()
        return new

    def _spool(self, sample: FeedbackSample) -> bool:
        self.folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".", suffix=".tmp", dir=self.folder)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(sample.to_bytes())
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(tmp, self.folder / f"{sample.id}.json")  # create-only: a duplicate is one file
            except FileExistsError:
                return False
        finally:
            os.unlink(tmp)
        _fsync_folder(self.folder)
        return True

    def drain(self) -> int:
        """Write every spooled sample to the registry (blocking); returns how many are left.

        Stops at the first registry failure: the rest wait for the next try."""
        for path in self._files():
            if self.stopping:
                break
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                continue  # another worker wrote it
            try:
                sample = FeedbackSample.parse(data, f"spooled feedback {path.name}")
                self.store.write_bytes(sample.id, data)
            except FeedbackError as exc:  # not a sample (never spooled by us): set aside, never retried
                log.error("%s; moved to %s", exc, self.folder / "damaged")
                (self.folder / "damaged").mkdir(exist_ok=True)
                path.replace(self.folder / "damaged" / path.name)
                continue
            except RegistryError as exc:
                self.last_error = str(exc)
                break
            self.last_error = None
            self.written += 1
            path.unlink(missing_ok=True)
        return self.pending()

    async def run(self) -> None:
        """Drain whenever something is spooled; while the registry fails, retry with a growing pause."""
        loop, pause = asyncio.get_running_loop(), RETRY_FIRST_S
        while True:
            written = self.written
            left = await loop.run_in_executor(self.drainer, self.drain)
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
            if not self.pending():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), RETRY_MAX_S)  # also picks up other workers' files

    async def close(self) -> None:
        """One last bounded attempt to write what is spooled; the rest stays on disk for the next start."""
        loop = asyncio.get_running_loop()
        self.spooler.shutdown(wait=True)  # every sample answered 201 is on disk
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(loop.run_in_executor(self.drainer, self.drain), FLUSH_ON_SHUTDOWN_S)
        self.stopping = True  # a drain still running stops after the sample it is writing
        self.drainer.shutdown(wait=False)
        if self.pending():
            log.warning("feedback: %d samples stay spooled in %s for the next start", self.pending(), self.folder)


def _fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class RateLimiter:
    """A token bucket per client: `per_minute` samples a minute, bursts up to the same number."""

    def __init__(self, per_minute: int, max_clients: int = 10_000) -> None:
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0
        self.max_clients = max_clients
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # client -> (tokens, at)

    def take(self, client: str) -> float | None:
        """Take one token for `client`: None if it had one, else the seconds until it will."""
        now = time.monotonic()
        tokens, at = self._buckets.pop(client, (self.capacity, now))
        tokens = min(self.capacity, tokens + (now - at) * self.rate)
        wait = None if tokens >= 1 else (1 - tokens) / self.rate
        self._buckets[client] = (tokens - 1 if wait is None else tokens, now)
        while len(self._buckets) > self.max_clients:
            self._buckets.popitem(last=False)  # the longest-idle client's: memory stays bounded
        return wait
