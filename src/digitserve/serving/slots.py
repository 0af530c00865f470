"""The canary and shadow versions a manager loads beside each model's served version.

A rollout alias (canary, shadow) routes to its version while it is not retired, names another
version than the served one, and was moved after production's alias last was: a canary is a
candidate for the production of its day, so once production moves (a promotion) an older canary
stops until it is moved again. A version this process retired itself (a failed canary) is never
loaded again here.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from digitserve.registry import RegistryError
from digitserve.runtime import LoadError

if TYPE_CHECKING:
    from digitserve.serving.manager import ModelManager, ModelState

log = logging.getLogger(__name__)


class RolloutVersions:
    def __init__(self, manager: ModelManager) -> None:
        self.manager = manager
        settings = manager.settings
        followed = (("canary", settings.canary_alias), ("shadow", settings.shadow_alias))
        self.aliases = {slot: alias for slot, alias in followed if alias and alias != settings.alias}

    async def refresh(self, model: str) -> None:
        """Follow the rollout aliases (canary, shadow) of one model."""
        state = self.manager.state(model)
        for slot, alias in self.aliases.items():
            async with state.lock:
                await self._refresh_slot(state, slot, alias)

    async def _refresh_slot(self, state: ModelState, slot: str, alias: str) -> None:
        """Load the version a rollout alias names beside the served one, or drop it: when the alias is
        gone, names the served version, or names a version this process retired."""
        try:
            version = await asyncio.get_running_loop().run_in_executor(
                self.manager.loader, self._active, state.name, alias
            )
        except RegistryError as exc:  # keep what is loaded; say why it could not be checked
            state.rollout_errors[slot] = {"alias": alias, "step": "resolve", "message": str(exc), "at": time.time()}
            return
        current = state.rollout.get(slot)
        keep = version is not None and state.served is not None and version != state.served.version
        if not keep or version in state.refused:
            self.drop(state, slot)
            state.rollout_errors.pop(slot, None)
            return
        if current is not None and current.version == version:
            return
        try:
            loaded = await self.manager.load_version(state.name, int(version or 0))
        except LoadError as exc:
            state.rollout_errors[slot] = {"alias": alias, "version": version, "step": exc.step, "message": str(exc)}
            return
        state.rollout[slot] = loaded
        state.rollout_errors.pop(slot, None)
        self.manager.metrics.set_served(state.name, alias, loaded.version)
        if current is not None:
            self.manager.retire_version(current)
        log.info("%s: %s %s is v%d", state.name, slot, alias, loaded.version)

    def _active(self, model: str, alias: str) -> int | None:
        """The version a rollout alias routes to: none once it is retired, or when production moved
        after it (a canary is a candidate for the production of its day, not for a later one)."""
        target = self.manager.registry.get_alias(model, alias)
        if target is None or target.retired:
            return None
        production = self.manager.registry.get_alias(model, self.manager.settings.alias)
        return None if production is not None and production.updated_at > target.updated_at else target.version

    def drop(self, state: ModelState, slot: str, refuse: str | None = None) -> None:
        """Stop routing to a rollout version now (`refuse`: and never load it again in this process)."""
        loaded = state.rollout.pop(slot, None)
        if loaded is None:
            return
        if refuse:
            state.refused[loaded.version] = refuse
        self.manager.metrics.clear_served(state.name, self.aliases[slot])
        self.manager.retire_version(loaded)
