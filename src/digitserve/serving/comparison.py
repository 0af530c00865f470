"""Comparing two versions on live inputs, in the background, only with spare capacity.

A shadow version runs on a share of the inputs production answered; a canary's answers are
checked against production's on a share of the inputs the canary answered. Either way one
answer is already out and the other is computed here, after the client has its answer:

- **Never on the request path.** The second forward pass runs in a thread of its own at the
  lowest CPU priority (nice 19), outside the inference slots, so it never holds up a batch.
- **Only with spare capacity, and dropped first.** A comparison is taken only while this
  process has less than one batch of images waiting for the forward pass and fewer than an
  eighth of `MAX_CONCURRENT_REQUESTS` in progress, and while fewer than `SHADOW_MAX_BACKLOG`
  images wait here; otherwise it is dropped, and counted by reason. Under overload nothing is
  compared, long before any request is refused.

Two answers agree when both name the same digit, or both say "not a digit" (each under its own
version's threshold). Agreement is counted per version pair and per production answer.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import logging
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from digitserve.registry import AlreadyExistsError, RegistryError, Store
from digitserve.registry.records import dumps, now_iso
from digitserve.registry.rollouts import CLASSES
from digitserve.runtime import Servable

log = logging.getLogger(__name__)
BACKGROUND_NICE = 19


def _lower_priority() -> None:
    """Run this thread (only) at the lowest CPU priority: Linux applies nice per thread."""
    with contextlib.suppress(OSError, AttributeError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), BACKGROUND_NICE)


def answers(servable: Servable, probabilities: np.ndarray) -> list[str]:
    """Each input's answer as a class name: the digit, or "not_a_digit"."""
    is_digit = servable.calibration.is_digit(probabilities)
    labels = probabilities.argmax(axis=1)
    return [str(int(label)) if digit else CLASSES[-1] for label, digit in zip(labels, is_digit, strict=True)]


@dataclass
class Agreement:
    """Compared and agreed counts of one (production version, candidate version) pair."""

    compared: int = 0
    agreed: int = 0
    per_class: dict[str, list[int]] = field(default_factory=dict)  # production's answer -> [compared, agreed]

    def add(self, production: list[str], candidate: list[str]) -> list[int]:
        """Count a batch of answers; returns the indices where the two disagree."""
        disagree = []
        for i, (p, c) in enumerate(zip(production, candidate, strict=True)):
            counts = self.per_class.setdefault(p, [0, 0])
            counts[0] += 1
            if p == c:
                counts[1] += 1
            else:
                disagree.append(i)
        self.compared += len(production)
        self.agreed += len(production) - len(disagree)
        return disagree


@dataclass(frozen=True)
class Comparison:
    """One finished comparison, for whoever records it (metrics, the canary watch, the sample log)."""

    kind: str  # "shadow" or "canary"
    model: str
    production_version: int
    candidate_version: int
    images: np.ndarray
    production: list[str]
    candidate: list[str]


@dataclass(frozen=True)
class Job:
    """One comparison to make: `answered` gave `probabilities` for `images`; `other` is to run."""

    kind: str  # "shadow" or "canary"
    answered: Servable
    probabilities: np.ndarray
    other: Servable
    images: np.ndarray
    answered_is_production: bool


Spare = Callable[[], str | None]  # None when there is room, else why not (a metrics label)
Record = Callable[[Comparison], None]


class Comparer:
    """Runs the second version of a comparison in a low-priority background thread."""

    def __init__(self, spare: Spare, record: Record, max_backlog: int, on_drop: Callable[[str, str], None]) -> None:
        self.spare = spare
        self.record = record
        self.max_backlog = max_backlog
        self.on_drop = on_drop  # (kind, reason)
        self.backlog = 0  # images waiting for, or in, the background forward pass
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="compare", initializer=_lower_priority)
        self._tasks: set[asyncio.Task[None]] = set()

    def offer(self, job: Job) -> bool:
        """Compare `job.answered` (already answered) with `job.other`, if there is room."""
        images = job.images
        reason = "backlog" if self.backlog + len(images) > self.max_backlog else self.spare()
        if reason is not None:
            self.on_drop(job.kind, reason)
            return False
        self.backlog += len(images)
        task = asyncio.get_running_loop().create_task(self._run(job))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    async def _run(self, job: Job) -> None:
        other = job.other

        def work() -> np.ndarray | None:  # spare capacity is asked again when the job's turn comes
            return None if self.spare() is not None else other.probabilities(job.images)

        try:
            computed = await asyncio.get_running_loop().run_in_executor(self.executor, work)
        except Exception:  # a candidate that cannot run: nothing to compare, and nobody waits for it
            log.exception("%s comparison of %s v%d failed", job.kind, other.model, other.version)
            self.on_drop(job.kind, "failed")
            return
        finally:
            self.backlog -= len(job.images)
        if computed is None:
            self.on_drop(job.kind, "busy")
            return
        mine, theirs = answers(job.answered, job.probabilities), answers(other, computed)
        production, candidate = (job.answered, other) if job.answered_is_production else (other, job.answered)
        production_answers, candidate_answers = (mine, theirs) if job.answered_is_production else (theirs, mine)
        self.record(
            Comparison(
                job.kind,
                other.model,
                production.version,
                candidate.version,
                job.images,
                production_answers,
                candidate_answers,
            )
        )

    async def close(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self.executor.shutdown(wait=False, cancel_futures=True)


class DisagreementLog:
    """A bounded sample of the inputs two versions answered differently, kept in the registry for review:

        disagreements/<model>/v<production>-v<candidate>/<sha256 of the pixels>.json

    At most `per_pair` per version pair (counting what earlier processes kept; several processes
    at once may each add a few), written by a thread of its own with create-only writes (the same
    input twice is one file). A sample the registry cannot take now is dropped: it is a sample,
    not a record."""

    def __init__(self, store: Store, per_pair: int) -> None:
        self.store = store
        self.per_pair = per_pair
        self.kept: dict[tuple[str, int, int], int] = {}  # offered to the writer, per pair
        self.stored: dict[str, int] = {}  # in the registry, per pair prefix (read once, then counted)
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="disagreements")

    def keep(self, comparison: Comparison, indices: list[int]) -> None:
        pair = (comparison.model, comparison.production_version, comparison.candidate_version)
        room = self.per_pair - self.kept.get(pair, 0)
        for i in indices[: max(room, 0)]:
            self.kept[pair] = self.kept.get(pair, 0) + 1
            self.executor.submit(self._write, comparison, i)

    def _write(self, c: Comparison, i: int) -> None:
        prefix = f"disagreements/{c.model}/v{c.production_version}-v{c.candidate_version}/"
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
            "model": c.model,
            "kind": c.kind,
            "production_version": c.production_version,
            "candidate_version": c.candidate_version,
            "production": c.production[i],
            "candidate": c.candidate[i],
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

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)
