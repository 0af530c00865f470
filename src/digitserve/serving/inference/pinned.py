"""Versions a request pins (`?version=`, `?alias=` of another alias, `/v2/.../versions/N/`),
loaded on first use and kept beside the served one, the least recently used retired past
`RESIDENT_VERSIONS`. One load at a time per version, however many requests ask at once. A
version that failed to load is answered from memory for a while (versions are immutable: it
would fail the same way), so a client repeating the request never makes the server fetch,
verify and warm it up again and again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable

from digitserve.runtime import LoadError
from digitserve.serving.errors import ModelNotReadyError, ServiceError, UnknownVersionError, VersionNotServableError
from digitserve.serving.inference.state import LoadedVersion

log = logging.getLogger(__name__)
UNSERVABLE_KEPT_S = 300.0  # a pinned version that failed its checks is answered from memory this long
MISSING_KEPT_S = 5.0  # a version that does not exist (yet): published versions appear within this
MAX_UNSERVABLE = 1024
Key = tuple[str, int]  # (model, version)


class PinnedVersions:
    def __init__(
        self,
        load: Callable[[str, int], Awaitable[LoadedVersion]],
        retire: Callable[[LoadedVersion], None],
        resident_limit: int,
    ) -> None:
        self.load = load
        self.retire = retire
        self.resident_limit = resident_limit
        self._loaded: OrderedDict[Key, LoadedVersion] = OrderedDict()
        self._pending: dict[Key, asyncio.Future[LoadedVersion]] = {}
        self._unservable: dict[Key, tuple[ServiceError, float]] = {}  # -> (the answer, until when)

    async def get(self, model: str, version: int) -> LoadedVersion:
        key = (model, version)
        if key in self._loaded:
            self._loaded.move_to_end(key)
            return self._loaded[key]
        if key not in self._pending:
            self._pending[key] = asyncio.ensure_future(self._load_pinned(model, version))
        return await asyncio.shield(self._pending[key])

    def has(self, model: str, version: int) -> bool:
        return (model, version) in self._loaded

    def versions(self, model: str) -> list[int]:
        return [v for m, v in self._loaded if m == model]

    def loaded(self) -> list[LoadedVersion]:
        return list(self._loaded.values())

    def cancel_pending(self) -> None:
        for pending in list(self._pending.values()):
            pending.cancel()

    async def _load_pinned(self, model: str, version: int) -> LoadedVersion:
        key = (model, version)
        known = self._unservable.get(key)
        if known is not None and time.monotonic() < known[1]:
            raise type(known[0])(known[0].message)  # failed lately: not fetched, verified and warmed up again
        try:
            loaded = await self.load(model, version)
        except LoadError as exc:
            raise self._remember_failure(key, exc) from None
        finally:
            self._pending.pop(key, None)
        self._unservable.pop(key, None)
        self._loaded[key] = loaded
        keep = max(self.resident_limit - 1, 1)
        while sum(1 for m, _ in self._loaded if m == model) > keep:
            evict = next(k for k in self._loaded if k[0] == model)
            self.retire(self._loaded.pop(evict))
        return loaded

    def _remember_failure(self, key: tuple[str, int], exc: LoadError) -> ServiceError:
        """The answer for a pinned version that failed to load, kept a while: a version is immutable,
        so one that fails its checks fails them again (and a missing one stays missing a moment)."""
        model, version = key
        error: ServiceError
        if exc.transient:
            return ModelNotReadyError(f"{model} v{version} cannot be read from the registry now: {exc}")
        if exc.missing:
            error, keep_s = UnknownVersionError(f"model {model!r} has no version {version}"), MISSING_KEPT_S
        else:
            error = VersionNotServableError(f"{model} v{version} cannot be served ({exc}); pin another version")
            keep_s = UNSERVABLE_KEPT_S
        self._unservable[key] = (error, time.monotonic() + keep_s)
        log.warning("%s v%d cannot be served when pinned (%s); answered from memory for %.0f s", *key, exc, keep_s)
        while len(self._unservable) > MAX_UNSERVABLE:
            self._unservable.pop(next(iter(self._unservable)))
        return error
