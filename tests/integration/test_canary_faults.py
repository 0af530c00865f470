"""A canary that fails, crawls or misses its deadlines, against real servers in the default layout
(two workers): production answers what a failing canary could not, and the watch rolls the canary
back for the rule it broke (server errors, p99 latency, deadline misses), with the numbers.

The canaries are the shipped production cnn with a fault built into its graph
(`support/faulty.py`): each loads, warms up and passes its golden check like any version, then
fails or crawls on real digits -- what a check at load time cannot catch and the watch must.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from support.cli import digitserve, succeeded
from support.faulty import Fault, publish_faulty
from support.registries import copy_shipped
from support.server import CANARY_ENV, metric, model_info, running_server, wait_until
from support.steady import Answer, steady_load

from digitserve.data import load_mnist
from digitserve.registry import ModelRegistry

pytestmark = pytest.mark.slow
ENV = CANARY_ENV
# each worker judges the client networks it holds, three at least: with six kept-alive
# connections one worker holds three whichever way the kernel splits them
CLIENTS = 6


def canary_of(tmp_path: Path, fault: Fault) -> ModelRegistry:
    """The shipped production cnn as v1 (production) and v2, the same graph with `fault`, as canary."""
    registry = copy_shipped(tmp_path / "registry")
    assert publish_faulty(registry, "cnn", 1, fault) == 2
    args = ["registry", "promote", "cnn", "2", "--alias", "canary", "--force", "--reason", f"test: a {fault} canary"]
    succeeded(digitserve(*args, "--registry", registry.uri))
    return registry


def rollbacks(registry: ModelRegistry) -> list[dict[str, object]]:
    return [e for e in registry.events("cnn", "canary") if e["action"] == "rollback"]


def rolled_back(registry: ModelRegistry, url: str, answers: list[Answer]) -> tuple[dict[str, object], int]:
    """Wait for the one rollback and for this server to stop routing to the canary; the event and
    how many answers had come by then."""
    wait_until(lambda: rollbacks(registry), 60, "an automatic rollback")
    wait_until(lambda: model_info(url, "cnn")["rollouts"]["canary"]["version"] is None, 10, "no canary routed")
    time.sleep(2.5)  # two polls: every worker has read the moved alias, and what it queued on the canary is answered
    stopped = len(answers)
    wait_until(lambda: len(answers) > stopped + 200, 30, "200 more answers after the rollback")
    [event] = rollbacks(registry)
    assert (event["from"], event["to"]) == (2, 1)
    canary = registry.get_alias("cnn", "canary")
    assert canary is not None and (canary.version, canary.retired) == (1, True)
    return event, stopped


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    test = load_mnist("test")
    return test.images[:200], test.labels[:200]


def test_a_failing_canary_is_answered_by_production_and_rolled_back_for_its_errors(
    tmp_path: Path, digits: tuple[np.ndarray, np.ndarray]
) -> None:
    """Every forward pass of the canary raises: the clients it was routed to get production's
    answer (never a 5xx), each failure is counted against the canary, and it is rolled back for
    server errors."""
    registry = canary_of(tmp_path, "failing")
    env = {**ENV, "DIGITSERVE_REGISTRY": registry.uri}
    with running_server(env) as url, steady_load([url], digits[0], clients=CLIENTS, client_networks=True) as answers:
        event, _ = rolled_back(registry, url, answers)
        failures = metric(url, "digitserve_routed_failures_total", alias="canary", version="2", kind="error")
    assert Counter(a.status for a in answers) == {200: len(answers)}, "no client saw the canary's failures"
    assert {(a.version, a.alias) for a in answers} == {(1, "production")}, "every answer is production's"
    assert str(event["reason"]).startswith("automatic rollback: server errors: 100.0% of the median client network")
    evidence = event["evidence"]
    assert isinstance(evidence, dict) and evidence["reason"].startswith("server errors")
    assert failures >= 1, "the failures are counted in /metrics (on the worker that answered the scrape)"


def test_a_slow_canary_is_rolled_back_for_its_p99(tmp_path: Path, digits: tuple[np.ndarray, np.ndarray]) -> None:
    """Each canary batch takes ~0.15 s more than production's: its answers are right and within the
    deadline, but its p99 is past 3x production's plus 50 ms, and it is rolled back for latency."""
    registry = canary_of(tmp_path, "slow")
    env = {**ENV, "DIGITSERVE_REGISTRY": registry.uri}
    with running_server(env) as url, steady_load([url], digits[0], clients=CLIENTS, client_networks=True) as answers:
        event, stopped = rolled_back(registry, url, answers)
    assert Counter(a.status for a in answers) == {200: len(answers)}, "a slow canary is not an error"
    assert any(a.alias == "canary" and a.version == 2 for a in answers[:stopped]), "the canary answered"
    assert {(a.version, a.alias) for a in answers[stopped:]} == {(1, "production")}
    assert "automatic rollback: p99 latency" in str(event["reason"]), event["reason"]


def test_a_canary_past_its_deadlines_is_rolled_back_for_the_misses(
    tmp_path: Path, digits: tuple[np.ndarray, np.ndarray]
) -> None:
    """With a 0.1 s deadline the slow canary misses nearly every one (504, as any prediction past
    its deadline), production far fewer: it is rolled back for deadline misses. Production under
    this load may miss a 0.1 s deadline too (504) or refuse on arrival what it could not answer
    in time (503); no other status is allowed, and after the rollback every answer is production's."""
    registry = canary_of(tmp_path, "slow")
    env = {**ENV, "DIGITSERVE_REGISTRY": registry.uri, "DIGITSERVE_REQUEST_TIMEOUT_S": "0.1"}
    with running_server(env) as url, steady_load([url], digits[0], clients=CLIENTS, client_networks=True) as answers:
        event, stopped = rolled_back(registry, url, answers)
    before, after = Counter(a.status for a in answers[:stopped]), Counter(a.status for a in answers[stopped:])
    assert set(before) | set(after) <= {200, 503, 504} and before[504] > 0, (before, after)
    share = {phase: counts[504] / counts.total() for phase, counts in (("before", before), ("after", after))}
    assert share["after"] < share["before"] / 4, share  # the misses were the canary's
    assert {(a.version, a.alias) for a in answers[stopped:] if a.status == 200} == {(1, "production")}
    assert "automatic rollback: deadline misses" in str(event["reason"]), event["reason"]
