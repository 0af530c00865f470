"""The model registry: immutable versions, content-addressed weights, aliases, an event log.

Layout under the root (see DESIGN.md -> Registry):
    <model>/blobs/<sha256>.safetensors
    <model>/versions/<n>/manifest.json        creating it creates version n
    <model>/versions/<n>/report/...
    <model>/aliases/<alias>.json              {"version", "previous", "updated_at", "reason"}
    <model>/events/<time>-<id>.json           one file per alias move, never rewritten
"""

from __future__ import annotations

import getpass
import hashlib
import json
import os
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from digitserve.models import create_model
from digitserve.registry.store import (
    AlreadyExistsError,
    ConflictError,
    NotFoundError,
    RegistryError,
    Store,
    open_store,
)

MODEL_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
MAX_PUBLISH_ATTEMPTS = 50


class IntegrityError(RegistryError):
    """Weights whose sha256 or size does not match the manifest: never loaded."""


class AliasConflictError(ConflictError):
    pass


@dataclass(frozen=True)
class AliasState:
    version: int
    previous: int | None
    updated_at: str
    reason: str
    etag: str

    @classmethod
    def parse(cls, data: bytes, etag: str) -> AliasState:
        doc = json.loads(data)
        return cls(int(doc["version"]), doc.get("previous"), doc.get("updated_at", ""), doc.get("reason", ""), etag)


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def current_actor() -> str:
    """Who moves an alias: the CI identity when there is one, else the local user."""
    for var in ("DIGITSERVE_ACTOR", "GITHUB_ACTOR"):
        if os.environ.get(var):
            return os.environ[var]
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def check_model_name(name: str) -> str:
    if not MODEL_NAME.match(name):
        raise RegistryError(f"invalid model name {name!r}: use lowercase letters, digits, '-' and '_'")
    return name


def _dumps(doc: Any) -> bytes:
    return json.dumps(doc, indent=2, sort_keys=True).encode() + b"\n"


class ModelRegistry:
    """Publish, read and point aliases at model versions in one store."""

    def __init__(self, store: Store) -> None:
        self.store = store

    @classmethod
    def open(cls, uri: str | None = None) -> ModelRegistry:
        return cls(open_store(uri))

    @property
    def uri(self) -> str:
        return self.store.uri

    # --- versions ---------------------------------------------------------------------------

    def list_models(self) -> list[str]:
        return [m for m in self.store.children("") if MODEL_NAME.match(m)]

    def list_versions(self, model: str) -> list[int]:
        prefix = f"{check_model_name(model)}/versions/"
        found = (k.removeprefix(prefix).split("/") for k in self.store.list(prefix))
        return sorted(int(p[0]) for p in found if len(p) == 2 and p[1] == "manifest.json" and p[0].isdigit())

    def manifest(self, model: str, version: int) -> dict[str, Any]:
        try:
            data, _ = self.store.read(f"{check_model_name(model)}/versions/{int(version)}/manifest.json")
        except NotFoundError:
            raise NotFoundError(f"model {model!r} has no version {version} in {self.uri}") from None
        try:
            doc = json.loads(data)
        except ValueError as exc:
            raise RegistryError(f"{model} v{version}: the manifest is not valid JSON ({exc})") from None
        if not isinstance(doc, dict):
            raise RegistryError(f"{model} v{version}: the manifest is not a JSON object")
        return doc

    def publish(
        self,
        model: str,
        arch: str,
        config: Mapping[str, Any],
        state_dict: Mapping[str, torch.Tensor],
        metadata: Mapping[str, Any],
        report: Mapping[str, bytes] | None = None,
    ) -> int:
        """Store the weights and create the next version's manifest; returns its number.

        Two publishers racing for the same number: the create-only write lets exactly one
        have it, and the other moves on to the next number.
        """
        check_model_name(model)
        weights = save_safetensors({k: v.detach().cpu().contiguous() for k, v in state_dict.items()})
        sha = hashlib.sha256(weights).hexdigest()
        blob_key = f"{model}/blobs/{sha}.safetensors"
        if not self.store.exists(blob_key):
            self.store.put(blob_key, weights)
        manifest = {
            **metadata,
            "model": model,
            "architecture": arch,
            "config": dict(config),
            "weights": {"sha256": sha, "size": len(weights), "format": "safetensors", "key": blob_key},
            "created_at": now_iso(),
        }
        existing = self.list_versions(model)
        version = existing[-1] + 1 if existing else 1
        for _ in range(MAX_PUBLISH_ATTEMPTS):
            manifest["version"] = version
            try:
                self.store.create(f"{model}/versions/{version}/manifest.json", _dumps(manifest))
                break
            except AlreadyExistsError:
                version += 1
        else:
            raise RegistryError(f"could not allocate a version for {model} after {MAX_PUBLISH_ATTEMPTS} tries")
        for name, data in (report or {}).items():
            self.store.put(f"{model}/versions/{version}/report/{name}", data)
        return version

    def read_report(self, model: str, version: int, name: str) -> bytes:
        return self.store.read(f"{model}/versions/{int(version)}/report/{name}")[0]

    def read_verified_blob(self, model: str, version: int) -> tuple[dict[str, Any], bytes]:
        """The manifest and the raw safetensors bytes, after checking their size and sha256."""
        manifest = self.manifest(model, version)
        expected = manifest["weights"]
        try:
            data, _ = self.store.read(f"{model}/blobs/{expected['sha256']}.safetensors")
        except NotFoundError:
            raise IntegrityError(f"{model} v{version}: weights blob {expected['sha256'][:12]}... is missing") from None
        verify_blob(data, expected, f"{model} v{version}")
        return manifest, data

    def load_weights(self, model: str, version: int) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        """The manifest and its weights; only verified bytes are ever deserialised."""
        manifest, data = self.read_verified_blob(model, version)
        return manifest, load_safetensors(data)

    def load_model(self, model: str, version: int) -> tuple[dict[str, Any], torch.nn.Module]:
        """Rebuild the network from the manifest and load its verified weights (eval mode)."""
        manifest, state = self.load_weights(model, version)
        return manifest, build_model(manifest, state)

    # --- aliases and events -----------------------------------------------------------------

    def get_alias(self, model: str, alias: str) -> AliasState | None:
        try:
            data, etag = self.store.read(f"{check_model_name(model)}/aliases/{check_model_name(alias)}.json")
        except NotFoundError:
            return None
        try:
            return AliasState.parse(data, etag)
        except (ValueError, KeyError, TypeError) as exc:  # hand-edited or damaged: say so, do not crash
            raise RegistryError(f"alias {model}/{alias} is unreadable ({type(exc).__name__}: {exc})") from None

    def resolve_alias(self, model: str, alias: str) -> int:
        state = self.get_alias(model, alias)
        if state is None:
            raise NotFoundError(f"model {model!r} has no alias {alias!r} in {self.uri}")
        return state.version

    def list_aliases(self, model: str) -> dict[str, int]:
        keys = self.store.list(f"{check_model_name(model)}/aliases/")
        names = [k.rsplit("/", 1)[1].removesuffix(".json") for k in keys if k.endswith(".json")]
        return {n: s.version for n in names if (s := self.get_alias(model, n)) is not None}

    def move_alias(
        self,
        model: str,
        alias: str,
        version: int,
        *,
        reason: str = "",
        expected: AliasState | None = None,
        gate: Mapping[str, Any] | None = None,
        action: str = "promote",
    ) -> AliasState:
        """Point `alias` at `version` by compare-and-swap, and log the move as an event.

        `expected` is the alias as the caller last read it: if someone moved it since, this
        raises AliasConflictError rather than overwrite their move.
        """
        self.manifest(model, version)  # the version must exist
        current = expected if expected is not None else self.get_alias(model, alias)
        at = now_iso()
        doc = {
            "version": int(version),
            "previous": current.version if current else None,
            "updated_at": at,
            "reason": reason,
        }
        key = f"{model}/aliases/{check_model_name(alias)}.json"
        try:
            etag = self.store.replace(key, _dumps(doc), current.etag if current else None)
        except ConflictError:
            raise AliasConflictError(
                f"alias {model}/{alias} was moved by someone else since it was read; nothing changed"
            ) from None
        event = {
            "action": action,
            "model": model,
            "alias": alias,
            "from": doc["previous"],
            "to": int(version),
            "actor": current_actor(),
            "at": at,
            "reason": reason,
            "gate": dict(gate) if gate else None,
        }
        stamp = at.replace(":", "").replace("-", "")
        self.store.create(f"{model}/events/{stamp}-{uuid.uuid4().hex[:8]}.json", _dumps(event))
        return AliasState.parse(_dumps(doc), etag)

    def rollback(self, model: str, alias: str, reason: str = "rollback") -> AliasState:
        """Move `alias` back to the version it held before its last move."""
        current = self.get_alias(model, alias)
        if current is None or current.previous is None:
            raise RegistryError(f"alias {model}/{alias} has no previous version to roll back to")
        return self.move_alias(model, alias, current.previous, reason=reason, expected=current, action="rollback")

    def events(self, model: str, alias: str | None = None) -> list[dict[str, Any]]:
        """The alias-move log, oldest first."""
        docs = [json.loads(self.store.read(k)[0]) for k in self.store.list(f"{check_model_name(model)}/events/")]
        return [d for d in docs if alias is None or d.get("alias") == alias]


def verify_blob(data: bytes, expected: Mapping[str, Any], what: str) -> None:
    if len(data) != expected["size"]:
        raise IntegrityError(f"{what}: weights are {len(data)} bytes, manifest says {expected['size']}")
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected["sha256"]:
        raise IntegrityError(f"{what}: weights sha256 {actual[:12]}... does not match the manifest")


def build_model(manifest: Mapping[str, Any], state: Mapping[str, torch.Tensor]) -> torch.nn.Module:
    model = create_model(manifest["architecture"], **manifest["config"])
    model.load_state_dict(state, strict=True)
    return model.eval()
