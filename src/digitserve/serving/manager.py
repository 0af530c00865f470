"""Which version answers for each model, and moving that safely (hot-swap).

The served version of a model is one reference, replaced in a single assignment on the event
loop once the new version is loaded, verified, warmed up and golden-checked. Requests pick the
reference and queue on its batcher without an await in between, so every request is answered
by exactly the version it picked; the old batcher then drains and stops.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

from digitserve.config import Settings
from digitserve.registry import ModelRegistry, NotFoundError, RegistryError, StoreUnavailableError
from digitserve.runtime import LoadError, RuntimeOptions, Servable, load_servable
from digitserve.serving.batching import BatchStats, DynamicBatcher, InferenceSlots
from digitserve.serving.errors import ModelNotReadyError, UnknownModelError, UnknownVersionError
from digitserve.serving.metrics import ServiceMetrics
from digitserve.serving.slots import RolloutVersions
from digitserve.serving.workers import runtime_threads

log = logging.getLogger(__name__)


@dataclass
class LoadedVersion:
    """A verified version with the batcher that answers for it."""

    servable: Servable
    batcher: DynamicBatcher

    @property
    def model(self) -> str:
        return self.servable.model

    @property
    def version(self) -> int:
        return self.servable.version


@dataclass
class ModelState:
    name: str
    served: LoadedVersion | None = None
    last_error: dict[str, Any] | None = None
    failed: dict[int, str] = field(default_factory=dict)  # version -> why; not retried by polling
    last_poll_at: float | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    rollout: dict[str, LoadedVersion] = field(default_factory=dict)  # "canary" / "shadow" -> its version
    rollout_errors: dict[str, dict[str, Any]] = field(default_factory=dict)
    refused: dict[int, str] = field(default_factory=dict)  # rollout versions this process retired, and why


class ModelManager:
    def __init__(
        self,
        settings: Settings,
        registry: ModelRegistry,
        metrics: ServiceMetrics,
        slots: InferenceSlots,
        loader: Executor,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.metrics = metrics
        self.slots = slots
        self.loader = loader
        self.runtime_options = RuntimeOptions(tuple(settings.onnx_providers), runtime_threads(settings.runtime_threads))
        self.states = {name: ModelState(name) for name in settings.models}
        self.rollouts = RolloutVersions(self)
        self.pinned: OrderedDict[tuple[str, int], LoadedVersion] = OrderedDict()
        self._pending: dict[tuple[str, int], asyncio.Future[LoadedVersion]] = {}
        self._retiring: set[asyncio.Task[None]] = set()

    # --- lookups on the request path ----------------------------------------------------------

    def state(self, model: str) -> ModelState:
        state = self.states.get(model)
        if state is None:
            known = ", ".join(self.states) or "none"
            raise UnknownModelError(f"unknown model {model[:100]!r}; served models: {known}")
        return state

    def current(self, model: str) -> LoadedVersion:
        served = self.state(model).served
        if served is None:
            raise ModelNotReadyError(f"model {model!r} has no verified version loaded yet; retry shortly")
        return served

    async def get(self, model: str, version: int | None = None, alias: str | None = None) -> LoadedVersion:
        """The version to answer with: the alias's served one, or a pinned version/alias."""
        state = self.state(model)
        if alias is not None and alias != self.settings.alias:
            version = await self._resolve(model, alias)
        if version is None or (state.served is not None and state.served.version == version):
            return self.current(model)
        return await self._pinned(model, version)

    async def _resolve(self, model: str, alias: str) -> int:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self.loader, self.registry.resolve_alias, model, alias)
        except NotFoundError:
            raise UnknownVersionError(f"model {model!r} has no alias {alias!r}") from None
        except RegistryError as exc:
            raise ModelNotReadyError(f"cannot resolve alias {alias!r} now: {exc}") from None

    async def _pinned(self, model: str, version: int) -> LoadedVersion:
        key = (model, version)
        if key in self.pinned:
            self.pinned.move_to_end(key)
            return self.pinned[key]
        if key not in self._pending:
            self._pending[key] = asyncio.ensure_future(self._load_pinned(model, version))
        return await asyncio.shield(self._pending[key])

    async def _load_pinned(self, model: str, version: int) -> LoadedVersion:
        try:
            loaded = await self.load_version(model, version)
        except LoadError as exc:
            if exc.missing:
                raise UnknownVersionError(f"model {model!r} has no version {version}") from None
            raise ModelNotReadyError(f"{model} v{version} cannot be served: {exc}") from None
        finally:
            self._pending.pop((model, version), None)
        self.pinned[(model, version)] = loaded
        keep = max(self.settings.resident_versions - 1, 1)
        while sum(1 for m, _ in self.pinned if m == model) > keep:
            evict = next(k for k in self.pinned if k[0] == model)
            self.retire_version(self.pinned.pop(evict))
        return loaded

    # --- loading, swapping, retiring ----------------------------------------------------------

    async def load_version(self, model: str, version: int) -> LoadedVersion:
        loop = asyncio.get_running_loop()
        options, warmup = self.runtime_options, self.settings.max_batch_size
        servable = await loop.run_in_executor(
            self.loader, load_servable, self.registry, model, version, options, warmup
        )
        batcher = DynamicBatcher(
            servable.probabilities,
            self.slots,
            max_batch_size=self.settings.max_batch_size,
            max_delay_ms=self.settings.max_batch_delay_ms,
            max_queue=self.settings.max_queue,
            stats=BatchStats(
                on_batch=self.metrics.batch_size.labels(model).observe,
                on_queue_depth=self.metrics.queue_depth.labels(model, str(version)).set,
            ),
        )
        batcher.start()
        return LoadedVersion(servable, batcher)

    def retire_version(self, loaded: LoadedVersion) -> None:
        """Let the old version answer what it has queued, then drop it."""
        task = asyncio.get_running_loop().create_task(loaded.batcher.close())
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def refresh(self, model: str, force: bool = False) -> dict[str, Any]:
        """Re-read the alias; load, verify and swap to its version if it moved."""
        state = self.state(model)
        async with state.lock:
            state.last_poll_at = time.time()
            try:
                target = await asyncio.get_running_loop().run_in_executor(
                    self.loader, self.registry.resolve_alias, model, self.settings.alias
                )
            except RegistryError as exc:
                message = f"cannot resolve alias {self.settings.alias!r}: {exc}"
                self._record_failure(state, None, "resolve", message)
                unreachable = isinstance(exc, StoreUnavailableError)
                return {"model": model, "changed": False, "error": message, "registry_unreachable": unreachable}
            if state.served is not None and state.served.version == target:
                self._clear_error(state)  # the registry answers and the alias names what serves: all well
                return {"model": model, "version": target, "changed": False}
            if target in state.failed and not force:
                return {"model": model, "version": target, "changed": False, "error": state.failed[target]}
            try:
                loaded = await self.load_version(model, target)
            except LoadError as exc:
                self._record_failure(state, target, exc.step, str(exc))
                return {"model": model, "version": target, "changed": False, "error": str(exc)}
            self._swap(state, loaded)
            return {"model": model, "version": target, "changed": True}

    def _swap(self, state: ModelState, loaded: LoadedVersion) -> None:
        old, state.served = state.served, loaded  # the atomic switch
        self._clear_error(state)
        state.failed.pop(loaded.version, None)
        self.metrics.set_served(state.name, self.settings.alias, loaded.version)
        if old is not None:
            self.metrics.swaps.labels(state.name).inc()
            self.retire_version(old)
        log.info("%s: now serving v%d (was %s)", state.name, loaded.version, old.version if old else "none")

    def _clear_error(self, state: ModelState) -> None:
        state.last_error = None
        self.metrics.reload_error.labels(state.name).set(0)

    def _record_failure(self, state: ModelState, version: int | None, step: str, message: str) -> None:
        if version is not None:
            state.failed[version] = message
        state.last_error = {"version": version, "step": step, "message": message, "at": time.time()}
        self.metrics.reload_failures.labels(state.name, step).inc()
        self.metrics.reload_error.labels(state.name).set(1)
        log.warning("%s: version %s refused at %s: %s", state.name, version, step, message)

    @property
    def registry_unavailable(self) -> str | None:
        """The registry's last "unreachable" error while a remote one is down and its cache serves."""
        return getattr(self.registry, "unavailable", None)

    async def refresh_all(self, force: bool = False) -> list[dict[str, Any]]:
        results = []
        for model in self.states:
            results.append(await self.refresh(model, force))
            await self.rollouts.refresh(model)
        down = any(r.get("registry_unreachable") for r in results) or self.registry_unavailable
        self.metrics.registry_up.set(0 if down else 1)
        return results

    async def poll_forever(self) -> None:
        while True:
            try:
                await self.refresh_all()
            except Exception:  # polling must survive anything the registry throws at it
                log.exception("alias poll failed")
            await asyncio.sleep(self.settings.poll_seconds)

    def ready(self) -> bool:
        return all(s.served is not None for s in self.states.values())

    def resident_versions(self, model: str) -> list[int]:
        state = self.state(model)
        loaded = [state.served, *state.rollout.values()]
        return sorted({v for (m, v) in self.pinned if m == model} | {x.version for x in loaded if x is not None})

    async def close(self) -> None:
        rollouts = [loaded for s in self.states.values() for loaded in s.rollout.values()]
        for loaded in [s.served for s in self.states.values() if s.served] + list(self.pinned.values()) + rollouts:
            self.retire_version(loaded)
        if self._retiring:
            await asyncio.gather(*self._retiring, return_exceptions=True)
