"""The one owner of every loaded version: served, canary, shadow and pinned alike.

The served version of a model is one reference, replaced in a single assignment on the event
loop once the new version is loaded, verified, warmed up and golden-checked. Requests pick the
reference and queue on its batcher without an await in between, so every request is answered
by exactly the version it picked; the old batcher then drains and stops (a hot-swap).

Beside it a model may hold a rollout version per role (`canary`, `shadow`): which version each
role holds is decided by the rollouts (rollouts/following.py), which ask through `hold` and
`release`; a version a rollout refused here (a failed canary) is not loaded again by this
process until its alias is moved to it afresh. Pinned versions (`?version=`, `?alias=`) are
loaded on first use and kept, the least recently used evicted past `RESIDENT_VERSIONS`.

The served versions' forward passes take the process's inference slots. Beside them, each
model's rollout versions (canary, shadow) have one slot of their own, and the pinned versions one
between them, each session on one intra-op thread: a canary that crawls or fails delays only its
own answers -- never production's, another model's canary or a pinned client's -- so the watch
compares the two sides as they are, and a slow canary's p99 shows. They still share the cores.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import Executor

from digitserve.config import Settings
from digitserve.registry import ModelRegistry, NotFoundError, RegistryError, StoreUnavailableError
from digitserve.runtime import LoadError, RuntimeOptions, load_servable
from digitserve.serving.errors import (
    ModelNotReadyError,
    UnknownModelError,
    UnknownVersionError,
)
from digitserve.serving.inference.batching import BatchStats, DynamicBatcher, InferenceSlots
from digitserve.serving.inference.pinned import PinnedVersions
from digitserve.serving.inference.state import LoadedVersion, LoadFailure, ModelState, Refresh, Refusal, Role
from digitserve.serving.observability.metrics import ServiceMetrics
from digitserve.serving.workers import runtime_threads

log = logging.getLogger(__name__)


class ModelVersions:
    def __init__(
        self,
        settings: Settings,
        registry: ModelRegistry,
        metrics: ServiceMetrics,
        slots: InferenceSlots,
        io: Executor,
        beside: Executor,
    ) -> None:
        self.alias = settings.alias
        self.batching = settings.batching
        self.registry = registry
        self.metrics = metrics
        self.slots = slots  # the served versions'
        self.io = io  # the registry threads: every blocking read of the registry runs there
        self.runtime_options = RuntimeOptions(
            tuple(settings.runtime.onnx_providers), runtime_threads(settings.runtime.runtime_threads)
        )
        self.states = {name: ModelState(name) for name in settings.models}
        # `beside` has a thread for each of these (len(models) + 1): no slot ever waits for a thread
        self.rollout_slots = {name: InferenceSlots(1, beside) for name in settings.models}
        self.pinned_slots = InferenceSlots(1, beside)
        self.beside_options = RuntimeOptions(self.runtime_options.providers, 1)
        roles: dict[Role, str | None] = {"canary": settings.canary.alias, "shadow": settings.shadow.alias}
        self.rollout_aliases = {role: a for role, a in roles.items() if a and a != settings.alias}
        self.pinned = PinnedVersions(self.load_pinned, self.retire, settings.runtime.resident_versions)
        self._retiring: set[asyncio.Task[None]] = set()

    # --- on the request path --------------------------------------------------------------------

    def state(self, model: str) -> ModelState:
        state = self.states.get(model)
        if state is None:
            known = ", ".join(self.states) or "none"
            raise UnknownModelError(f"unknown model {model[:100]!r}; served models: {known}")
        return state

    def served(self, state: ModelState) -> LoadedVersion:
        if state.served is None:
            raise ModelNotReadyError(f"model {state.name!r} has no verified version loaded yet; retry shortly")
        return state.served

    def check_room(self, model: str, n: int) -> None:
        """QueueFullError unless the version the alias serves can queue `n` more images."""
        served = self.state(model).served
        if served is not None:
            served.batcher.check_room(n)

    async def pinned_version(self, state: ModelState, version: int | None, alias: str | None) -> LoadedVersion:
        """A pinned version (or another alias's), loaded on first use; the served one if it is that."""
        if alias is not None and alias != self.alias:
            version = await self._resolve(state.name, alias)
        if version is None or (state.served is not None and state.served.version == version):
            return self.served(state)
        return await self.pinned.get(state.name, version)

    async def _resolve(self, model: str, alias: str) -> int:
        try:
            return await asyncio.get_running_loop().run_in_executor(self.io, self.registry.resolve_alias, model, alias)
        except NotFoundError:
            raise UnknownVersionError(f"model {model!r} has no alias {alias!r}") from None
        except RegistryError as exc:
            raise ModelNotReadyError(f"cannot resolve alias {alias!r} now: {exc}") from None

    # --- loading, swapping, retiring --------------------------------------------------------------

    async def load(
        self, model: str, version: int, slots: InferenceSlots | None = None, options: RuntimeOptions | None = None
    ) -> LoadedVersion:
        """Load, verify and warm up a version, with a started batcher on `slots` (the served ones')."""
        loop = asyncio.get_running_loop()
        options, warmup = options or self.runtime_options, self.batching.max_batch_size
        servable = await loop.run_in_executor(self.io, load_servable, self.registry, model, version, options, warmup)
        batcher = DynamicBatcher(
            servable.probabilities,
            slots or self.slots,
            max_batch_size=self.batching.max_batch_size,
            max_delay_ms=self.batching.max_batch_delay_ms,
            max_queue=self.batching.max_queue,
            stats=BatchStats(
                on_batch=self.metrics.batch_size.labels(model).observe,
                on_queue_depth=self.metrics.queue_depth.labels(model, str(version)).set,
            ),
        )
        batcher.start()
        return LoadedVersion(servable, batcher)

    async def load_rollout(self, model: str, version: int) -> LoadedVersion:
        """A canary or shadow: on its model's rollout slot, beside production's."""
        return await self.load(model, version, self.rollout_slots[model], self.beside_options)

    async def load_pinned(self, model: str, version: int) -> LoadedVersion:
        """A pinned version (`?version=`, `?alias=`): on the pinned versions' slot."""
        return await self.load(model, version, self.pinned_slots, self.beside_options)

    def retire(self, loaded: LoadedVersion) -> None:
        """Let the old version answer what it has queued, then drop it."""
        task = asyncio.get_running_loop().create_task(loaded.batcher.close())
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def refresh(self, model: str, force: bool = False) -> Refresh:
        """Re-read the alias; load, verify and swap to its version if it moved."""
        state = self.state(model)
        async with state.lock:
            state.last_poll_at = time.time()
            try:
                target = await asyncio.get_running_loop().run_in_executor(
                    self.io, self.registry.resolve_alias, model, self.alias
                )
            except RegistryError as exc:
                message = f"cannot resolve alias {self.alias!r}: {exc}"
                self._record_failure(state, LoadFailure("resolve", message))
                return Refresh(model, False, error=message, registry_unreachable=isinstance(exc, StoreUnavailableError))
            if state.served is not None and state.served.version == target:
                self._clear_error(state)  # the registry answers and the alias names what serves: all well
                return Refresh(model, False, target)
            if target in state.failed and not force:
                return Refresh(model, False, target, state.failed[target])
            try:
                loaded = await self.load(model, target)
            except LoadError as exc:
                self._record_failure(state, LoadFailure(exc.step, str(exc), target))
                return Refresh(model, False, target, str(exc))
            self._swap(state, loaded)
            return Refresh(model, True, target)

    def _swap(self, state: ModelState, loaded: LoadedVersion) -> None:
        old, state.served = state.served, loaded  # the atomic switch
        self._clear_error(state)
        state.failed.pop(loaded.version, None)
        self.metrics.set_served(state.name, self.alias, loaded.version)
        if old is not None:
            self.metrics.swaps.labels(state.name).inc()
            self.retire(old)
        log.info("%s: now serving v%d (was %s)", state.name, loaded.version, old.version if old else "none")

    def _clear_error(self, state: ModelState) -> None:
        state.last_error = None
        self.metrics.reload_error.labels(state.name).set(0)

    def _record_failure(self, state: ModelState, failure: LoadFailure) -> None:
        if failure.version is not None:
            state.failed[failure.version] = failure.message
        state.last_error = failure
        self.metrics.reload_failures.labels(state.name, failure.step).inc()
        self.metrics.reload_error.labels(state.name).set(1)
        log.warning("%s: version %s refused at %s: %s", state.name, failure.version, failure.step, failure.message)

    @property
    def registry_unavailable(self) -> str | None:
        """The registry's last "unreachable" error while a remote one is down and its cache serves."""
        return getattr(self.registry, "unavailable", None)

    async def refresh_all(self, force: bool = False) -> list[Refresh]:
        results = [await self.refresh(model, force) for model in self.states]
        down = any(r.registry_unreachable for r in results) or self.registry_unavailable
        self.metrics.registry_up.set(0 if down else 1)
        return results

    # --- rollout versions beside the served one --------------------------------------------------

    async def hold(self, state: ModelState, role: Role, version: int | None, moved_at: str | None = None) -> bool:
        """Hold `version` in `role` beside the served version (loading it if need be); None, the
        served version, or one refused here since its alias moved at `moved_at`, releases the role.
        True when a refused version is taken again because its alias moved to it afresh."""
        alias = self.rollout_aliases[role]
        async with state.lock:
            current = state.rollout.get(role)
            refusal = state.refused.get(version) if version is not None else None
            again = refusal is not None and moved_at is not None and moved_at != refusal.moved_at
            if again and version is not None:
                del state.refused[version]
                log.info("%s: %s %s moved to v%d again: no longer refused here", state.name, role, alias, version)
            elif refusal is not None:
                version = None
            if version is None or state.served is None or version == state.served.version:
                self.release(state, role)
                state.rollout_errors.pop(role, None)
                return again
            state.rollout_moved_at[role] = moved_at or ""
            if current is not None and current.version == version:
                return again
            try:
                loaded = await self.load_rollout(state.name, version)
            except LoadError as exc:
                state.rollout_errors[role] = LoadFailure(exc.step, str(exc), version, alias)
                return again
            state.rollout[role] = loaded
            state.rollout_errors.pop(role, None)
            self.metrics.set_served(state.name, alias, loaded.version)
            if current is not None:
                self.retire(current)
            log.info("%s: %s %s is v%d", state.name, role, alias, loaded.version)
            return again

    def release(self, state: ModelState, role: Role, refuse: str | None = None) -> None:
        """Stop routing to the role's version now (`refuse`: and never load it again in this process)."""
        loaded = state.rollout.pop(role, None)
        if loaded is None:
            return
        if refuse:
            state.refused[loaded.version] = Refusal(refuse, state.rollout_moved_at.get(role))
        self.metrics.clear_served(state.name, self.rollout_aliases[role])
        self.retire(loaded)

    def rollout(self, state: ModelState, role: Role) -> LoadedVersion | None:
        """The version a role holds beside the served one, if any."""
        return state.rollout.get(role)

    def backlogged(self, images: int) -> bool:
        """Whether the served or canary version of any model has `images` or more queued."""
        for state in self.states.values():
            for loaded in (state.served, state.rollout.get("canary")):
                if loaded is not None and loaded.batcher.queued_images >= images:
                    return True
        return False

    def rollout_unresolved(self, state: ModelState, role: Role, message: str) -> None:
        """The role's alias could not be read: what is loaded stays, and why is shown."""
        state.rollout_errors[role] = LoadFailure("resolve", message, alias=self.rollout_aliases[role])

    # --- the whole picture -----------------------------------------------------------------------

    def ready(self) -> bool:
        return all(s.served is not None for s in self.states.values())

    def is_loaded(self, model: str, version: int) -> bool:
        served = self.state(model).served
        return (served is not None and served.version == version) or self.pinned.has(model, version)

    def resident(self, model: str) -> list[int]:
        state = self.state(model)
        loaded = [state.served, *state.rollout.values()]
        return sorted(set(self.pinned.versions(model)) | {x.version for x in loaded if x is not None})

    async def close(self) -> None:
        self.pinned.cancel_pending()  # a pinned version still loading never starts
        for state in self.states.values():  # a refresh or a rollout load in flight finishes first
            await state.lock.acquire()
        rollouts = [loaded for s in self.states.values() for loaded in s.rollout.values()]
        for loaded in [s.served for s in self.states.values() if s.served] + self.pinned.loaded() + rollouts:
            self.retire(loaded)
        if self._retiring:
            await asyncio.gather(*self._retiring, return_exceptions=True)
