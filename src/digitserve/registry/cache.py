"""A local disk cache in front of a remote registry, so a server survives the registry going away.

Manifests and blobs are immutable, so once read (and, for blobs, sha256-verified) they are
kept on disk and never fetched again. Aliases are not immutable: they are always read from the
registry, and the last answer is kept only as a fallback for when the registry is unreachable
(a server can then start, or keep polling, from what it last knew, and says so).

Each registry URI has its own folder under the cache dir: version 1 of `cnn` in one bucket is
not version 1 of `cnn` in another, so servers of two registries may share a cache dir.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path

from digitserve.registry.core import IntegrityError, ModelRegistry, verify_blob
from digitserve.registry.records import AliasState, Manifest
from digitserve.storage import Store, StoreUnavailableError

log = logging.getLogger(__name__)


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def cache_folder(cache_dir: Path, uri: str) -> Path:
    """Where the cache of the registry at `uri` lives under `cache_dir`."""
    return Path(cache_dir).expanduser() / hashlib.sha256(uri.encode()).hexdigest()[:16]


class CachedRegistry(ModelRegistry):
    """A ModelRegistry that keeps verified blobs, manifests and last-seen aliases on disk."""

    def __init__(self, store: Store, cache_dir: Path) -> None:
        super().__init__(store)
        self.cache_dir = cache_folder(cache_dir, store.uri)
        self.unavailable: str | None = None  # the last "registry unreachable" error, while it lasts

    def _cached(self, *parts: str) -> Path:
        return self.cache_dir.joinpath(*parts)

    def manifest(self, model: str, version: int) -> Manifest:
        path = self._cached(model, "versions", str(int(version)), "manifest.json")
        if path.is_file():
            return Manifest.from_dict(json.loads(path.read_bytes()), model, int(version))
        manifest = super().manifest(model, version)
        _write_atomic(path, json.dumps(manifest.to_dict()).encode())
        return manifest

    def read_artifact(self, model: str, version: int, kind: str) -> tuple[Manifest, bytes]:
        manifest = self.manifest(model, version)
        expected = manifest.artifact(kind)
        path = self._cached(model, "blobs", f"{expected.sha256}.{expected.format}")
        if path.is_file():
            data = path.read_bytes()
            try:
                verify_blob(data, expected, f"cached {model} v{version}")
                return manifest, data
            except IntegrityError:
                log.warning("cached %s blob of %s v%d is damaged; fetching it again", kind, model, version)
                path.unlink(missing_ok=True)
        manifest, data = super().read_artifact(model, version, kind)
        _write_atomic(path, data)
        return manifest, data

    def get_alias(self, model: str, alias: str) -> AliasState | None:
        path = self._cached(model, "aliases", f"{alias}.json")
        try:
            state = super().get_alias(model, alias)
        except StoreUnavailableError as exc:
            self.unavailable = str(exc)
            if not path.is_file():
                raise
            log.warning("registry unreachable (%s); using the cached alias %s/%s", exc, model, alias)
            return AliasState.parse(path.read_bytes(), etag="cached", what=f"cached alias {model}/{alias}")
        self.unavailable = None
        if state is None:
            path.unlink(missing_ok=True)
            return None
        _write_atomic(path, json.dumps(state.to_dict()).encode())
        return state
