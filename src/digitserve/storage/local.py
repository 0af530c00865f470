"""The registry in a local folder: creates are atomic hard links, replaces hold a lock and rename."""

from __future__ import annotations

import builtins
import fcntl
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from digitserve.storage import errors
from digitserve.storage.base import Store, content_etag


class LocalStore(Store):
    """A folder. Creates are atomic hard links; replaces hold a per-key lock and rename.

    A publisher may start from a folder that does not exist yet (it is created on the first
    write). A server opens the store with `must_exist`: then a missing root folder is the
    registry being unreachable (errors.StoreUnavailableError), as a missing bucket is on S3, not an
    empty registry. A folder the process may not read is unreachable either way.
    """

    def __init__(self, root: Path | str, *, must_exist: bool = False) -> None:
        self.root = Path(root).expanduser().resolve()
        self.uri = str(self.root)
        self.must_exist = must_exist

    def _check_root(self) -> None:
        if self.must_exist and not self.root.is_dir():
            raise errors.StoreUnavailableError(f"registry folder {self.uri} does not exist or is not a folder")

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if self.root != path and self.root not in path.parents:
            raise errors.RegistryError(f"key {key!r} escapes the registry root")
        return path

    def read(self, key: str) -> tuple[bytes, str]:
        try:
            data = self._path(key).read_bytes()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            self._check_root()
            raise errors.NotFoundError(f"{key} not found in {self.uri}") from None
        except PermissionError as exc:
            raise errors.StoreUnavailableError(f"cannot read {key} in {self.uri}: {exc.strerror}") from None
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
        self._check_root()  # a server's missing folder is an outage: never recreate it by writing
        path = self._path(key)
        with self._writing(key):
            tmp = self._write_temp(path, data)
            try:
                os.link(tmp, path)  # atomic, and fails if the name exists
            except FileExistsError:
                raise errors.AlreadyExistsError(f"{key} already exists in {self.uri}") from None
            finally:
                tmp.unlink()
        return content_etag(data)

    @contextmanager
    def _writing(self, key: str) -> Iterator[None]:
        """A folder this process may not write (read-only, not ours, full) is an unwritable registry."""
        try:
            yield
        except OSError as exc:
            raise errors.StoreUnavailableError(f"cannot write {key} in {self.uri}: {exc.strerror or exc}") from None

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
        self._check_root()
        path = self._path(key)
        with self._writing(key), self._lock(path):
            try:
                current: str | None = content_etag(path.read_bytes())
            except FileNotFoundError:
                current = None
            if current != etag:
                raise errors.ConflictError(f"{key} was changed by someone else since it was read; re-read and retry")
            os.replace(self._write_temp(path, data), path)
        return content_etag(data)

    def put(self, key: str, data: bytes) -> None:
        self._check_root()
        path = self._path(key)
        with self._writing(key):
            os.replace(self._write_temp(path, data), path)

    def list(self, prefix: str) -> list[str]:
        return sorted(self._walk(prefix, with_times=False))

    def list_times(self, prefix: str) -> dict[str, float]:
        return self._walk(prefix, with_times=True)

    def _walk(self, prefix: str, with_times: bool) -> dict[str, float]:
        """Keys under `prefix` (files not starting with a dot), by os.scandir: the directory entries'
        own types, no stat per file unless the times are asked for (60,000 feedback samples are
        listed in milliseconds, not seconds)."""
        self._check_root()
        base = self._path(prefix)
        if not base.is_dir():
            return {}
        found: dict[str, float] = {}
        root = str(self.root) + os.sep
        try:
            stack = [str(base)]
            while stack:
                with os.scandir(stack.pop()) as entries:
                    for entry in entries:
                        if entry.is_dir(follow_symlinks=False):
                            stack.append(entry.path)
                        elif entry.is_file(follow_symlinks=False) and not entry.name.startswith("."):
                            key = entry.path.removeprefix(root).replace(os.sep, "/")
                            found[key] = entry.stat().st_mtime if with_times else 0.0
        except PermissionError as exc:
            raise errors.StoreUnavailableError(f"cannot list {prefix} in {self.uri}: {exc.strerror}") from None
        return found

    def children(self, prefix: str) -> builtins.list[str]:
        self._check_root()
        base = self._path(prefix)
        if not base.is_dir():
            return []
        try:
            return sorted(p.name for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))
        except PermissionError as exc:
            raise errors.StoreUnavailableError(f"cannot list {prefix} in {self.uri}: {exc.strerror}") from None
