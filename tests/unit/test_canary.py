"""The canary's judgement, its sliding window, sticky routing and the evidence sums (no server)."""

from __future__ import annotations

import pytest

from digitserve.config import Settings
from digitserve.registry import ModelRegistry
from digitserve.registry.evidence import Evidence, publish_evidence
from digitserve.serving.rollouts import watch as canary_module
from digitserve.serving.rollouts.compare import Agreement
from digitserve.serving.rollouts.watch import CanaryWatch, Window, sticky_side

SETTINGS = Settings(canary_min_requests=10, canary_min_compared=10, canary_window_s=60).canary


NETS = ("10.0.1.0/24", "10.0.2.0/24", "10.0.3.0/24")


def watch_with(canary_ms: float = 5, production_ms: float = 5, errors: float = 0, misses: float = 0) -> CanaryWatch:
    """20 answers on each side, and the canary's errors and misses, spread over three client networks."""
    watch = CanaryWatch(1, 2, 60)
    for i in range(20):
        watch.production.add(production_ms / 1000, client=NETS[i % 3])
        watch.canary.add(canary_ms / 1000, client=NETS[i % 3])
    for i in range(int(errors)):
        watch.canary.add(None, error=True, client=NETS[i % 3])
    for i in range(int(misses)):
        watch.canary.add(None, miss=True, client=NETS[i % 3])
    return watch


def test_a_canary_like_production_is_kept() -> None:
    watch = watch_with()
    for net in NETS:
        watch.canary.compare(net, 20, 20)
    assert watch.judge(SETTINGS) is None


@pytest.mark.parametrize(
    ("made", "words"),
    [
        (
            {"errors": 3},
            "server errors: 12.5% of the median client network's canary requests (3 of 23 in all; limit 2.0%)",
        ),
        ({"misses": 3}, "deadline misses: 12.5% of the median network's canary requests, production 0.0%"),
        (
            {"canary_ms": 400, "production_ms": 5},
            "p99 latency 400.0 ms, production 5.0 ms (the median client network's; limit 65.0 ms; "
            "too many requests over it from 3 of 3 client networks)",
        ),
    ],
)
def test_a_canary_past_a_threshold_is_judged_with_its_numbers(made: dict[str, float], words: str) -> None:
    watch = watch_with(**made)  # made here: a window only holds what is younger than it
    assert watch.judge(SETTINGS) == words


def test_one_stall_of_the_machine_is_not_a_slow_canary() -> None:
    """Early in a window each network's p99 is its slowest request: one stall that delays the
    request each network has in flight on the canary puts every such p99 past the limit, yet
    it is one slow request each, as a p99 at the limit would leave. A second stall in the same
    window, with so few requests, is too many; with more requests it takes more."""
    watch = watch_with(canary_ms=5, production_ms=5)  # 20 a side over 3 networks: ~7 each
    for net in NETS:
        watch.canary.add(0.178, client=net)  # the stall of the flaky run that showed this (178 ms)
    assert watch.canary.totals().network_p99_ms > 65  # what the rule alone used to roll back
    assert watch.judge(SETTINGS) is None
    for net in NETS:
        watch.canary.add(0.178, client=net)  # 2 of 9 each: a 1% tail leaves that with a chance of 0.3%
    assert watch.judge(SETTINGS) is None
    for net in NETS:
        watch.canary.add(0.178, client=net)  # 3 of 10
    assert "p99 latency" in str(watch.judge(SETTINGS))


def test_half_the_client_networks_must_be_slow_and_failed_ones_do_not_count() -> None:
    """The median network's p99 is over the limit; the rule also wants at least half of the
    networks with latencies to be slow beyond luck -- one slow network beside two that met one
    stall is not enough, two are; networks whose requests all failed have no latency to show."""
    one = watch_with()
    for n, net in enumerate(NETS):
        for _ in range(3 if n == 0 else 1):
            one.canary.add(0.178, client=net)
    assert one.canary.totals().network_p99_ms > 65 and one.judge(SETTINGS) is None
    two = watch_with()
    for n, net in enumerate(NETS):
        for _ in range(3 if n < 2 else 1):
            two.canary.add(0.178, client=net)
    assert "from 2 of 3 client networks" in str(two.judge(SETTINGS))
    failing = watch_with()
    for n, net in enumerate(NETS):
        for _ in range(3 if n < 2 else 1):
            failing.canary.add(0.178, client=net)
    for k in range(4):  # four more networks, each with only failed requests (errors under the rate limit)
        for _ in range(5):
            failing.canary.add(None, client=f"10.9.{k}.0/24")
    assert failing.canary.slow_networks(0.065) == (2, 3)


def test_a_stall_that_delays_production_too_raises_the_limit_with_it() -> None:
    """A longer stall delays several requests of each network, on both sides: production's p99,
    and with it the limit, rises as much. The same delays on the canary alone roll it back."""
    both, alone = watch_with(), watch_with()
    for watch in (both, alone):
        for net in NETS:
            for _ in range(3):
                watch.canary.add(0.178, client=net)
    for net in NETS:
        for _ in range(3):
            both.production.add(0.178, client=net)
    assert both.judge(SETTINGS) is None
    assert "p99 latency" in str(alone.judge(SETTINGS))


def test_slow_requests_needed_is_the_binomial_tail() -> None:
    from math import comb

    def tail(n: int, k: int) -> float:
        return sum(comb(n, i) * 0.01**i * 0.99 ** (n - i) for i in range(k, n + 1))

    for n in (2, 5, 12, 40, 100, 480, 1000):
        k = canary_module.slow_requests_needed(n)
        assert tail(n, k) <= 0.001 < tail(n, k - 1), n
    assert canary_module.slow_requests_needed(1) == 2  # one request can never show a p99
    assert [canary_module.slow_requests_needed(n) for n in (5, 12, 100, 1000)] == [2, 3, 6, 22]


def test_agreement_counts_only_with_enough_compared_inputs_from_enough_client_networks() -> None:
    watch = watch_with()
    watch.canary.compare(NETS[0], 9, 0)
    assert watch.judge(SETTINGS) is None  # 9 < the 10 needed
    watch.canary.compare(NETS[0], 11, 10)
    assert watch.judge(SETTINGS) is None  # 20 compared, but from one client network (3 needed)
    watch.canary.compare(NETS[1], 10, 5)
    watch.canary.compare(NETS[2], 10, 4)
    assert watch.judge(SETTINGS) == (
        "agreement with production 50.0% (the median of 3 client networks) on 40 compared inputs (minimum 97.0%)"
    )


def test_one_client_network_cannot_fail_a_canary_by_its_own_costly_or_failing_requests() -> None:
    """Slow requests (256 images each) and failures, all from one network, move that network's
    own numbers: the verdict is the median network's."""
    watch = watch_with()
    for _ in range(30):
        watch.canary.add(2.0, client="192.0.2.0/24")  # 2 s each
        watch.canary.add(None, error=True, client="192.0.2.0/24")
    assert watch.judge(SETTINGS) is None
    few = CanaryWatch(1, 2, 60)  # and with fewer than min_clients networks, nothing is judged at all
    for _ in range(60):
        few.production.add(0.005, client=NETS[0])
        few.canary.add(None, error=True, client=NETS[0])
    assert few.judge(SETTINGS) is None


def test_one_client_network_cannot_steer_the_verdict_either_way() -> None:
    """Inputs chosen to disagree (or to agree), sent by one client, move its own rate only; the
    verdict is the median client network's."""
    kept = watch_with()
    for net in NETS:
        kept.canary.compare(net, 20, 20)
    kept.canary.compare("192.0.2.0/24", 500, 0)  # every input it chose disagrees
    assert kept.judge(SETTINGS) is None
    retired = watch_with()
    for net in NETS:
        retired.canary.compare(net, 20, 10)
    retired.canary.compare("192.0.2.0/24", 500, 500)  # easy inputs, to keep a bad canary alive
    assert retired.judge(SETTINGS) is not None and "50.0% (the median of 4 client networks)" in str(
        retired.judge(SETTINGS)
    )


def test_a_canary_without_evidence_waits_for_it() -> None:
    """Past its first answers, a canary answers only as much as its comparisons vouch for -- and
    comparisons from too few client networks, which could never reach a verdict, vouch for nothing."""
    watch = CanaryWatch(1, 2, 60)
    for _ in range(9):
        watch.canary_answered(0.005)
    assert not watch.waiting_for_evidence(SETTINGS)  # fewer than min_requests (10)
    for _ in range(30):
        watch.canary_answered(0.005)
    assert watch.waiting_for_evidence(SETTINGS)  # 39 answers, nothing compared (at most 20 per compared)
    watch.compared(NETS[0], 2, 2)
    watch.compared(NETS[1], 2, 2)
    assert watch.waiting_for_evidence(SETTINGS)  # 4 compared, but from 2 networks: no verdict possible
    watch.compared(NETS[2], 2, 2)
    assert not watch.waiting_for_evidence(SETTINGS)  # 39 <= 20 x 6, from 3 networks


def test_the_window_forgets_what_is_older_than_it(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [100.0]
    monkeypatch.setattr(canary_module.time, "monotonic", lambda: now[0])
    window = Window(60)
    window.add(0.01, error=True)
    now[0] += 30
    window.add(0.02)
    assert window.totals().requests == 2 and window.totals().errors == 1
    now[0] += 35  # the first answer is 65 s old now
    totals = window.totals()
    assert (totals.requests, totals.errors, totals.p99_ms) == (1, 0, 20.0)


def test_a_sticky_key_always_lands_on_the_same_side_and_the_shares_follow_the_percent() -> None:
    assert all(sticky_side("alice", 30) == sticky_side("alice", 30) for _ in range(5))
    share = sum(sticky_side(f"user-{i}", 30) for i in range(5000)) / 5000
    assert 0.27 < share < 0.33
    assert not any(sticky_side(f"user-{i}", 0) for i in range(100))
    assert all(sticky_side(f"user-{i}", 100) for i in range(100))


def test_agreement_is_counted_per_production_answer() -> None:
    agreement = Agreement()
    assert agreement.add(["7", "7", "not_a_digit", "1"], ["7", "1", "not_a_digit", "1"]) == [1]
    assert (agreement.compared, agreement.agreed) == (4, 3)
    assert agreement.per_class == {"7": (2, 1), "not_a_digit": (1, 1), "1": (1, 1)}


def test_evidence_from_every_process_is_summed(tmp_path: object) -> None:
    registry = ModelRegistry.open(f"{tmp_path}/registry")
    a = Evidence(production_version=1, candidate_requests=100, compared=40, agreed=39, per_class={"7": [40, 39]})
    b = Evidence(
        production_version=1,
        candidate_requests=50,
        candidate_errors=1,
        compared=10,
        agreed=10,
        per_class={"7": [5, 5], "1": [5, 5]},
        candidate_p99_ms=12.0,
    )
    publish_evidence(registry, "cnn", "canary", 2, "replica-a", a)
    publish_evidence(registry, "cnn", "canary", 2, "replica-b", b)
    registry.store.put("cnn/rollouts/canary/v2/damaged.json", b'{"compared": -5}')
    total = Evidence.gather(registry, "cnn", "canary", 2)
    assert (total.replicas, total.candidate_requests, total.compared, total.agreed) == (2, 150, 50, 49)
    assert total.per_class == {"7": (45, 44), "1": (5, 5)} and total.candidate_p99_ms == 12.0
    assert total.agreement == 0.98 and total.error_rate == round(1 / 150, 6)
    assert Evidence.gather(registry, "cnn", "canary", 3).replicas == 0
