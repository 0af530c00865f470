"""Calibration, the not-a-digit rule, and the numbers reported about them (digitserve.evaluation,
digitserve.runtime.calibration, the gate's trust limits)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from digitserve.config import SettingError
from digitserve.evaluation import (
    MAX_VALIDATION_DIGIT_REJECTION,
    MAX_VALIDATION_VARIANT_REJECTION,
    choose_threshold,
    expected_calibration_error,
    fit_temperature,
    negative_log_likelihood,
    rejection_rate,
    reliability,
    trust_metrics,
)
from digitserve.gate import Trust as GateTrust
from digitserve.gate import TrustLimits, trust_refusals
from digitserve.runtime.calibration import Calibration, CalibrationError, softmax


def sampled(n: int, temperature: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits, and labels drawn from softmax(logits / temperature): data whose true temperature is known."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 4, (n, 10)).astype(np.float32)
    probs = softmax(logits, temperature).astype(np.float64)
    cumulative = probs.cumsum(axis=1)
    labels = (rng.random((n, 1)) > cumulative).sum(axis=1).clip(0, 9)
    return logits, labels


def test_fitted_temperature_recovers_the_true_one() -> None:
    for true in (0.5, 1.0, 2.5):
        logits, labels = sampled(20000, true)
        assert fit_temperature(logits, labels) == pytest.approx(true, rel=0.06)


def test_calibration_lowers_ece_and_nll_of_overconfident_logits() -> None:
    logits, labels = sampled(20000, 2.0)
    raw, fitted = softmax(logits, 1.0), softmax(logits, fit_temperature(logits, labels))
    assert expected_calibration_error(raw, labels) > 0.08  # twice too confident
    assert expected_calibration_error(fitted, labels) < 0.015
    assert negative_log_likelihood(fitted, labels) < negative_log_likelihood(raw, labels)


def test_ece_by_hand() -> None:
    # two answers at 0.95 confidence, one right one wrong: |0.5 - 0.95| = 0.45 in one bin
    probs = np.full((2, 10), 0.05 / 9)
    probs[:, 3] = 0.95
    assert expected_calibration_error(probs, np.array([3, 4])) == pytest.approx(0.45)
    table = reliability(probs, np.array([3, 4]))
    assert len(table) == 15 and sum(b["count"] for b in table) == 2
    assert table[14]["count"] == 2 and table[14]["accuracy"] == 0.5


def test_threshold_is_the_highest_that_keeps_the_validation_digits() -> None:
    rng = np.random.default_rng(1)
    digits = rng.uniform(0.3, 1.0, 5000)
    variants = rng.uniform(0.2, 1.0, 7000)
    threshold = choose_threshold(digits, variants)
    assert (digits < threshold).mean() <= MAX_VALIDATION_DIGIT_REJECTION
    assert (variants < threshold).mean() <= MAX_VALIDATION_VARIANT_REJECTION
    # a little higher and one of the two limits is broken: nothing was left on the table
    higher = threshold + 0.002
    assert (digits < higher).mean() > MAX_VALIDATION_DIGIT_REJECTION or (
        (variants < higher).mean() > MAX_VALIDATION_VARIANT_REJECTION
    )
    assert choose_threshold(np.full(10, 0.01), np.full(10, 0.01)) == 0.1  # never below 0.1


def test_calibration_from_manifest() -> None:
    assert Calibration.from_manifest({}) == Calibration(1.0, None)
    rule = {"calibration": {"temperature": 1.5}, "not_a_digit": {"score": "confidence", "threshold": 0.4}}
    calibration = Calibration.from_manifest(rule)
    assert calibration == Calibration(1.5, 0.4)
    probs = np.array([[0.9] + [0.1 / 9] * 9, [0.3, 0.25] + [0.45 / 8] * 8])
    assert calibration.is_digit(probs).tolist() == [True, False]
    assert calibration.reason(probs[1]) == (
        "does not look like a digit: no digit reaches 40% confidence (the closest is 0 at 30%)"
    )
    assert Calibration().is_digit(probs).tolist() == [True, True]  # no rule: never abstains
    logits = np.array([[2.0, 1.0] + [0.0] * 8])
    assert calibration.probabilities(logits) == pytest.approx(softmax(logits / 1.5))


@pytest.mark.parametrize(
    "extra",
    [
        {"calibration": {"temperature": 1e999}},
        {"calibration": {"temperature": 0}},
        {"calibration": {"temperature": "1.2"}},
        {"calibration": {"temperature": True}},
        {"calibration": 1.2},
        {"not_a_digit": {"threshold": 1.0}},
        {"not_a_digit": {"threshold": float("nan")}},
        {"not_a_digit": {"threshold": 0.5, "score": "energy"}},
        {"not_a_digit": [0.5]},
    ],
)
def test_unusable_calibration_values_are_errors(extra: dict) -> None:
    with pytest.raises(CalibrationError):
        Calibration.from_manifest(extra)


def test_trust_metrics_report_what_the_rule_does() -> None:
    logits, labels = sampled(2000, 1.0)
    calibration = Calibration(1.0, 0.5)
    negatives = np.zeros((100, 10), np.float32)  # uniform: every one is "not a digit"
    kinds = np.array([0] * 50 + [1] * 50)
    robust = {"photo": logits[:500]}
    out = trust_metrics(calibration, logits, labels, negatives, kinds, robust, labels[:500])
    probs = softmax(logits, 1.0)
    assert out["not_a_digit"]["mnist_test_rate"] == pytest.approx(rejection_rate(probs, 0.5), abs=1e-6)
    assert out["not_a_digit"]["held_out_negatives_rate"] == 1.0
    assert out["not_a_digit"]["held_out_by_kind"] == {"letters": 1.0, "shapes": 1.0}
    photo = out["robustness"]["variants"]["photo"]
    assert photo["accuracy"] == pytest.approx((probs[:500].argmax(1) == labels[:500]).mean(), abs=1e-6)
    assert photo["answered_correctly"] <= photo["accuracy"]
    assert out["calibration"]["test_ece_before"] == out["calibration"]["test_ece_after"]  # T = 1


def test_gate_trust_refusals() -> None:
    limits = TrustLimits()
    good = GateTrust(1.2, 0.4, 0.008, 0.002, 0.97, 3000)
    assert trust_refusals(good, None, limits) == []
    bad = GateTrust(1.2, 0.4, 0.02, 0.005, 0.90, 3000)
    assert trust_refusals(bad, None, limits) == [
        "test ECE 2.00% > 1.50%",
        "0.50% of MNIST test digits answered 'not a digit' > 0.30%",
        "only 90.00% of held-out negatives answered 'not a digit' < 95.00%",
    ]
    uncalibrated = GateTrust(None, None, 0.03, None, None, 3000)
    assert "records no calibration or not-a-digit threshold" in trust_refusals(uncalibrated, None, limits)[0]
    damaged = trust_refusals(None, "calibration.temperature must be ...", limits)
    assert damaged == ["its manifest's calibration cannot be used (calibration.temperature must be ...)"]


def test_gate_trust_limits_from_settings_and_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in TrustLimits.SETTINGS.values():
        monkeypatch.delenv(f"DIGITSERVE_GATE_{name}", raising=False)
    assert TrustLimits.resolve() == TrustLimits(0.015, 0.003, 0.95)
    monkeypatch.setenv("DIGITSERVE_GATE_MIN_NEGATIVES_NOT_A_DIGIT", "0.5")
    assert TrustLimits.resolve().min_negatives_not_a_digit == 0.5
    assert TrustLimits.resolve(min_negatives_not_a_digit=0.25).min_negatives_not_a_digit == 0.25
    monkeypatch.setenv("DIGITSERVE_GATE_MAX_ECE", "low")
    with pytest.raises(SettingError, match="DIGITSERVE_GATE_MAX_ECE='low' is not a number"):
        TrustLimits.resolve()
    with pytest.raises(SettingError, match=r"must be a fraction in \[0, 1\]"):
        TrustLimits.resolve(max_ece=1.5)
    assert math.isclose(TrustLimits.resolve(max_ece=0.5).max_ece, 0.5)
