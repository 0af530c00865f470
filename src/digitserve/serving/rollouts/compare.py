"""Comparing two versions on live inputs, in the background, only with spare capacity.

A shadow version runs on a share of the inputs production answered; a canary's answers are
checked against production's on a share of the inputs the canary answered. Either way one
answer is already out and the other is computed here, after the client has its answer:

- **Never on the request path.** The second forward pass runs in a thread of its own that Linux
  schedules only on CPU nobody else wants (SCHED_IDLE, else nice 19; background.py), outside
  the inference slots, in small batches gathered for a few milliseconds, so it never holds up a
  batch; its agreement is counted there too, and the event loop only adds the counts up.
- **Only with spare capacity, and dropped first.** A comparison is taken only while this
  process has less than one batch of images waiting for the forward pass and fewer than 4
  predictions in progress, and while fewer than `SHADOW_MAX_BACKLOG`
  images wait here; otherwise it is dropped, and counted by reason. The rule is asked again when
  a comparison's turn comes. Under overload nothing is compared, long before any request is refused.

Two answers agree when both name the same digit, or both say "not a digit" (each under its own
version's threshold). Agreement is counted per version pair and per production answer.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from digitserve.registry import AlreadyExistsError, RegistryError, Store
from digitserve.registry.evidence import PerClass, count_agreement, merge_per_class
from digitserve.registry.records import dumps, now_iso
from digitserve.runtime import Servable
from digitserve.serving.inference.state import Role
from digitserve.serving.rollouts.background import Compared, Other, compare_batch

log = logging.getLogger(__name__)
BATCH_WAIT_S = 0.005  # how long comparisons gather before they are run together
BATCH_IMAGES = 256


class PairKey(NamedTuple):
    """A comparison's version pair, as its agreement is counted."""

    kind: Role
    model: str
    production_version: int
    candidate_version: int


@dataclass
class Agreement:
    """Compared and agreed counts of one (production version, candidate version) pair."""

    compared: int = 0
    agreed: int = 0
    per_class: PerClass = field(default_factory=dict)

    def merge(self, per_class: PerClass) -> None:
        """Add counts already made (per production answer)."""
        merge_per_class(self.per_class, per_class)
        self.compared += sum(t.compared for t in per_class.values())
        self.agreed += sum(t.agreed for t in per_class.values())

    def add(self, production: list[str], candidate: list[str]) -> list[int]:
        """Count a batch of answers; returns the indices where the two disagree."""
        per_class, disagree = count_agreement(production, candidate)
        self.merge(per_class)
        return disagree

    def to_dict(self) -> dict[str, Any]:
        per_class = {answer: list(tally) for answer, tally in self.per_class.items()}
        return {"compared": self.compared, "agreed": self.agreed, "per_class": per_class}


@dataclass(frozen=True)
class Comparison:
    """One finished comparison, for whoever records it (metrics, the canary watch, the sample log)."""

    key: PairKey
    images: np.ndarray
    found: Compared
    clients: tuple[tuple[str, int], ...] = ()  # (client network, its images), in the order of `images`

    @property
    def pair(self) -> tuple[str, int, int]:
        return self.key.model, self.key.production_version, self.key.candidate_version

    def by_client(self) -> dict[str, tuple[int, int]]:
        """Each client network's (compared, agreed) inputs in this comparison."""
        out: dict[str, tuple[int, int]] = {}
        start = 0
        disagree = set(self.found.disagree)
        for client, n in self.clients:
            agreed = sum(1 for i in range(start, start + n) if i not in disagree)
            compared, before = n, out.get(client, (0, 0))
            out[client] = (before[0] + compared, before[1] + agreed)
            start += n
        return out


@dataclass(frozen=True)
class Job:
    """One comparison to make: `answered` gave `probabilities` for `images`; `other` is to run."""

    kind: Role
    answered: Servable
    probabilities: np.ndarray
    other: Servable
    images: np.ndarray
    answered_is_production: bool
    client: str = ""  # the network of the client whose request it was (clients.py)


Spare = Callable[[], str | None]  # None when there is room, else why not (a metrics label)
Record = Callable[[Comparison], None]


class Comparer:
    """Runs the second version of each comparison in the background thread (background.py), a
    small batch at a time from a bounded queue, asking for spare capacity again before each."""

    def __init__(
        self,
        spare: Spare,
        record: Record,
        max_backlog: int,
        on_drop: Callable[[str, str], None],
        pool: Executor,
    ) -> None:
        self.spare = spare
        self.pool = pool  # the comparison thread (background.py's `background_pool`, the composition root's)
        self.record = record
        self.max_backlog = max_backlog
        self.on_drop = on_drop  # (kind, reason)
        self.backlog = 0  # images waiting for, or in, the comparison thread
        self._queue: deque[Job] = deque()
        self._pump: asyncio.Task[None] | None = None

    def offer(self, job: Job) -> bool:
        """Compare `job.answered` (already answered) with `job.other`, if there is room."""
        reason = "backlog" if self.backlog + len(job.images) > self.max_backlog else self.spare()
        if reason is not None:
            self.on_drop(job.kind, reason)
            return False
        self.backlog += len(job.images)
        self._queue.append(job)
        if self._pump is None or self._pump.done():
            self._pump = asyncio.get_running_loop().create_task(self._drain())
        return True

    async def _drain(self) -> None:
        """Every BATCH_WAIT_S, the queued jobs run as one batch per version pair: one forward pass,
        and one count of agreements, for several answers."""
        while self._queue:
            if self.backlog < BATCH_IMAGES:
                await asyncio.sleep(BATCH_WAIT_S)
            jobs, size = [], 0
            while self._queue and size < BATCH_IMAGES:
                jobs.append(self._queue.popleft())
                size += len(jobs[-1].images)
            try:
                if self.spare() is not None:  # load arrived since they were offered: it goes first
                    for job in jobs:
                        self.on_drop(job.kind, "busy")
                    continue
                await self._compare(jobs)
            except Exception:  # a candidate that cannot run: nothing to compare, and nobody waits for it
                log.exception("a comparison of %d jobs failed", len(jobs))
                for job in jobs:
                    self.on_drop(job.kind, "failed")
            finally:
                self.backlog -= size

    async def _compare(self, jobs: list[Job]) -> None:
        # one batch per version pair and per side that answered (a paused canary runs on production's inputs)
        groups: dict[tuple[PairKey, bool], list[Job]] = {}
        for job in jobs:
            first, second = (job.answered, job.other) if job.answered_is_production else (job.other, job.answered)
            key = PairKey(job.kind, first.model, first.version, second.version)
            groups.setdefault((key, job.answered_is_production), []).append(job)
        for (key, _), group in groups.items():
            head = group[0]
            images = np.concatenate([job.images for job in group])
            answered = np.concatenate([job.probabilities for job in group])
            args = (images, answered, head.answered.calibration.threshold, head.answered_is_production)
            clients = tuple((job.client, len(job.images)) for job in group)
            self.record(Comparison(key, images, await self._in_background(head.other, *args), clients))

    async def _in_background(self, other: Servable, *args: Any) -> Compared:
        sha = other.manifest.onnx.sha256 if other.manifest.onnx else f"{other.model}-{other.version}"
        c = other.calibration
        job = Other(sha, other.graph, c.temperature, c.threshold)
        found = await asyncio.get_running_loop().run_in_executor(self.pool, compare_batch, job, *args)
        if found is None:
            raise RuntimeError("the version's graph could not be loaded for comparing")
        return found

    async def close(self) -> None:
        self._queue.clear()
        if self._pump is not None:
            try:
                await asyncio.wait_for(self._pump, 5)
            except Exception as exc:  # a stop never waits long on a comparison; the rest are dropped
                log.warning("the comparisons in flight were not finished: %r", exc)


class DisagreementLog:
    """A bounded sample of the inputs two versions answered differently, kept in the registry for review:

        disagreements/<model>/v<production>-v<candidate>/<sha256 of the pixels>.json

    At most `per_pair` per version pair (counting what earlier processes kept; several processes
    at once may each add a few), written by a thread of its own with create-only writes (the same
    input twice is one file). A sample the registry cannot take now is dropped: it is a sample,
    not a record."""

    def __init__(self, store: Store, per_pair: int, executor: Executor) -> None:
        self.store = store
        self.per_pair = per_pair
        self.kept: dict[tuple[str, int, int], int] = {}  # offered to the writer, per (model, production, candidate)
        self.stored: dict[str, int] = {}  # in the registry, per pair prefix (read once, then counted)
        self.executor = executor  # one thread of its own, owned by the composition root

    def keep(self, comparison: Comparison) -> None:
        """Keep the inputs the comparison's two versions disagreed on, within the bound."""
        pair = comparison.pair
        room = self.per_pair - self.kept.get(pair, 0)
        for i in comparison.found.disagree[: max(room, 0)]:
            self.kept[pair] = self.kept.get(pair, 0) + 1
            self.executor.submit(self._write, comparison, i)

    def _write(self, c: Comparison, i: int) -> None:
        key = c.key
        prefix = f"disagreements/{key.model}/v{key.production_version}-v{key.candidate_version}/"
        if prefix not in self.stored:  # what earlier processes kept counts too: the bound is per pair
            try:
                self.stored[prefix] = len(self.store.list(prefix))
            except RegistryError:
                return
        if self.stored[prefix] >= self.per_pair:
            return
        pixels = np.ascontiguousarray(c.images[i], np.uint8)
        digest = hashlib.sha256(pixels.tobytes()).hexdigest()
        doc = {
            "model": key.model,
            "kind": key.kind,
            "production_version": key.production_version,
            "candidate_version": key.candidate_version,
            "production": c.found.production[i],
            "candidate": c.found.candidate[i],
            "pixels_uint8_b64": base64.b64encode(pixels.tobytes()).decode(),
            "shape": [28, 28],
            "at": now_iso(),
        }
        try:
            self.store.create(f"{prefix}{digest}.json", dumps(doc))
            self.stored[prefix] += 1
        except AlreadyExistsError:
            pass
        except RegistryError as exc:
            log.warning("a disagreement sample was not kept: %s", exc)
