"""What the registry holds for a model (versions, aliases, metrics), cached between reads.

Manifests are immutable, so each is read once. If the registry cannot be reached, the last
listing is shown with the error, so `GET /v1/models` keeps answering.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import Executor
from typing import Any

from digitserve.registry import Manifest, ModelRegistry, RegistryError, StoreUnavailableError


class Catalog:
    def __init__(self, registry: ModelRegistry, executor: Executor) -> None:
        self.registry = registry
        self.executor = executor  # its own threads: a slow listing never delays a model load
        self._manifests: dict[tuple[str, int], Manifest] = {}
        self._last: dict[str, dict[str, Any]] = {}

    def _version_entry(self, model: str, version: int) -> dict[str, Any]:
        key = (model, version)
        if key not in self._manifests:
            try:
                self._manifests[key] = self.registry.manifest(model, version)
            except StoreUnavailableError:
                raise
            except RegistryError as exc:  # one damaged manifest: shown as such, the others still listed
                return {"version": version, "error": str(exc)}
        m = self._manifests[key]
        return {
            "version": version,
            "architecture": m.architecture,
            "metrics": m.metrics,
            "created_at": m.created_at,
            "weights_sha256": m.weights.sha256,
            "onnx_sha256": m.onnx.sha256 if m.onnx else None,  # None: published before ONNX serving
        }

    async def describe(self, model: str) -> dict[str, Any]:
        """{"versions": [...], "aliases": {...}, "registry_error": str | None, "listed_at": ...}."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, self._describe, model)

    def _describe(self, model: str) -> dict[str, Any]:
        try:
            listing = {
                "versions": [self._version_entry(model, v) for v in self.registry.list_versions(model)],
                "aliases": self.registry.list_aliases(model),
                "registry_error": None,
                "listed_at": time.time(),
            }
        except RegistryError as exc:
            stale = self._last.get(model, {"versions": [], "aliases": {}, "listed_at": None})
            return {**stale, "registry_error": str(exc)}
        self._last[model] = listing
        return listing
