"""Canary and shadow rollouts against real servers on one registry (docs/rollouts.md).

The registry holds the shipped cnn as v1 (production), a `--smoke` model as v2 -- a deliberately
bad candidate that disagrees with production on many inputs -- and v3, v1's weights nudged by
1e-4: a good candidate that answers as production does.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from support.cli import digitserve, error_line, succeeded
from support.registries import add_version_from, copy_shipped, png_b64, publish_variant
from support.server import (
    DIGITSERVE,
    metric,
    model_info,
    running_server,
    start_server,
    stop_server,
    wait_for_polls,
    wait_until,
)
from support.steady import steady_load

from digitserve.data import load_mnist
from digitserve.registry import ModelRegistry
from digitserve.registry.evidence import Evidence

pytestmark = pytest.mark.slow  # real servers under load
ROLLBACK_WITHIN_S = 30.0  # at this load (see docs/rollouts.md); measured 2-6 s
CANARY_ENV = {
    "DIGITSERVE_MODELS": "cnn",
    "DIGITSERVE_POLL_SECONDS": "1",
    "DIGITSERVE_CANARY_ALIAS": "canary",
    "DIGITSERVE_CANARY_PERCENT": "50",
    "DIGITSERVE_CANARY_COMPARE_PERCENT": "50",
    "DIGITSERVE_CANARY_MIN_COMPARED": "40",
    "DIGITSERVE_CANARY_WINDOW_S": "30",
    "FORWARDED_ALLOW_IPS": "127.0.0.1",  # the test's clients say which network they are (steady_load)
}


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory, smoke_trained: Path) -> Path:
    root = tmp_path_factory.mktemp("template")
    registry = copy_shipped(root)
    assert add_version_from(smoke_trained, registry, "cnn", 1) == 2  # v2: bad, train.py --smoke
    assert publish_variant(registry, "cnn", 1) == 3  # v3: good
    return root


@pytest.fixture
def registry(template: Path, tmp_path: Path) -> ModelRegistry:
    shutil.copytree(template, tmp_path / "registry")
    return ModelRegistry.open(str(tmp_path / "registry"))


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    return load_mnist("test").images[:200]


def place(registry: ModelRegistry, alias: str, version: int) -> None:
    """Put a candidate on a rollout alias (forced: the test's bad candidate would not pass the gate)."""
    why = f"test: v{version} as {alias}"
    succeeded(
        digitserve(
            "registry",
            "promote",
            "cnn",
            str(version),
            "--alias",
            alias,
            "--force",
            "--reason",
            why,
            "--registry",
            registry.uri,
        )
    )


def rollbacks(registry: ModelRegistry) -> list[dict[str, object]]:
    return [e for e in registry.events("cnn", "canary") if e["action"] == "rollback"]


@pytest.mark.solo  # comparisons run only on idle CPU
def test_a_bad_canary_is_rolled_back_once_by_two_servers(registry: ModelRegistry, digits: np.ndarray) -> None:
    place(registry, "canary", 2)
    env = {**CANARY_ENV, "DIGITSERVE_REGISTRY": registry.uri}
    servers = [start_server(env), start_server(env)]
    urls = [url for _, url in servers]
    try:
        with steady_load(urls, digits, clients=3, client_networks=True) as answers:
            wait_until(lambda: any(a.alias == "canary" for a in answers), 30, "the canary answers its share")
            started = time.monotonic()
            wait_until(lambda: rollbacks(registry), ROLLBACK_WITHIN_S, "an automatic rollback")
            took = time.monotonic() - started
            wait_until(
                lambda: all(model_info(u, "cnn")["rollouts"]["canary"]["version"] is None for u in urls),
                10,
                "both servers stop routing to the canary",
            )
            stopped_at = time.monotonic()  # what is sent from now on reaches no canary
            wait_until(lambda: sum(a.sent_at > stopped_at for a in answers) > 100, 30, "answers after the rollback")
            place(registry, "production", 3)  # a later promotion must not bring the retired canary back
            wait_until(lambda: all(model_info(u, "cnn")["serving"]["version"] == 3 for u in urls), 30, "v3 serves")
            for u in urls:
                wait_for_polls(u, "cnn")
            assert all(model_info(u, "cnn")["rollouts"]["canary"]["version"] is None for u in urls)
    finally:
        assert all(stop_server(process) == 0 for process, _ in servers)

    assert Counter(a.status for a in answers) == {200: len(answers)}, "no client saw an error"
    assert {a.version for a in answers if a.alias == "canary"} == {2}
    after = {(a.version, a.alias) for a in answers if a.sent_at > stopped_at}
    assert after <= {(1, "production"), (3, "production")}
    [event] = rollbacks(registry)  # two servers judged it: exactly one move, one event
    assert (event["from"], event["to"]) == (2, 1)
    canary = registry.get_alias("cnn", "canary")
    assert canary is not None and (canary.version, canary.retired) == (1, True), "parked: it routes nothing"
    assert str(event["reason"]).startswith("automatic rollback: agreement with production")
    evidence = event["evidence"]
    assert evidence["compared"] >= 40 and evidence["agreed"] / evidence["compared"] < 0.97
    assert str(event["actor"]).startswith("digitserve server ")
    assert Evidence.gather(registry, "cnn", "canary", 2).rolled_back
    line = error_line(digitserve("registry", "promote", "cnn", "--from", "canary", "--registry", registry.uri))
    assert "cnn/canary is rolled back: automatic rollback: agreement with production" in line
    print(f"rolled back {took:.1f} s after the canary first answered")


@pytest.mark.solo  # comparisons run only on idle CPU
def test_a_good_canary_survives_and_is_promoted_from_its_evidence(registry: ModelRegistry, digits: np.ndarray) -> None:
    place(registry, "canary", 3)
    env = {**CANARY_ENV, "DIGITSERVE_REGISTRY": registry.uri, "DIGITSERVE_CANARY_COMPARE_PERCENT": "100"}
    with running_server(env) as url, steady_load([url], digits, clients=4, client_networks=True) as answers:
        wait_until(lambda: Evidence.gather(registry, "cnn", "canary", 3).compared >= 200, 90, "200 compared inputs")
        check_routing(url)
        evidence = Evidence.gather(registry, "cnn", "canary", 3)
        assert evidence.agreement is not None and evidence.agreement >= 0.99 and not rollbacks(registry)
        live = model_info(url, "cnn")["rollouts"]["canary"]
        assert live["version"] == 3 and live["live"]["canary"]["requests"] > 0
        assert metric(url, "digitserve_routed_latency_seconds_count", alias="canary", version="3") > 0
        assert metric(url, "digitserve_model_version_info", alias="canary", version="3") == 1

        uri = registry.uri
        watched = succeeded(digitserve("registry", "watch", "cnn", "--timeout", "30", "--registry", uri))
        assert watched.strip().splitlines()[-1].endswith("; enough evidence"), watched  # what a pipeline waits on
        line = error_line(
            digitserve("registry", "promote", "cnn", "--from", "canary", "--min-compared", "1000000", "--registry", uri)
        )
        assert "not enough live evidence to promote" in line and "at least 1000000 needed" in line
        out = succeeded(digitserve("registry", "promote", "cnn", "--from", "canary", "--registry", uri))
        assert "cnn/production -> v3 (was v1)" in out and "enough evidence" in out
        wait_until(lambda: model_info(url, "cnn")["serving"]["version"] == 3, 30, "the server follows production")
        wait_until(lambda: model_info(url, "cnn")["rollouts"]["canary"]["version"] is None, 10, "no canary left")
        moved_at = time.monotonic()  # what is sent from now on is answered by v3 as production
        wait_until(lambda: sum(a.sent_at > moved_at for a in answers) > 50, 30, "answers after the promotion")
        rolled_back_at = time.monotonic()
        succeeded(digitserve("registry", "rollback", "cnn", "--registry", uri))  # production back to v1
        wait_until(lambda: model_info(url, "cnn")["serving"]["version"] == 1, 30, "v1 serves again")
        wait_for_polls(url, "cnn")  # the canary alias still names v3, but it is older than production's move
        assert model_info(url, "cnn")["rollouts"]["canary"]["version"] is None
    assert Counter(a.status for a in answers) == {200: len(answers)}
    assert {(a.version, a.alias) for a in answers if moved_at < a.sent_at < rolled_back_at} == {(3, "production")}
    assert {a.alias for a in answers if a.sent_at > rolled_back_at} == {"production"}
    event = registry.events("cnn", "production")[-2]  # the promotion (the last one is the rollback)
    assert event["to"] == 3 and event["gate"]["passed"] is True
    assert event["evidence"]["from_alias"] == "canary" and event["evidence"]["compared"] >= 200


def check_routing(url: str) -> None:
    """Pinned requests are never diverted; a sticky key keeps its side; without one both sides answer."""
    seven = png_b64(load_mnist("test").images[0])

    def ask(query: str = "", sticky: str | None = None) -> tuple[int, str | None]:
        headers = {"X-Digitserve-Sticky": sticky} if sticky else {}
        r = httpx.post(f"{url}/v1/models/cnn/predict{query}", json={"images": [seven]}, headers=headers, timeout=30)
        assert r.status_code == 200, r.text
        return r.json()["version"], r.json()["alias"]

    assert {ask("?version=1") for _ in range(20)} == {(1, None)}
    assert {ask("?alias=production") for _ in range(20)} == {(1, "production")}
    for user in ("alice", "bob", "carol"):
        assert len({ask(sticky=user) for _ in range(10)}) == 1, f"{user} flipped between versions"
    sides = {ask(sticky=f"user-{i}") for i in range(40)}
    assert sides == {(1, "production"), (3, "canary")}


@pytest.mark.solo  # comparisons run only on idle CPU
def test_a_shadow_runs_unseen_and_is_shed_first_under_overload(registry: ModelRegistry, digits: np.ndarray) -> None:
    place(registry, "shadow", 2)
    env = {
        "DIGITSERVE_REGISTRY": registry.uri,
        "DIGITSERVE_MODELS": "cnn",
        "DIGITSERVE_POLL_SECONDS": "1",
        "DIGITSERVE_SHADOW_ALIAS": "shadow",
        "DIGITSERVE_SHADOW_PERCENT": "100",
        "DIGITSERVE_DISAGREEMENT_SAMPLES": "10",
        "DIGITSERVE_MAX_CONCURRENT_REQUESTS": "32",
    }
    with running_server(env) as url:
        wait_until(lambda: model_info(url, "cnn")["rollouts"]["shadow"]["version"] == 2, 30, "the shadow is loaded")
        with steady_load([url], digits, clients=2, pause_s=0.05) as answers:
            wait_until(lambda: compared(url) >= 100, 60, "100 shadow comparisons")
        assert {(a.status, a.version, a.alias) for a in answers} == {(200, 1, "production")}, "production answers"
        shadow = model_info(url, "cnn")["rollouts"]["shadow"]
        pair = shadow["agreement"]["v1-v2"]
        assert pair["compared"] >= 100 and pair["agreed"] < pair["compared"]
        assert sum(n for n, _ in pair["per_class"].values()) == pair["compared"]
        light = compared(url) / len(answers)
        assert light > 0.8, f"with spare capacity nearly every answer is compared ({light:.0%})"

        before_compared, before_dropped = compared(url), dropped(url)
        answered = overload(url, seconds=4)
        overload_share = (compared(url) - before_compared) / max(answered, 1)
        assert dropped(url) > before_dropped and overload_share < 0.2, (overload_share, answered)
        print(f"shadow compared {light:.0%} of answers with spare capacity, {overload_share:.1%} under overload")

    kept = registry.store.list("disagreements/cnn/v1-v2/")
    assert 1 <= len(kept) <= 10
    assert Evidence.gather(registry, "cnn", "shadow", 2).compared >= 100
    out = succeeded(digitserve("registry", "disagreements", "cnn", "--registry", registry.uri))
    assert f"v1-v2: {len(kept)} inputs (shadow)" in out


def compared(url: str) -> float:
    return metric(url, "digitserve_rollout_compared_total", kind="shadow")


def dropped(url: str) -> float:
    return metric(url, "digitserve_rollout_comparisons_dropped_total", kind="shadow")


def overload(url: str, seconds: float) -> int:
    """64 clients back to back against a cap of 32 predictions in progress; returns the 200s."""
    body = {"images": [png_b64(load_mnist("test").images[1])]}
    statuses: Counter[int] = Counter()

    def client() -> None:
        end = time.monotonic() + seconds
        with httpx.Client(base_url=url, timeout=30) as c:
            while time.monotonic() < end:
                statuses[c.post("/v1/models/cnn/predict", json=body).status_code] += 1

    with ThreadPoolExecutor(64) as pool:
        futures = [pool.submit(client) for _ in range(64)]
    for future in futures:
        future.result()  # a client that failed without an answer (a reset, a timeout) fails the test
    assert set(statuses) <= {200, 503}, statuses
    return statuses[200]


ROLLOUT_SH = Path(__file__).resolve().parents[2] / "scripts" / "rollout.sh"


def rollout_sh(registry: ModelRegistry, *args: str) -> subprocess.CompletedProcess[str]:
    """`scripts/rollout.sh ARGS` as the rollout workflow runs it: the registry in the environment."""
    env = {
        **os.environ,
        "DIGITSERVE_REGISTRY": registry.uri,
        "DIGITSERVE_BIN": str(DIGITSERVE),
        "DIGITSERVE_ACTOR": "ci",
    }
    return subprocess.run([str(ROLLOUT_SH), *args], capture_output=True, text=True, timeout=600, env=env)


@pytest.mark.solo  # comparisons run only on idle CPU
def test_the_rollout_script_promotes_a_good_canary_from_its_evidence(
    registry: ModelRegistry, digits: np.ndarray
) -> None:
    """scripts/rollout.sh: through the gate to canary, wait for the servers' evidence, promote."""
    env = {**CANARY_ENV, "DIGITSERVE_REGISTRY": registry.uri, "DIGITSERVE_CANARY_COMPARE_PERCENT": "100"}
    # a light load: the evidence it needs comes in seconds, and the gate's two runs keep a core
    with running_server(env) as url, steady_load([url], digits, 4, 0.1, client_networks=True) as answers:
        done = rollout_sh(registry, "cnn", "3", "120")
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        wait_until(lambda: model_info(url, "cnn")["serving"]["version"] == 3, 30, "the server follows production")
    assert "cnn/canary -> v3" in done.stdout and "cnn/production -> v3 (was v1)" in done.stdout, done.stdout
    assert "enough evidence" in done.stdout
    assert registry.resolve_alias("cnn", "production") == 3
    actions = [(e["action"], e["to"]) for e in registry.events("cnn")]
    assert ("promote", 3) in actions and not rollbacks(registry)
    assert {a.status for a in answers} == {200}


def test_the_rollout_script_retires_a_canary_that_gets_no_evidence(registry: ModelRegistry) -> None:
    """With no server watching, the evidence never comes: the script retires the canary and fails."""
    done = rollout_sh(registry, "cnn", "3", "2")
    assert done.returncode != 0
    assert "not enough evidence after 2 s" in done.stderr, done.stderr
    canary = registry.get_alias("cnn", "canary")
    assert canary is not None and canary.retired and canary.version == 1, canary
    assert registry.events("cnn", "canary")[-1]["action"] == "retire"
    assert registry.resolve_alias("cnn", "production") == 1
