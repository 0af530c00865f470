"""Prometheus metrics: what the server counts, and how a request's answer is counted.

Each app owns its own `CollectorRegistry` (`ServiceMetrics.collectors`), so several apps in one
process (tests) never share counters. With several worker processes (`PROMETHEUS_MULTIPROC_DIR`
set by `digitserve serve --workers N`), every worker writes its samples to that folder and
`/metrics` on any worker renders the sum over all of them: one truthful view.

Routes are labelled by their template (`/v1/models/{model}/predict`) or "unmatched", never by
the raw path, so a client cannot grow the label set.
"""

from __future__ import annotations

from collections.abc import Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Metric, generate_latest, multiprocess
from starlette.routing import BaseRoute, Match
from starlette.types import Scope

from digitserve.config import metrics_shared
from digitserve.registry.evidence import PerClass
from digitserve.serving.http.routes import prediction_of
from digitserve.serving.observability.answers import AnswerMetrics

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
LAG_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class ServiceMetrics:
    def __init__(self, drift_window: int = 1000, per_request: bool = True) -> None:
        self.collectors = CollectorRegistry()
        self.shared = metrics_shared()
        self.per_request = per_request  # off: requests and answers go uncounted (benchmarks only)
        self.answers = AnswerMetrics(self.collectors, drift_window)
        self._served: dict[tuple[str, str], int] = {}
        self._http_metrics(self.collectors)
        self._model_metrics(self.collectors)
        self._feedback_metrics(self.collectors)
        self._rollout_metrics(self.collectors)

    def _http_metrics(self, r: CollectorRegistry) -> None:
        self.requests = Counter(
            "digitserve_requests",
            "HTTP requests by route, method and status",
            ["route", "method", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "digitserve_request_latency_seconds", "HTTP request latency", ["route"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.refusals = Counter(
            "digitserve_refusals",
            "4xx and 5xx answers of the app, by route and the error code of their body",
            ["route", "code"],
            registry=r,
        )
        self.in_progress = Gauge(
            "digitserve_requests_in_progress",
            "predictions admitted and not yet answered (sampled each second; summed over workers)",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.refused_connections = Counter(
            "digitserve_protocol_refusals",
            "answers from the HTTP protocol before any request reached the app, by reason (serving/http/protocol.py)",
            ["reason"],
            registry=r,
        )
        self.workers = Gauge(
            "digitserve_workers",
            "server processes answering (summed over workers)",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.workers.set(1)
        self.loop_lag = Histogram(
            "digitserve_event_loop_lag_seconds",
            "how much later than asked the event loop ran a timer (observability/loop.py)",
            buckets=LAG_BUCKETS,
            registry=r,
        )
        self.loop_lag_max = Gauge(
            "digitserve_event_loop_lag_max_seconds",
            "the worst event-loop lag since start (the worst worker's)",
            registry=r,
            multiprocess_mode="max",
        )

    def _model_metrics(self, r: CollectorRegistry) -> None:
        self.images = Counter("digitserve_images", "images predicted", ["model", "version"], registry=r)
        self.queue_depth = Gauge(
            "digitserve_queue_depth",
            "images waiting for a forward pass",
            ["model", "version"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.batch_size = Histogram(
            "digitserve_batch_size", "images per forward pass", ["model"], buckets=BATCH_BUCKETS, registry=r
        )
        self.model_version = Gauge(
            "digitserve_model_version_info",
            "1 for the version an alias serves (in any worker)",
            ["model", "version", "alias"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.reload_failures = Counter(
            "digitserve_model_reload_failures", "versions refused on load", ["model", "step"], registry=r
        )
        self.reload_error = Gauge(
            "digitserve_model_reload_error",
            "1 while the last reload attempt failed",
            ["model"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.swaps = Counter("digitserve_model_swaps", "hot-swaps to a new version", ["model"], registry=r)
        self.registry_up = Gauge(
            "digitserve_registry_reachable",
            "1 if the last registry poll worked",
            registry=r,
            multiprocess_mode="livemin",
        )

    def _feedback_metrics(self, r: CollectorRegistry) -> None:
        self.feedback = Counter(
            "digitserve_feedback",
            "feedback samples received, by the version they are about and whether its answer was right",
            ["model", "version", "verdict"],
            registry=r,
        )
        self.feedback_spooled = Gauge(
            "digitserve_feedback_spooled",
            "feedback samples on local disk waiting for the registry",
            registry=r,
            multiprocess_mode="livemax",  # the workers share one spool folder
        )
        self.feedback_written = Counter(
            "digitserve_feedback_written", "feedback samples moved from the spool into the registry", registry=r
        )

    def _rollout_metrics(self, r: CollectorRegistry) -> None:
        self.routed_latency = Histogram(
            "digitserve_routed_latency_seconds",
            "from arrival to answer of predictions, by the alias that routed them and the version that answered",
            ["model", "alias", "version"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.rollout_failures = Counter(
            "digitserve_routed_failures",
            "canary failures (answered by production instead) and deadline misses, by alias and version",
            ["model", "alias", "version", "kind"],
            registry=r,
        )
        pair = ["model", "kind", "production_version", "candidate_version", "production_answer"]
        self.compared_answers = Counter(
            "digitserve_rollout_compared",
            "inputs answered by production and a candidate (shadow, canary)",
            pair,
            registry=r,
        )
        self.agreed_answers = Counter(
            "digitserve_rollout_agreed", "compared inputs where production and the candidate agree", pair, registry=r
        )
        self.dropped_comparisons = Counter(
            "digitserve_rollout_comparisons_dropped",
            "comparisons not made: busy or queue (no spare capacity), backlog, failed",
            ["kind", "reason"],
            registry=r,
        )
        self.canary_paused = Counter(
            "digitserve_canary_paused",
            "requests the canary's share sent to production while its comparisons lagged (no evidence, no exposure)",
            registry=r,
        )
        self.rollbacks = Counter(
            "digitserve_canary_rollbacks",
            "canaries this process retired, by the outcome of the alias move",
            ["model", "outcome"],
            registry=r,
        )

    def routed(self, model: str, alias: str, version: int, latency_s: float) -> None:
        self.routed_latency.labels(model, alias or "pinned", str(version)).observe(latency_s)

    def rollout_failure(self, model: str, alias: str, version: int, kind: str) -> None:
        self.rollout_failures.labels(model, alias or "pinned", str(version), kind).inc()

    def compared(self, model: str, kind: str, production: int, candidate: int, per_class: PerClass) -> None:
        """A comparison's counts, per production answer."""
        for answer, tally in per_class.items():
            labels = (model, kind, str(production), str(candidate), answer)
            self.compared_answers.labels(*labels).inc(tally.compared)
            self.agreed_answers.labels(*labels).inc(tally.agreed)

    def canary_rollback(self, model: str, outcome: str) -> None:
        self.rollbacks.labels(model, outcome).inc()

    def count_feedback(self, model: str, version: int, right: bool) -> None:
        self.feedback.labels(model, str(version), "right" if right else "wrong").inc()

    def clear_served(self, model: str, alias: str) -> None:
        """No version serves `alias` in this worker any more (a retired canary or shadow)."""
        previous = self._served.pop((model, alias), None)
        if previous is None:
            return
        if self.shared:
            self.model_version.labels(model, str(previous), alias).set(0)
        else:
            self.model_version.remove(model, str(previous), alias)

    def _view(self) -> CollectorRegistry:
        """This process's collectors, or with several workers the sum over all of them."""
        if not self.shared:
            return self.collectors
        merged = CollectorRegistry()
        multiprocess.MultiProcessCollector(merged)
        return merged

    def render(self) -> bytes:
        self.answers.flush()  # this worker's answers up to now (the others' within a second)
        return generate_latest(self._view())

    def families(self) -> list[Metric]:
        self.answers.flush()
        return list(self._view().collect())

    def set_served(self, model: str, alias: str, version: int) -> None:
        """Exactly one version-info series per (model, alias) and worker: the one serving now."""
        previous = self._served.get((model, alias))
        if previous is not None and previous != version:
            if self.shared:  # a multiprocess sample cannot be removed: it reads 0 from now on
                self.model_version.labels(model, str(previous), alias).set(0)
            else:
                self.model_version.remove(model, str(previous), alias)
        self._served[(model, alias)] = version
        self.model_version.labels(model, str(version), alias).set(1)


def route_template(routes: Sequence[BaseRoute], scope: Scope) -> str:
    """A request's route as a label: its template, never the raw path (a client cannot grow the set)."""
    route = scope.get("route")  # set by the router once it matched
    if route is not None and isinstance(getattr(route, "path", None), str):
        return str(route.path)
    prediction = prediction_of(scope)  # refused at the edge (413, 503) before routing
    if prediction is not None:
        return prediction.template
    for candidate in routes:
        match, _ = candidate.matches(scope)
        path = getattr(candidate, "path", None)
        if match == Match.FULL and isinstance(path, str):
            return path
    return "unmatched"


KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
