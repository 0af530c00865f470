"""The server's own numbers for the models pages' live view, from its Prometheus metrics (the sum
over every worker): counters and histogram buckets go out as they are, and the page turns two
readings a few seconds apart into requests per second, p50/p99 and the mean batch size. Which
version each alias serves (canary and shadow too) and their agreement come from the same shared
metrics, so every worker answers alike."""

from __future__ import annotations

import logging
import time
from typing import Any

from digitserve.registry import RegistryError
from digitserve.serving.browsing.catalog import Catalog
from digitserve.serving.inference.versions import ModelVersions
from digitserve.serving.observability.metrics import ServiceMetrics

log = logging.getLogger(__name__)

WANTED = {
    "digitserve_routed_latency_seconds",
    "digitserve_images",
    "digitserve_batch_size",
    "digitserve_queue_depth",
    "digitserve_workers",
    "digitserve_model_version_info",
    "digitserve_rollout_compared",
    "digitserve_rollout_agreed",
}


def _empty() -> dict[str, Any]:
    return {"routes": {}, "images": {}, "queue": {}, "batch": {"sum": 0.0, "count": 0.0}, "aliases": {}, "compared": {}}


def _latency(entry: dict[str, Any], name: str, labels: dict[str, str], value: float) -> None:
    key = f"{labels['alias']}:{labels['version']}"
    empty = {"alias": labels["alias"], "version": int(labels["version"]), "count": 0.0, "sum": 0.0, "buckets": []}
    route = entry["routes"].setdefault(key, empty)
    if name.endswith("_bucket"):
        route["buckets"].append([labels["le"], value])
    elif name.endswith(("_count", "_sum")):
        route[name.rsplit("_", 1)[1]] = value


def _sample(entry: dict[str, Any], family: str, name: str, labels: dict[str, str], value: float) -> None:
    """One metrics sample into the model's entry."""
    if family == "digitserve_routed_latency_seconds":
        _latency(entry, name, labels, value)
    elif family == "digitserve_images" and name.endswith("_total"):
        entry["images"][labels["version"]] = value
    elif family == "digitserve_queue_depth":
        entry["queue"][labels["version"]] = value
    elif family == "digitserve_batch_size" and name.endswith(("_sum", "_count")):
        entry["batch"][name.rsplit("_", 1)[1]] = value
    elif family == "digitserve_model_version_info" and value > 0:
        entry["aliases"][labels["alias"]] = int(labels["version"])
    elif family in ("digitserve_rollout_compared", "digitserve_rollout_agreed") and name.endswith("_total"):
        key = f"{labels['kind']}:v{labels['production_version']}-v{labels['candidate_version']}"
        pair = entry["compared"].setdefault(key, {"compared": 0.0, "agreed": 0.0})
        pair["compared" if family.endswith("compared") else "agreed"] += value


def live_numbers(metrics: ServiceMetrics) -> dict[str, Any]:
    models: dict[str, dict[str, Any]] = {}
    workers = 1.0
    for family in metrics.families():
        if family.name not in WANTED:
            continue
        for s in family.samples:
            if family.name == "digitserve_workers":
                workers = float(s.value)
            elif "model" in s.labels:
                entry = models.setdefault(s.labels["model"], _empty())
                _sample(entry, family.name, s.name, s.labels, float(s.value))
    return {"at": time.time(), "workers": workers, "models": models}


def live_view(metrics: ServiceMetrics, versions: ModelVersions, catalog: Catalog) -> dict[str, Any]:
    """The metrics, and per served model its version and the feedback about it (no listing)."""
    numbers = live_numbers(metrics)
    try:
        catalog.feedback.refresh()  # at most every few seconds, a bounded number of reads
    except RegistryError as exc:  # a registry away leaves the last feedback figures
        log.info("feedback figures not refreshed: %s", exc)
    for name, state in versions.states.items():
        served = state.served.version if state.served else None
        feedback = catalog.feedback.by_version(name).get(served) if served else None
        entry = numbers["models"].setdefault(name, {"routes": {}, "batch": {"sum": 0.0, "count": 0.0}, "queue": {}})
        entry.update(serving=served, alias=versions.alias, feedback=feedback)
    return numbers
