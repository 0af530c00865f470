"""`digitserve registry ...` run as the real console script, on a local folder and on S3 (moto).

The gate tests use tiny CNNs whose head always answers one digit (`support/constant.py`): their
accuracy on the MNIST test set is exactly that digit's share of it (e.g. always "1": 1135/10000),
so the gate's re-measurement can be checked to the last image without any training. Such a model
answers everything with 99.96% confidence, so the gate's trust limits (calibration, not-a-digit)
are relaxed for the accuracy tests and checked on their own in `test_gate_trust_limits`.
"""

from __future__ import annotations

import json

import pytest
import torch
from support.cli import digitserve, error_line, succeeded
from support.constant import MODEL, RELAXED, accuracy_of, constant_model, publish_constant
from support.registries import publish_network

from digitserve.data import TEST_LABEL_COUNTS
from digitserve.gate import AGREEMENT_ATOL
from digitserve.registry import ModelRegistry


def publish_manifest(registry: ModelRegistry, doc: dict[str, object]) -> int:
    """Create the next version from a hand-made manifest document (artifacts already in the store)."""
    version = registry.list_versions(MODEL)[-1] + 1
    registry.store.create(f"{MODEL}/versions/{version}/manifest.json", json.dumps({**doc, "version": version}).encode())
    return version


def without_trust(event: dict[str, object]) -> dict[str, object]:
    return {k: v for k, v in event.items() if k != "trust"}


def measured(version: int, label: int, artifact: str = "onnx", compared: bool = True) -> dict[str, object]:
    """What the gate's event records about a constant model's accuracy (ONNX and torch agree
    exactly; the alias's current version is not compared again: None); compared with
    `without_trust(...)` of the event."""
    accuracy = accuracy_of(label)
    return {
        "version": version,
        "accuracy": accuracy,
        "errors": 10000 - TEST_LABEL_COUNTS[label],
        "artifact": artifact,
        "onnx_torch_label_disagreements": 0 if compared else None,
        "onnx_torch_max_logit_difference": 0.0 if compared else None,
    }


@pytest.fixture
def registry(registry_uri: str, monkeypatch: pytest.MonkeyPatch) -> ModelRegistry:
    """An empty registry (local, then S3) and an environment the CLI subprocesses inherit."""
    monkeypatch.setenv("DIGITSERVE_ACTOR", "tester")
    monkeypatch.delenv("DIGITSERVE_GATE_THRESHOLD_DIGITS", raising=False)
    monkeypatch.delenv("DIGITSERVE_REGISTRY", raising=False)
    for name, value in RELAXED.items():
        monkeypatch.setenv(f"DIGITSERVE_GATE_{name}", value)
    return ModelRegistry.open(registry_uri)


@pytest.mark.slow  # re-measures on the full MNIST test set, several CLI runs
def test_gate_refuses_below_threshold_and_passes_a_permissive_one(registry: ModelRegistry) -> None:
    publish_constant(registry, 1, claimed=0.999)  # the manifest lies; the gate re-measures
    uri = registry.uri
    line = error_line(digitserve("registry", "promote", MODEL, "1", "--registry", uri))
    assert "accuracy 0.1135 refused: below the threshold 0.9960 (default for cnn)" in line
    line = error_line(digitserve("registry", "promote", MODEL, "1", "--threshold", "0.5", "--registry", uri))
    assert "below the threshold 0.5000 (--threshold)" in line
    assert registry.get_alias(MODEL, "production") is None
    assert registry.events(MODEL) == []

    out = succeeded(
        digitserve(
            "registry", "promote", MODEL, "1", "--registry", uri, env={"DIGITSERVE_GATE_THRESHOLD_DIGITS": "0.11"}
        )
    )
    assert out.startswith("digits/production -> v1 (was unset): digits v1: accuracy 0.1135 >= threshold 0.1100")
    assert registry.resolve_alias(MODEL, "production") == 1
    [event] = registry.events(MODEL, "production")
    gate = event["gate"]
    assert (gate["passed"], gate["forced"], gate["threshold"]) == (True, False, 0.11)
    assert gate["threshold_source"] == "DIGITSERVE_GATE_THRESHOLD_DIGITS"
    assert without_trust(gate["candidate"]) == measured(1, 1)
    assert gate["candidate"]["errors"] == 8865
    assert gate["agreement_atol"] == AGREEMENT_ATOL
    assert gate["num_examples"] == 10000 and gate["current"] is None


@pytest.mark.slow  # re-measures on the full MNIST test set, several CLI runs
def test_gate_refuses_a_regression_then_rollback_and_history(registry: ModelRegistry) -> None:
    uri = registry.uri
    publish_constant(registry, 1)  # v1: 0.1135
    publish_constant(registry, 7)  # v2: 0.1028, more than 0.001 below v1
    publish_constant(registry, 1, seed=5)  # v3: other weights, same 0.1135
    gate = ("--threshold", "0.1", "--registry", uri)
    succeeded(digitserve("registry", "promote", MODEL, "1", *gate))
    line = error_line(digitserve("registry", "promote", MODEL, "2", *gate))
    assert "accuracy 0.1028 refused: 0.0107 below production v1 (0.1135)" in line
    out = succeeded(digitserve("registry", "promote", MODEL, "3", *gate, "--reason", "retrained"))
    assert out.startswith("digits/production -> v3 (was v1)")
    assert without_trust(registry.events(MODEL)[-1]["gate"]["current"]) == measured(1, 1, compared=False)

    out = succeeded(digitserve("registry", "rollback", MODEL, "--registry", uri))
    assert out.strip() == "digits/production -> v1 (rolled back from v3)"
    assert registry.resolve_alias(MODEL, "production") == 1

    rows = [
        line.split() for line in succeeded(digitserve("registry", "history", MODEL, "--registry", uri)).splitlines()
    ]
    assert rows[0][:5] == ["at", "action", "from", "to", "actor"]
    assert [row[1:5] for row in rows[1:]] == [
        ["promote", "-", "v1", "tester"],
        ["promote", "v1", "v3", "tester"],
        ["rollback", "v3", "v1", "tester"],
    ]
    assert rows[2][-1] == "retrained"


@pytest.mark.slow  # re-measures on the full MNIST test set, several CLI runs
def test_gate_refuses_a_version_without_onnx_or_whose_onnx_disagrees_with_torch(registry: ModelRegistry) -> None:
    uri = registry.uri
    publish_constant(registry, 1)  # v1: 0.1135
    publish_constant(registry, 7)  # v2: 0.1028
    first, second = registry.manifest(MODEL, 1).to_dict(), registry.manifest(MODEL, 2).to_dict()
    weights_only = publish_manifest(registry, {k: v for k, v in first.items() if k != "onnx"})  # v3
    mixed = publish_manifest(registry, {**first, "onnx": second["onnx"]})  # v4: v1's weights, v2's graph
    gate = ("--threshold", "0.1", "--registry", uri)

    line = error_line(digitserve("registry", "promote", MODEL, str(weights_only), *gate))
    assert "digits v3: accuracy 0.1135 refused: it has no ONNX artifact, so no server can run it" in line
    line = error_line(digitserve("registry", "promote", MODEL, str(mixed), *gate))
    assert (
        "digits v4: accuracy 0.1028 refused: its ONNX artifact disagrees with its torch weights "
        f"(10000 test labels differ, largest logit difference 10 > {AGREEMENT_ATOL:g})" in line
    )
    assert registry.get_alias(MODEL, "production") is None and registry.events(MODEL) == []
    rows = succeeded(digitserve("registry", "list", MODEL, "--registry", uri)).splitlines()
    assert [r.split()[4] for r in rows[1:]] == ["onnx", "onnx", "weights", "onnx"]
    assert "weights only" in rows[3]

    # A weights-only version can still hold the alias (it was served before ONNX): it is measured with torch.
    registry.move_alias(MODEL, "production", weights_only)
    out = succeeded(digitserve("registry", "promote", MODEL, "1", *gate))
    assert out.startswith("digits/production -> v1 (was v3)")
    event = registry.events(MODEL, "production")[-1]["gate"]
    assert event["current"] == {**measured(3, 1, artifact="weights"), "trust": None}
    assert without_trust(event["candidate"]) == measured(1, 1)


@pytest.mark.slow  # re-measures on the full MNIST test set and the held-out negatives
def test_gate_trust_limits(registry: ModelRegistry, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the default limits, a model that is sure of everything is refused for its ECE and for
    taking every held-out negative for a digit; one that records no rule is refused for that."""
    for name in RELAXED:
        monkeypatch.delenv(f"DIGITSERVE_GATE_{name}", raising=False)
    publish_constant(registry, 1)
    uri = registry.uri
    line = error_line(digitserve("registry", "promote", MODEL, "1", "--threshold", "0.1", "--registry", uri))
    confidence = float(torch.softmax(10 * torch.nn.functional.one_hot(torch.tensor(1), 10).float(), 0)[1])
    ece = confidence - accuracy_of(1)  # every test digit in the top bin
    assert f"refused: test ECE {ece:.2%} > 1.50%; only 0.00% of held-out negatives answered 'not a digit' < 95.00%" in (
        line
    )
    # the flags set each limit (here: loose enough to pass)
    loose = ("--max-ece", "0.9", "--min-negatives-not-a-digit", "0", "--threshold", "0.1", "--registry", uri)
    out = succeeded(digitserve("registry", "promote", MODEL, "1", *loose))
    assert "test ECE 88." in out and "0.00% of MNIST test, 0.00% of held-out negatives" in out
    trust = registry.events(MODEL)[-1]["gate"]["candidate"]["trust"]
    assert trust["test_ece"] == pytest.approx(ece, abs=1e-5)
    assert (trust["temperature"], trust["not_a_digit_threshold"]) == (1.0, 0.1)
    assert (trust["mnist_test_not_a_digit"], trust["held_out_negatives_not_a_digit"]) == (0.0, 0.0)
    assert trust["held_out_negatives"] == 3000
    limits = registry.events(MODEL)[-1]["gate"]["trust_limits"]
    assert limits == {"max_test_ece": 0.9, "max_mnist_test_not_a_digit": 0.003, "min_held_out_negatives_not_a_digit": 0}

    bare = publish_network(registry, MODEL, constant_model(1, seed=3), {"metrics": {"accuracy": 0.1135}})
    line = error_line(digitserve("registry", "promote", MODEL, str(bare), *loose))
    assert "it records no calibration or not-a-digit threshold" in line


def test_force_needs_a_reason_and_is_logged(registry: ModelRegistry) -> None:
    publish_constant(registry, 0)
    line = error_line(digitserve("registry", "promote", MODEL, "1", "--force", "--registry", registry.uri))
    assert line == "error: --force bypasses the gate and needs --reason TEXT saying why"
    assert registry.get_alias(MODEL, "production") is None

    out = succeeded(
        digitserve("registry", "promote", MODEL, "1", "--force", "--reason", "incident 42", "--registry", registry.uri)
    )
    assert out.strip() == "digits/production -> v1 (was unset): gate bypassed with --force"
    [event] = registry.events(MODEL, "production")
    assert event["gate"] == {"forced": True, "passed": None, "reason": "incident 42"}
    assert (event["reason"], event["actor"], event["to"]) == ("incident 42", "tester", 1)
    history = succeeded(digitserve("registry", "history", MODEL, "--registry", registry.uri))
    assert "forced" in history and "incident 42" in history


@pytest.mark.slow  # re-measures on the full MNIST test set, several CLI runs
def test_promote_best_takes_the_newest_passing_version(registry: ModelRegistry) -> None:
    publish_constant(registry, 0)  # v1: 0.0980, production
    publish_constant(registry, 1)  # v2: 0.1135, passes
    publish_constant(registry, 5)  # v3: 0.0892, below the threshold
    registry.move_alias(MODEL, "production", 1)
    best = ("registry", "promote", MODEL, "--best", "--threshold", "0.1", "--registry", registry.uri)
    assert succeeded(digitserve(*best)).startswith("digits/production -> v2 (was v1)")
    assert registry.resolve_alias(MODEL, "production") == 2
    line = error_line(digitserve(*best))  # only v3 is newer, and it fails
    assert line.startswith("error: no version of digits newer than production v2 passes the gate: v3 0.0892")


def test_list_and_show(registry: ModelRegistry) -> None:
    publish_constant(registry, 1)
    publish_constant(registry, 0)
    registry.move_alias(MODEL, "production", 1)
    registry.move_alias(MODEL, "staging", 2)
    rows = [r.split() for r in succeeded(digitserve("registry", "list", "--registry", registry.uri)).splitlines()]
    assert rows[1][:3] == [MODEL, "2", "v2"] and "production" in rows[1] and "staging" in rows[1]

    rows = [
        r.split() for r in succeeded(digitserve("registry", "list", MODEL, "--registry", registry.uri)).splitlines()
    ]
    assert rows[0] == ["version", "accuracy", "split", "architecture", "artifacts", "created_at", "aliases"]
    assert [r[:5] for r in rows[1:]] == [
        ["v1", "0.1135", "test", "cnn", "onnx"],
        ["v2", "0.0980", "test", "cnn", "onnx"],
    ]
    assert rows[1][-1] == "production" and rows[2][-1] == "staging"

    shown = json.loads(succeeded(digitserve("registry", "show", MODEL, "1", "--registry", registry.uri)))
    assert (shown["version"], shown["architecture"], shown["aliases"]) == (1, "cnn", ["production"])
    assert shown["report"] == ["metrics.json"]
    assert shown["golden"]["images_uint8_b64"].endswith("base64 characters omitted>")
    assert len(shown["weights"]["sha256"]) == 64
    assert shown["onnx"]["format"] == "onnx" and len(shown["onnx"]["sha256"]) == 64
    assert registry.manifest(MODEL, 1).to_dict()["onnx"] == shown["onnx"]


def test_failures_are_one_line(registry: ModelRegistry) -> None:
    publish_constant(registry, 1)
    line = error_line(digitserve("registry", "show", MODEL, "9", "--registry", registry.uri))
    assert line.startswith("error: model 'digits' has no version 9")
    line = error_line(digitserve("registry", "promote", MODEL, "--registry", registry.uri))
    assert line == "error: promote needs one of VERSION, --best or --from ALIAS"
    line = error_line(digitserve("registry", "rollback", MODEL, "--registry", registry.uri))
    assert line == "error: alias digits/production has no previous version to roll back to"


def test_missing_bucket_is_one_line(moto_s3_env: str) -> None:
    line = error_line(digitserve("registry", "list", "--registry", "s3://digitserve-no-such-bucket/reg"))
    assert (
        line == "error: bucket 'digitserve-no-such-bucket' does not exist (registry s3://digitserve-no-such-bucket/reg)"
    )


def test_unreachable_endpoint_is_one_line(unreachable_s3_env: str) -> None:
    line = error_line(digitserve("registry", "list", MODEL, "--registry", "s3://bucket/reg"))
    assert line.startswith(f"error: cannot reach S3 endpoint {unreachable_s3_env} for s3://bucket/reg")
