"""The server's own numbers for the models pages' live view, from its Prometheus metrics (the sum
over every worker). Counters and histogram buckets go out as they are; the page turns two
readings a few seconds apart into requests per second, p50/p99 and the mean batch size."""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CollectorRegistry, multiprocess

from digitserve.serving.metrics import ServiceMetrics

WANTED = {
    "digitserve_routed_latency_seconds",
    "digitserve_images",
    "digitserve_batch_size",
    "digitserve_queue_depth",
    "digitserve_workers",
}


def _families(metrics: ServiceMetrics) -> list[Any]:
    if not metrics.shared:
        return list(metrics.collectors.collect())
    merged = CollectorRegistry()
    multiprocess.MultiProcessCollector(merged)
    return list(merged.collect())


def live_numbers(metrics: ServiceMetrics) -> dict[str, Any]:
    models: dict[str, dict[str, Any]] = {}
    workers = 1.0

    def model(name: str) -> dict[str, Any]:
        return models.setdefault(name, {"routes": {}, "images": {}, "queue": {}, "batch": {"sum": 0.0, "count": 0.0}})

    for family in _families(metrics):
        if family.name not in WANTED:
            continue
        for s in family.samples:
            labels, value = s.labels, float(s.value)
            if family.name == "digitserve_workers":
                workers = value
            elif family.name == "digitserve_routed_latency_seconds":
                key = f"{labels['alias']}:{labels['version']}"
                route = model(labels["model"])["routes"].setdefault(
                    key,
                    {
                        "alias": labels["alias"],
                        "version": int(labels["version"]),
                        "count": 0.0,
                        "sum": 0.0,
                        "buckets": [],
                    },
                )
                if s.name.endswith("_bucket"):
                    route["buckets"].append([labels["le"], value])
                elif s.name.endswith("_count"):
                    route["count"] = value
                elif s.name.endswith("_sum"):
                    route["sum"] = value
            elif family.name == "digitserve_images" and s.name.endswith("_total"):
                model(labels["model"])["images"][labels["version"]] = value
            elif family.name == "digitserve_queue_depth":
                model(labels["model"])["queue"][labels["version"]] = value
            elif family.name == "digitserve_batch_size" and s.name.endswith(("_sum", "_count")):
                model(labels["model"])["batch"][s.name.rsplit("_", 1)[1]] = value
    return {"at": time.time(), "workers": workers, "models": models}
