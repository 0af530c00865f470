"""What the registry holds for a model (versions, aliases, metrics), cached between reads.

Manifests are immutable, so each is read once. If the registry cannot be reached, the last
listing is shown with the error, so `GET /v1/models` keeps answering.
"""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import Executor
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

from digitserve.registry import Manifest, ModelRegistry, NotFoundError, RegistryError, StoreUnavailableError
from digitserve.registry.feedback import FeedbackStore

MAX_FEEDBACK_READS = 200  # new samples read per refresh, so a large backlog never stalls one answer
FEEDBACK_REFRESH_S = 5.0  # at most one feedback refresh this often: it lists every sample and review (60,000: ~0.1 s)
MAX_MISSING = 10_000


@dataclass(frozen=True)
class Listing:
    """A model's versions (with their metrics and feedback accuracy) and aliases, as last read;
    `registry_error` says why it is the last good listing rather than a fresh one."""

    versions: list[dict[str, Any]]
    aliases: dict[str, int]
    registry_error: str | None
    listed_at: float | None


class Catalog:
    def __init__(self, registry: ModelRegistry, executor: Executor) -> None:
        self.registry = registry
        self.executor = executor  # its own threads: a slow listing never delays a model load
        self._manifests: dict[tuple[str, int], Manifest] = {}
        self._last: dict[str, Listing] = {}
        self._missing: set[tuple[str, int]] = set()  # versions asked for that did not exist then
        self.feedback = FeedbackQuality(FeedbackStore(registry.store))

    async def has_version(self, model: str, version: int) -> bool | None:
        """Whether the registry has this version; None when it cannot be asked now."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, self._has_version, model, version)

    def _has_version(self, model: str, version: int) -> bool | None:
        if (model, version) in self._manifests:
            return True
        if (model, version) in self._missing:
            return False
        try:
            self._manifests[(model, version)] = self.registry.manifest(model, version)
        except NotFoundError:
            if len(self._missing) >= MAX_MISSING:
                self._missing.clear()
            self._missing.add((model, version))  # versions are created, never deleted: asked for once
            return False
        except RegistryError:
            return None
        return True

    def _version_entry(self, model: str, version: int) -> dict[str, Any]:
        key = (model, version)
        if key not in self._manifests:
            try:
                self._manifests[key] = self.registry.manifest(model, version)
            except StoreUnavailableError:
                raise
            except RegistryError as exc:  # one damaged manifest: shown as such, the others still listed
                return {"version": version, "error": str(exc)}
        m = self._manifests[key]
        return {
            "version": version,
            "architecture": m.architecture,
            "metrics": m.metrics,
            "created_at": m.created_at,
            "weights_sha256": m.weights.sha256,
            "onnx_sha256": m.onnx.sha256 if m.onnx else None,  # None: published before ONNX serving
        }

    async def describe(self, model: str) -> Listing:
        return await asyncio.get_running_loop().run_in_executor(self.executor, self._describe, model)

    def _describe(self, model: str) -> Listing:
        try:
            self.feedback.refresh()
            quality = self.feedback.by_version(model)
            versions = [self._version_entry(model, v) for v in self.registry.list_versions(model)]
            for entry in versions:
                entry["feedback"] = quality.get(entry["version"], FeedbackQuality.NONE)
            listing = Listing(versions, self.registry.list_aliases(model), None, time.time())
        except RegistryError as exc:
            return replace(self._last.get(model, Listing([], {}, None, None)), registry_error=str(exc))
        self._last[model] = listing
        return listing


class Verdict(NamedTuple):
    """What one feedback sample says of the version it is about."""

    model: str
    version: int
    right: bool  # the version's answer was the label


@dataclass
class VersionFeedback:
    """One version's feedback counts: all samples, and the accepted ones."""

    samples: int = 0
    right: int = 0
    accepted: int = 0
    accepted_right: int = 0

    def add(self, right: bool, accepted: bool) -> None:
        self.samples, self.right = self.samples + 1, self.right + right
        self.accepted, self.accepted_right = self.accepted + accepted, self.accepted_right + (accepted and right)

    def to_dict(self) -> dict[str, Any]:
        return {
            "samples": self.samples,
            "right": self.right,
            "accuracy": round(self.right / self.samples, 4),
            "accepted": self.accepted,
            "accepted_accuracy": round(self.accepted_right / self.accepted, 4) if self.accepted else None,
        }


class FeedbackQuality:
    """Each version's accuracy on the feedback people sent about it, from the registry's samples
    (each read once: samples are immutable) and their review states."""

    NONE: dict[str, Any] = {"samples": 0, "right": 0, "accuracy": None, "accepted": 0, "accepted_accuracy": None}

    def __init__(self, store: FeedbackStore) -> None:
        self.store = store
        self._verdicts: dict[str, Verdict] = {}  # sample id -> its verdict
        self._states: dict[str, str] = {}
        self._lock = threading.Lock()  # the catalog has several threads
        self._refreshed_at = -FEEDBACK_REFRESH_S

    def refresh(self) -> None:
        """Read the samples not seen yet (a bounded number) and every review state, at most every
        FEEDBACK_REFRESH_S: a listing never waits on more than that."""
        with self._lock:
            if time.monotonic() - self._refreshed_at < FEEDBACK_REFRESH_S:
                return
            self._refreshed_at = time.monotonic()
            unseen = [sid for sid in self.store.ids() if sid not in self._verdicts][:MAX_FEEDBACK_READS]
            for sid in unseen:
                try:
                    sample = self.store.sample(sid)
                except StoreUnavailableError:
                    raise
                except RegistryError:
                    continue  # a damaged sample counts for nothing
                self._verdicts[sid] = Verdict(sample.model, sample.version, sample.right)
            self._states = dict(self.store.states())

    def by_version(self, model: str) -> dict[int, dict[str, Any]]:
        tallies: dict[int, VersionFeedback] = {}
        with self._lock:
            verdicts = list(self._verdicts.items())
        for sid, verdict in verdicts:
            if verdict.model == model:
                tally = tallies.setdefault(verdict.version, VersionFeedback())
                tally.add(verdict.right, self._states.get(sid) == "accepted")
        return {version: tally.to_dict() for version, tally in tallies.items()}
