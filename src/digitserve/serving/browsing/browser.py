"""What the models pages show, read from the registry: versions as cards, alias histories, report
files, the test samples behind the confusion matrix.

Everything here blocks (registry reads) and runs in a thread pool of its own, so browsing never
delays a listing, a load or a feedback check. Manifests, events, report files and test samples are
immutable once written, so they are cached, each in an LRU with a bound: report files 32 MiB in
all (one over 8 MiB is never kept), 2,048 manifests, 20,000 events, 16 sample sets. Listings
are paginated, newest first, by `offset` or by a `before` cursor (stable while new items arrive).
A damaged file is shown as such in its place, never a 500 and never the end of a listing.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from typing import Any, TypeVar

from digitserve.registry import Manifest, ModelRegistry, NotFoundError, RegistryError, StoreUnavailableError
from digitserve.registry.records import check_model_name
from digitserve.registry.samples import NAME as SAMPLES
from digitserve.registry.samples import TestSamples
from digitserve.serving.errors import ModelNotReadyError, UnknownVersionError

REPORT_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}\.(png|json)$")
CACHE_BYTES = 32 * 1024 * 1024
MAX_EVENTS_CACHED = 20_000
MAX_MANIFESTS_CACHED = 2_048  # ~10 KB each (the golden digits and their logits)
MAX_SAMPLES_CACHED = 16
INT64 = 2**63
T = TypeVar("T")


def json_safe(value: Any, depth: int = 0) -> Any:
    """A registry document made safe to answer with: integers beyond 64 bits become text, and
    nesting is cut off (a hand-edited file must not break the page that shows it)."""
    if depth > 32:
        return "…"
    if isinstance(value, dict):
        return {str(k): json_safe(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        return [json_safe(v, depth + 1) for v in value]
    if isinstance(value, int) and not isinstance(value, bool) and not -INT64 <= value < INT64:
        return str(value)
    return value


def page(items: Sequence[T], offset: int, limit: int, each: Callable[[T], Any] | None = None) -> dict[str, Any]:
    """One page of a listing (`each` turns the page's items into what is shown)."""
    shown = list(items[offset : offset + limit])
    return {"total": len(items), "offset": offset, "limit": limit, "items": [each(i) for i in shown] if each else shown}


def _section(extra: dict[str, Any], key: str) -> dict[str, Any]:
    value = extra.get(key)
    return value if isinstance(value, dict) else {}


def version_card(manifest: Manifest, aliases: list[str]) -> dict[str, Any]:
    """One version in a few numbers: what the models page lists."""
    metrics, extra = manifest.metrics, manifest.extra
    training, calibration, rule = (_section(extra, key) for key in ("training", "calibration", "not_a_digit"))
    return json_safe(
        {
            "version": manifest.version,
            "architecture": manifest.architecture,
            "aliases": aliases,
            "created_at": manifest.created_at,
            "created_by": extra.get("created_by"),
            "git_commit": extra.get("git_commit"),
            "accuracy": metrics.get("accuracy"),
            "errors": metrics.get("errors"),
            "test_ece": metrics.get("test_ece"),
            "mnist_test_not_a_digit": metrics.get("mnist_test_not_a_digit"),
            "held_out_negatives_not_a_digit": metrics.get("held_out_negatives_not_a_digit"),
            "params": metrics.get("params"),
            "train_seconds": training.get("train_seconds"),
            "hardware": training.get("hardware"),
            "epochs": training.get("epochs"),
            "smoke": training.get("smoke"),
            "temperature": calibration.get("temperature"),
            "not_a_digit_threshold": rule.get("threshold"),
            "feedback": extra.get("feedback"),
            "onnx": manifest.onnx is not None,
        }
    )


class RegistryBrowser:
    def __init__(self, registry: ModelRegistry, executor: Executor) -> None:
        self.registry = registry
        self.executor = executor  # the browsing threads: the models pages never delay a load or a listing
        self._manifests: OrderedDict[tuple[str, int], Manifest] = OrderedDict()
        self._events: OrderedDict[str, dict[str, Any] | None] = OrderedDict()  # key -> event (None: unreadable)
        self._files: OrderedDict[str, bytes] = OrderedDict()
        self._file_bytes = 0  # the sum of the cached files' sizes, at most CACHE_BYTES
        self._samples: OrderedDict[tuple[str, int], TestSamples] = OrderedDict()
        self._lock = threading.Lock()

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Blocking work (registry reads, image encoding) in the browsing threads; registry failures
        become 404 / 503."""
        try:
            return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)
        except NotFoundError as exc:
            raise UnknownVersionError(str(exc)) from None
        except RegistryError as exc:
            raise ModelNotReadyError(f"cannot read {self.registry.uri} now: {exc}") from None

    def manifest(self, model: str, version: int) -> Manifest:
        key = (check_model_name(model), int(version))
        with self._lock:
            found = self._manifests.get(key)
            if found is not None:
                self._manifests.move_to_end(key)
                return found
        found = self.registry.manifest(model, version)
        with self._lock:
            self._manifests[key] = found
            while len(self._manifests) > MAX_MANIFESTS_CACHED:
                self._manifests.popitem(last=False)
        return found

    def _exists(self, model: str) -> None:
        if check_model_name(model) not in self.registry.list_models():
            raise NotFoundError(f"no model {model!r} in {self.registry.uri}")

    def models(self) -> list[dict[str, Any]]:
        out = []
        for model in self.registry.list_models():
            versions = self.registry.list_versions(model)
            aliases = self.registry.list_aliases(model, include_retired=False)
            out.append(
                {
                    "name": model,
                    "versions": len(versions),
                    "latest": versions[-1] if versions else None,
                    "aliases": aliases,
                }
            )
        return out

    def versions(self, model: str, offset: int, limit: int, before: int | None = None) -> dict[str, Any]:
        """The model's versions, newest first, a page at a time (`before`: only versions below it)."""
        numbers = sorted(self.registry.list_versions(model), reverse=True)
        if not numbers:
            self._exists(model)  # a model folder with nothing published yet is an empty list, not a 404
        if before is not None:
            numbers = [v for v in numbers if v < before]
        aliases = self.registry.aliases_by_version(model, include_retired=False)
        return page(numbers, offset, limit, lambda v: self._card(model, v, aliases.get(v, [])))

    def _card(self, model: str, version: int, aliases: list[str]) -> dict[str, Any]:
        try:
            return version_card(self.manifest(model, version), aliases)
        except StoreUnavailableError:
            raise
        except RegistryError as exc:  # one damaged manifest: shown as such, the others still listed
            return {"version": version, "aliases": aliases, "error": str(exc)}

    def version(self, model: str, version: int) -> dict[str, Any]:
        """One version: its card, the report's files, its metrics.json, whether it has test samples."""
        aliases = self.registry.aliases_by_version(model, include_retired=False).get(version, [])
        card = version_card(self.manifest(model, version), aliases)
        files = self.registry.list_report(model, version)
        metrics: Any = None
        if "metrics.json" in files:
            try:
                metrics = json.loads(self.report_file(model, version, "metrics.json"))
            except (ValueError, RecursionError):
                card["metrics_error"] = "this version's metrics.json is damaged"
        if isinstance(metrics, dict):
            metrics.pop("history", None)  # curves.png draws it; the page needs the numbers
        else:
            metrics = None
        return {
            **card,
            "report": [f for f in files if REPORT_NAME.match(f)],
            "metrics": json_safe(metrics),
            "test_samples": SAMPLES in files,
        }

    def report_file(self, model: str, version: int, name: str) -> bytes:
        if not REPORT_NAME.match(name):
            raise NotFoundError(f"{name[:80]!r} is not a report file name")
        key = f"{check_model_name(model)}/{int(version)}/{name}"
        with self._lock:
            if key in self._files:
                self._files.move_to_end(key)
                return self._files[key]
        data = self.registry.read_report(model, version, name)
        if len(data) > CACHE_BYTES // 4:  # a file this large would push out everything else: not kept
            return data
        with self._lock:
            if key not in self._files:  # another thread may have read it meanwhile
                self._files[key] = data
                self._file_bytes += len(data)
            while self._file_bytes > CACHE_BYTES:
                self._file_bytes -= len(self._files.popitem(last=False)[1])
        return data

    def samples(self, model: str, version: int) -> TestSamples | None:
        """The version's test samples; None for a version whose report has none (not cached: they
        may be added later by training/report_samples.py)."""
        key = (check_model_name(model), int(version))
        with self._lock:
            if key in self._samples:
                self._samples.move_to_end(key)
                return self._samples[key]
        self.manifest(model, version)  # a version that does not exist is a 404, not "no samples"
        try:
            data = self.registry.read_report(model, version, SAMPLES)
        except NotFoundError:
            return None
        found = TestSamples.parse(data, f"{model} v{version}: {SAMPLES}")
        with self._lock:
            self._samples[key] = found
            while len(self._samples) > MAX_SAMPLES_CACHED:
                self._samples.popitem(last=False)
        return found

    def events(
        self, model: str, alias: str | None, offset: int, limit: int, before: str | None = None
    ) -> dict[str, Any]:
        """The alias moves, newest first; each has its `key`, the cursor for `before`."""
        prefix = f"{check_model_name(model)}/events/"
        keys = sorted(self.registry.store.list(prefix), reverse=True)
        if not keys:
            self._exists(model)
        if before is not None:
            keys = [k for k in keys if k.removeprefix(prefix) < before]
        found = []
        for key in keys:
            event = self._event(key)
            if event is not None and (alias is None or event.get("alias") == alias):
                found.append({**event, "key": key.removeprefix(prefix)})
        return page(found, offset, limit)

    def _event(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            if key in self._events:
                self._events.move_to_end(key)
                return self._events[key]
        try:
            doc = json.loads(self.registry.store.read(key)[0])
        except (ValueError, RecursionError, NotFoundError):
            doc = None
        event = json_safe(doc) if isinstance(doc, dict) else None
        with self._lock:
            self._events[key] = event
            while len(self._events) > MAX_EVENTS_CACHED:
                self._events.popitem(last=False)
        return event
