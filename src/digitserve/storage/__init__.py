"""Where registry bytes live: a local folder or an S3 bucket, behind one small `Store` interface.

`base.py` (the interface), `local.py`, `s3.py`, `errors.py` (the `RegistryError` family every
store raises). May import config only."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

from digitserve.config import shipped_registry, state_dir
from digitserve.storage.base import Store
from digitserve.storage.errors import (
    AlreadyExistsError,
    ConflictError,
    NotFoundError,
    RegistryError,
    StoreUnavailableError,
)
from digitserve.storage.local import LocalStore
from digitserve.storage.split import SplitStore


def open_store(uri: str, *, must_exist: bool = False) -> Store:
    """A store for a path, a `file://` URI or an `s3://bucket/prefix` URI.

    `must_exist`: a missing local folder is an unreachable registry (a server's view), not an
    empty one (a publisher's view, which creates it on the first write).
    """
    parsed = urlparse(uri)
    if parsed.scheme == "s3":
        from digitserve.storage.s3 import S3Store  # boto3 is imported only for S3 registries

        return S3Store(parsed.netloc, parsed.path.strip("/"))
    if parsed.scheme == "file":
        return _local(parsed.path, must_exist)
    if parsed.scheme in ("", "local") or len(parsed.scheme) == 1:  # a plain path (or C:\ on Windows)
        return _local(uri, must_exist)
    raise RegistryError(f"unsupported registry URI {uri!r}: use a path, file://... or s3://bucket/prefix")


def _local(path: str, must_exist: bool) -> Store:
    """A folder; the package's own shipped registry keeps what servers write elsewhere (split.py)."""
    store = LocalStore(path, must_exist=must_exist)
    if store.root == Path(str(shipped_registry())).resolve():
        return SplitStore(store, LocalStore(state_dir() / "registry"))
    return store


__all__ = [
    "AlreadyExistsError",
    "ConflictError",
    "LocalStore",
    "NotFoundError",
    "RegistryError",
    "Store",
    "StoreUnavailableError",
    "open_store",
]
