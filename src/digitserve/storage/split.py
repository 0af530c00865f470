"""The shipped registry as a server uses it: versions, aliases and reports read from the package's
own folder, and what servers write -- feedback, rollout evidence, disagreement samples -- kept in
a folder of the user's (`DIGITSERVE_STATE_DIR`), never in the package (site-packages, after a pip
install). Every key goes to one side by its path, so reads find what writes left."""

from __future__ import annotations

import builtins

from digitserve.storage.base import Store

WRITTEN_BY_SERVERS = ("feedback/", "disagreements/")


def written_by_servers(key: str) -> bool:
    """Feedback, disagreement samples, and `<model>/rollouts/...` (evidence)."""
    parts = key.split("/", 2)
    return key.startswith(WRITTEN_BY_SERVERS) or (len(parts) > 1 and parts[1] == "rollouts")


class SplitStore(Store):
    def __init__(self, base: Store, writes: Store) -> None:
        self.base = base
        self.writes = writes
        self.uri = base.uri

    def _side(self, key: str) -> Store:
        return self.writes if written_by_servers(key) else self.base

    def read(self, key: str) -> tuple[bytes, str]:
        return self._side(key).read(key)

    def create(self, key: str, data: bytes) -> str:
        return self._side(key).create(key, data)

    def replace(self, key: str, data: bytes, etag: str | None) -> str:
        return self._side(key).replace(key, data, etag)

    def put(self, key: str, data: bytes) -> None:
        self._side(key).put(key, data)

    def exists(self, key: str) -> bool:
        return self._side(key).exists(key)

    def list(self, prefix: str) -> list[str]:
        if written_by_servers(prefix):
            return self.writes.list(prefix)
        return sorted(set(self.base.list(prefix)) | {k for k in self.writes.list(prefix) if written_by_servers(k)})

    def list_times(self, prefix: str) -> dict[str, float]:
        if written_by_servers(prefix):
            return self.writes.list_times(prefix)
        written = {k: at for k, at in self.writes.list_times(prefix).items() if written_by_servers(k)}
        return {**self.base.list_times(prefix), **written}

    def children(self, prefix: str) -> builtins.list[str]:
        return sorted(set(self.base.children(prefix)) | set(self.writes.children(prefix)))
