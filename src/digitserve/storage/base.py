"""Key-value stores under the registry: the operations it needs and nothing more.

Two primitives carry the registry's guarantees: `create` (write only if the key is absent:
a version is created by creating its manifest) and `replace` (compare-and-swap on an etag:
an alias moves only if nobody moved it since it was read). A local folder implements them
with hard links and a file lock (`local.py`); S3 with `If-None-Match: *` and `If-Match` (`s3.py`).

"""

from __future__ import annotations

import builtins
import hashlib
from abc import ABC, abstractmethod

from digitserve.storage.errors import NotFoundError


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

    @abstractmethod
    def list_times(self, prefix: str) -> dict[str, float]:
        """Every key under `prefix` with when it was written (seconds since the epoch): what a
        "newest first" listing sorts by without reading a single value."""

    def exists(self, key: str) -> bool:
        try:
            self.read(key)
        except NotFoundError:
            return False
        return True


def content_etag(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
