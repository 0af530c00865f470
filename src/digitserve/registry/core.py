"""The model registry: immutable versions, content-addressed artifacts, aliases, an event log.

Layout under the root (see README -> The registry):
    <model>/blobs/<sha256>.safetensors        the weights
    <model>/blobs/<sha256>.onnx               the ONNX graph of the same version (what serves)
    <model>/versions/<n>/manifest.json        creating it creates version n
    <model>/versions/<n>/report/...
    <model>/aliases/<alias>.json              {"version", "previous", "updated_at", "reason"}
    <model>/events/<time>-<id>.json           one file per alias move, never rewritten

Only bytes and typed records cross this layer: it knows no model architecture and no torch.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Mapping
from typing import Any

from digitserve.config import actor, default_registry_uri
from digitserve.registry.records import (
    MANIFEST_FIELDS,
    MODEL_NAME,
    AliasState,
    Artifact,
    Golden,
    Manifest,
    check_model_name,
    dumps,
    loads_object,
    now_iso,
)
from digitserve.storage import (
    AlreadyExistsError,
    ConflictError,
    NotFoundError,
    RegistryError,
    Store,
    StoreUnavailableError,
    open_store,
)

MAX_PUBLISH_ATTEMPTS = 50
EVENT_ATTEMPTS = 3
RESERVED_NAMES = frozenset({"feedback", "disagreements"})  # folders beside the models


class IntegrityError(RegistryError):
    """An artifact whose sha256 or size does not match the manifest: never loaded."""


class AliasConflictError(ConflictError):
    pass


def verify_blob(data: bytes, expected: Artifact, what: str) -> None:
    if len(data) != expected.size:
        raise IntegrityError(
            f"{what}: the {expected.kind} blob is {len(data)} bytes, the manifest says {expected.size}"
        )
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected.sha256:
        raise IntegrityError(f"{what}: {expected.kind} sha256 {actual[:12]}... does not match the manifest")


class ModelRegistry:
    """Publish, read and point aliases at model versions in one store."""

    def __init__(self, store: Store) -> None:
        self.store = store

    @classmethod
    def open(cls, uri: str | None = None) -> ModelRegistry:
        return cls(open_store(uri or default_registry_uri()))

    @property
    def uri(self) -> str:
        return self.store.uri

    # --- versions ---------------------------------------------------------------------------

    def list_models(self) -> list[str]:
        return [m for m in self.store.children("") if MODEL_NAME.match(m) and m not in RESERVED_NAMES]

    def list_versions(self, model: str) -> list[int]:
        prefix = f"{check_model_name(model)}/versions/"
        found = (k.removeprefix(prefix).split("/") for k in self.store.list(prefix))
        numbers = (p[0] for p in found if len(p) == 2 and p[1] == "manifest.json")
        return sorted(int(n) for n in numbers if n.isdecimal() and len(n) <= 15 and int(n) > 0)

    def manifest(self, model: str, version: int) -> Manifest:
        key = f"{check_model_name(model)}/versions/{int(version)}/manifest.json"
        try:
            data, _ = self.store.read(key)
        except NotFoundError:
            raise NotFoundError(f"model {model!r} has no version {version} in {self.uri}") from None
        return Manifest.from_dict(loads_object(data, f"{model} v{version}: the manifest"), model, int(version))

    def publish(
        self,
        model: str,
        *,
        architecture: str,
        config: Mapping[str, Any],
        weights: bytes,
        onnx: bytes,
        onnx_opset: int,
        golden: Golden,
        metadata: Mapping[str, Any],
        report: Mapping[str, bytes] | None = None,
    ) -> int:
        """Store the artifacts and create the next version's manifest; returns its number.

        Two publishers racing for the same number: the create-only write lets exactly one
        have it, and the other moves on to the next number.
        """
        if check_model_name(model) in RESERVED_NAMES:
            raise RegistryError(f"{model!r} is a folder of the registry itself; choose another model name")
        artifacts = [self._put_blob(model, "weights", weights), self._put_blob(model, "onnx", onnx, onnx_opset)]
        draft = Manifest(
            model=model,
            version=0,
            architecture=architecture,
            config=dict(config),
            weights=artifacts[0],
            onnx=artifacts[1],
            golden=golden,
            metrics=dict(metadata.get("metrics") or {}),
            created_at=now_iso(),
            extra={k: v for k, v in metadata.items() if k != "metrics"},
        )
        existing = self.list_versions(model)
        version = existing[-1] + 1 if existing else 1
        for _ in range(MAX_PUBLISH_ATTEMPTS):
            doc = {**draft.to_dict(), "version": version}
            try:
                self.store.create(f"{model}/versions/{version}/manifest.json", dumps(doc))
                break
            except AlreadyExistsError:
                version += 1
        else:
            raise RegistryError(f"could not allocate a version for {model} after {MAX_PUBLISH_ATTEMPTS} tries")
        for name, data in (report or {}).items():
            self.store.put(f"{model}/versions/{version}/report/{name}", data)
        return version

    def add_to_manifest(self, model: str, version: int, key: str, value: Any) -> None:
        """Add one field a version was published without (the drift reference of a version from
        before training measured it). Every field it has stays as it was; one it has is never
        replaced, so what the version is -- its artifacts, config and measurements -- cannot change."""
        path = f"{check_model_name(model)}/versions/{int(version)}/manifest.json"
        data, _ = self.store.read(path)
        doc = loads_object(data, f"{model} v{version}: the manifest")
        if key in MANIFEST_FIELDS or (key in doc and doc[key] != value):
            raise RegistryError(f"{model} v{version} already has '{key}'; a version's fields are never replaced")
        self.store.put(path, dumps({**doc, key: value}))

    def _put_blob(self, model: str, kind: str, data: bytes, opset: int | None = None) -> Artifact:
        artifact = Artifact(kind, hashlib.sha256(data).hexdigest(), len(data), opset)
        if not self.store.exists(artifact.key(model)):
            self.store.put(artifact.key(model), data)
        return artifact

    def read_report(self, model: str, version: int, name: str) -> bytes:
        return self.store.read(f"{check_model_name(model)}/versions/{int(version)}/report/{name}")[0]

    def list_report(self, model: str, version: int) -> list[str]:
        prefix = f"{check_model_name(model)}/versions/{int(version)}/report/"
        return [key.removeprefix(prefix) for key in self.store.list(prefix)]

    def read_artifact(self, model: str, version: int, kind: str) -> tuple[Manifest, bytes]:
        """The manifest and one artifact's bytes ("weights" or "onnx"), after checking size and sha256."""
        manifest = self.manifest(model, version)
        expected = manifest.artifact(kind)
        try:
            data, _ = self.store.read(expected.key(model))
        except NotFoundError:
            raise IntegrityError(f"{model} v{version}: {kind} blob {expected.sha256[:12]}... is missing") from None
        verify_blob(data, expected, f"{model} v{version}")
        return manifest, data

    # --- aliases and events -----------------------------------------------------------------

    def get_alias(self, model: str, alias: str) -> AliasState | None:
        try:
            data, etag = self.store.read(f"{check_model_name(model)}/aliases/{check_model_name(alias)}.json")
        except NotFoundError:
            return None
        # hand-edited or damaged: a ManifestError that says so, never a crash
        return AliasState.parse(data, etag, f"alias {model}/{alias} is unreadable:")

    def resolve_alias(self, model: str, alias: str) -> int:
        state = self.get_alias(model, alias)
        if state is None:
            raise NotFoundError(f"model {model!r} has no alias {alias!r} in {self.uri}")
        return state.version

    def list_aliases(self, model: str, include_retired: bool = True) -> dict[str, int]:
        """Alias -> version; `include_retired=False` leaves out parked rollout aliases."""
        keys = self.store.list(f"{check_model_name(model)}/aliases/")
        names = [k.rsplit("/", 1)[1].removesuffix(".json") for k in keys if k.endswith(".json")]
        states = {n: self.get_alias(model, n) for n in names if MODEL_NAME.match(n)}
        return {n: s.version for n, s in states.items() if s is not None and (include_retired or not s.retired)}

    def aliases_by_version(self, model: str, include_retired: bool = True) -> dict[int, list[str]]:
        """Version -> the aliases naming it, in name order."""
        found: dict[int, list[str]] = {}
        for alias, version in sorted(self.list_aliases(model, include_retired).items()):
            found.setdefault(version, []).append(alias)
        return found

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
        who: str | None = None,
        evidence: Mapping[str, Any] | None = None,
        retire: bool = False,
    ) -> AliasState:
        """Point `alias` at `version` by compare-and-swap, and log the move as an event.

        `expected` is the alias as the caller last read it: if someone moved it since, this
        raises AliasConflictError rather than overwrite their move. `retire` parks a rollout
        alias (canary, shadow): it then routes nothing until it is moved again.
        """
        self.manifest(model, version)  # the version must exist
        current = expected if expected is not None else self.get_alias(model, alias)
        at = now_iso()
        doc = {"version": int(version), "previous": current.version if current else None, "updated_at": at}
        doc.update(reason=reason, **({"retired": True} if retire else {}))
        key = f"{model}/aliases/{check_model_name(alias)}.json"
        try:
            etag = self.store.replace(key, dumps(doc), current.etag if current else None)
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
            "actor": who or actor(),
            "at": at,
            "reason": reason,
            "gate": dict(gate) if gate else None,
        }
        if evidence is not None:
            event["evidence"] = dict(evidence)
        self._log_event(model, at, event)
        return AliasState.parse(dumps(doc), etag)

    def _log_event(self, model: str, at: str, event: dict[str, Any]) -> None:
        """Create the event of a move that has happened: retried under one key, so a store that
        fails for a moment neither loses the event nor writes it twice."""
        stamp = at.replace(":", "").replace("-", "")
        key = f"{model}/events/{stamp}-{uuid.uuid4().hex[:8]}.json"
        for attempt in range(EVENT_ATTEMPTS):
            try:
                self.store.create(key, dumps(event))
                return
            except AlreadyExistsError:
                return  # an earlier attempt did write it
            except StoreUnavailableError as exc:
                if attempt == EVENT_ATTEMPTS - 1:
                    raise StoreUnavailableError(f"the alias moved, but its event could not be logged: {exc}") from None
                time.sleep(0.5 * (attempt + 1))

    def rollback(self, model: str, alias: str, reason: str = "rollback") -> AliasState:
        """Move `alias` back to the version it held before its last move."""
        current = self.get_alias(model, alias)
        if current is None or current.previous is None:
            raise RegistryError(f"alias {model}/{alias} has no previous version to roll back to")
        return self.move_alias(model, alias, current.previous, reason=reason, expected=current, action="rollback")

    def events(self, model: str, alias: str | None = None) -> list[dict[str, Any]]:
        """The alias-move log, oldest first (an unreadable event is skipped, never fatal)."""
        docs = []
        for key in self.store.list(f"{check_model_name(model)}/events/"):
            try:
                docs.append(json.loads(self.store.read(key)[0]))
            except (ValueError, RecursionError):
                continue
        return [d for d in docs if isinstance(d, dict) and (alias is None or d.get("alias") == alias)]
