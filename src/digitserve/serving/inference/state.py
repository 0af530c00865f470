"""What the server holds for each model: its loaded versions and why one could not be loaded,
as `versions.py` keeps them and the API shows them."""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from digitserve.runtime import Servable
from digitserve.serving.inference.batching import DynamicBatcher

Role = Literal["canary", "shadow"]  # a rollout version's place beside the served one


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


@dataclass(frozen=True)
class LoadFailure:
    """Why a version (or an alias) could not be loaded or followed, as `GET /v1/models` shows it."""

    step: str
    message: str
    version: int | None = None
    alias: str | None = None
    at: float = field(default_factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        """The served version's failures always name the version (null: the alias could not be read)."""
        return without_none(self, keep=("version",) if self.alias is None else ())


@dataclass(frozen=True)
class Refusal:
    """A rollout version this process retired: why, and the alias move that had brought it in.
    Moving the alias to it again (someone re-promoting it) is a new decision, judged afresh."""

    reason: str
    moved_at: str | None


@dataclass
class ModelState:
    name: str
    served: LoadedVersion | None = None
    last_error: LoadFailure | None = None
    failed: dict[int, str] = field(default_factory=dict)  # version -> why; not retried by polling
    last_poll_at: float | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    rollout: dict[Role, LoadedVersion] = field(default_factory=dict)
    rollout_errors: dict[Role, LoadFailure] = field(default_factory=dict)
    refused: dict[int, Refusal] = field(default_factory=dict)  # rollout versions this process retired
    rollout_moved_at: dict[Role, str] = field(default_factory=dict)  # when its alias last moved to what it holds


@dataclass(frozen=True)
class Refresh:
    """What one re-read of a model's alias did (`POST /v1/admin/reload` answers with these)."""

    model: str
    changed: bool
    version: int | None = None
    error: str | None = None
    registry_unreachable: bool | None = None  # set when the alias could not be read at all

    def to_dict(self) -> dict[str, Any]:
        return without_none(self)


def without_none(record: Any, keep: tuple[str, ...] = ()) -> dict[str, Any]:
    """A dataclass as JSON, leaving out the fields that are None (but those in `keep`)."""
    return {k: v for k, v in asdict(record).items() if v is not None or k in keep}
