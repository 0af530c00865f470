"""Which version each rollout alias (canary, shadow) routes to, followed every poll.

`active_version` is the rule, a pure function: a rollout alias routes to its version while it
is not retired and was moved after production's alias last was -- a canary is a candidate for
the production of its day, so once production moves (a promotion) an older canary stops until
it is moved again. The versions' owner (inference/versions.py) then holds that version beside
the served one, or releases the role when the rule gives none, when it names the served version,
or when this process refused that version itself (a failed canary).
"""

from __future__ import annotations

import asyncio
from concurrent.futures import Executor
from typing import NamedTuple

from digitserve.registry import AliasState, ModelRegistry, RegistryError
from digitserve.serving.inference.versions import ModelVersions
from digitserve.serving.rollouts.routing import Rollouts


def active_version(rollout: AliasState | None, production: AliasState | None) -> int | None:
    """The version a rollout alias routes to now, or None."""
    if rollout is None or rollout.retired:
        return None
    if production is not None and production.updated_at > rollout.updated_at:
        return None
    return rollout.version


class Followed(NamedTuple):
    version: int | None  # what the alias routes to (active_version)
    moved_at: str | None  # when the alias last moved (a version refused here is judged afresh after)


class RolloutAliases:
    def __init__(
        self, versions: ModelVersions, rollouts: Rollouts, registry: ModelRegistry, production_alias: str, io: Executor
    ) -> None:
        self.versions = versions
        self.rollouts = rollouts
        self.registry = registry
        self.production_alias = production_alias
        self.io = io  # the registry threads

    async def refresh(self, model: str) -> None:
        """Follow the rollout aliases (canary, shadow) of one model."""
        state = self.versions.state(model)
        for role, alias in self.versions.rollout_aliases.items():
            try:
                followed = await asyncio.get_running_loop().run_in_executor(self.io, self._active, model, alias)
            except RegistryError as exc:  # keep what is loaded; say why it could not be checked
                self.versions.rollout_unresolved(state, role, str(exc))
                continue
            if await self.versions.hold(state, role, followed.version, followed.moved_at) and role == "canary":
                self.rollouts.forget(model)  # re-promoted after a rollback here: a fresh watch

    async def refresh_all(self) -> None:
        for model in self.versions.states:
            await self.refresh(model)

    def _active(self, model: str, alias: str) -> Followed:
        rollout, production = (
            self.registry.get_alias(model, alias),
            self.registry.get_alias(model, self.production_alias),
        )
        return Followed(active_version(rollout, production), rollout.updated_at if rollout else None)
