"""Key-value stores under the registry: the operations it needs and nothing more.

Two primitives carry the registry's guarantees: `create` (write only if the key is absent:
a version is created by creating its manifest) and `replace` (compare-and-swap on an etag:
an alias moves only if nobody moved it since it was read). A local folder implements them
with hard links and a file lock; S3 with `If-None-Match: *` and `If-Match: <etag>`.
"""

from __future__ import annotations

import builtins
import fcntl
import hashlib
import os
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse


class RegistryError(RuntimeError):
    """Base class of every registry failure; messages are one line a person can act on."""


class NotFoundError(RegistryError):
    pass


class AlreadyExistsError(RegistryError):
    pass


class ConflictError(RegistryError):
    """A compare-and-swap lost: somebody else changed the key since it was read."""


class StoreUnavailableError(RegistryError):
    """The store could not be reached or refused access (network, credentials, bucket)."""


class Store(ABC):
    """Bytes by key, where keys are '/'-separated paths relative to the registry root."""

    uri: str

    @abstractmethod
    def read(self, key: str) -> tuple[bytes, str]:
        """The value and its etag; NotFoundError if absent."""

    @abstractmethod
    def create(self, key: str, data: bytes) -> str:
        """Write only if `key` is absent (AlreadyExistsError otherwise); returns the etag."""

    @abstractmethod
    def replace(self, key: str, data: bytes, etag: str | None) -> str:
        """Write if the current etag is `etag` (None: the key must be absent); ConflictError if not."""

    @abstractmethod
    def put(self, key: str, data: bytes) -> None:
        """Unconditional write, for content-addressed blobs and report files."""

    @abstractmethod
    def list(self, prefix: str) -> list[str]:
        """All keys under `prefix` (a folder path ending in '/'), sorted."""

    @abstractmethod
    def children(self, prefix: str) -> builtins.list[str]:
        """Names of the immediate sub-folders of `prefix`."""

    def exists(self, key: str) -> bool:
        try:
            self.read(key)
        except NotFoundError:
            return False
        return True


def content_etag(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class LocalStore(Store):
    """A folder. Creates are atomic hard links; replaces hold a per-key lock and rename.

    A publisher may start from a folder that does not exist yet (it is created on the first
    write). A server opens the store with `must_exist`: then a missing root folder is the
    registry being unreachable (StoreUnavailableError), as a missing bucket is on S3, not an
    empty registry. A folder the process may not read is unreachable either way.
    """

    def __init__(self, root: Path | str, *, must_exist: bool = False) -> None:
        self.root = Path(root).expanduser().resolve()
        self.uri = str(self.root)
        self.must_exist = must_exist

    def _check_root(self) -> None:
        if self.must_exist and not self.root.is_dir():
            raise StoreUnavailableError(f"registry folder {self.uri} does not exist or is not a folder")

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if self.root != path and self.root not in path.parents:
            raise RegistryError(f"key {key!r} escapes the registry root")
        return path

    def read(self, key: str) -> tuple[bytes, str]:
        try:
            data = self._path(key).read_bytes()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            self._check_root()
            raise NotFoundError(f"{key} not found in {self.uri}") from None
        except PermissionError as exc:
            raise StoreUnavailableError(f"cannot read {key} in {self.uri}: {exc.strerror}") from None
        return data, content_etag(data)

    def _write_temp(self, path: Path, data: bytes) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        return Path(tmp)

    def create(self, key: str, data: bytes) -> str:
        path = self._path(key)
        tmp = self._write_temp(path, data)
        try:
            os.link(tmp, path)  # atomic, and fails if the name exists
        except FileExistsError:
            raise AlreadyExistsError(f"{key} already exists in {self.uri}") from None
        finally:
            tmp.unlink()
        return content_etag(data)

    @contextmanager
    def _lock(self, path: Path) -> Iterator[None]:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path.with_name(f".{path.name}.lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def replace(self, key: str, data: bytes, etag: str | None) -> str:
        path = self._path(key)
        with self._lock(path):
            try:
                current: str | None = content_etag(path.read_bytes())
            except FileNotFoundError:
                current = None
            if current != etag:
                raise ConflictError(f"{key} was changed by someone else since it was read; re-read and retry")
            os.replace(self._write_temp(path, data), path)
        return content_etag(data)

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        os.replace(self._write_temp(path, data), path)

    def list(self, prefix: str) -> list[str]:
        self._check_root()
        base = self._path(prefix)
        if not base.is_dir():
            return []
        try:
            keys = [p.relative_to(self.root).as_posix() for p in base.rglob("*") if p.is_file()]
        except PermissionError as exc:
            raise StoreUnavailableError(f"cannot list {prefix} in {self.uri}: {exc.strerror}") from None
        return sorted(k for k in keys if not Path(k).name.startswith("."))

    def children(self, prefix: str) -> builtins.list[str]:
        self._check_root()
        base = self._path(prefix)
        if not base.is_dir():
            return []
        try:
            return sorted(p.name for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))
        except PermissionError as exc:
            raise StoreUnavailableError(f"cannot list {prefix} in {self.uri}: {exc.strerror}") from None


def default_registry_uri() -> str:
    """`DIGITSERVE_REGISTRY`, else the repository's embedded `registry/` folder."""
    env = os.environ.get("DIGITSERVE_REGISTRY")
    if env:
        return env
    return str(Path(__file__).resolve().parents[3] / "registry")


def open_store(uri: str | None = None) -> Store:
    """A store for a path, a `file://` URI or an `s3://bucket/prefix` URI."""
    uri = uri or default_registry_uri()
    parsed = urlparse(uri)
    if parsed.scheme == "s3":
        from digitserve.registry.s3 import S3Store

        return S3Store(parsed.netloc, parsed.path.strip("/"))
    if parsed.scheme == "file":
        return LocalStore(parsed.path)
    if parsed.scheme in ("", "local") or len(parsed.scheme) == 1:  # a plain path (or C:\ on Windows)
        return LocalStore(uri)
    raise RegistryError(f"unsupported registry URI {uri!r}: use a path, file://... or s3://bucket/prefix")
