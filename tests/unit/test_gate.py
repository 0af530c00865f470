"""Where the promotion gate's threshold and regression limit come from, and how it scores the
feedback holdout (the measuring is in test_cli_registry and test_gate_feedback)."""

from __future__ import annotations

import numpy as np
import pytest

from digitserve.config import SettingError, gate_threshold_variable
from digitserve.gate import resolve_threshold
from digitserve.gate.core import MAX_REGRESSION, resolve_max_regression
from digitserve.gate.feedback import FeedbackHoldout, score
from digitserve.runtime.calibration import Calibration


@pytest.fixture(autouse=True)
def no_threshold_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("DIGITSERVE_GATE_THRESHOLD_CNN", "DIGITSERVE_GATE_THRESHOLD_MY_VIT"):
        monkeypatch.delenv(var, raising=False)


def test_defaults_by_architecture() -> None:
    assert resolve_threshold("cnn", "cnn", None) == (0.996, "default for cnn")
    assert resolve_threshold("my-vit", "vit", None) == (0.993, "default for vit")


def test_environment_overrides_default_and_flag_overrides_both(monkeypatch: pytest.MonkeyPatch) -> None:
    assert gate_threshold_variable("my-vit") == "DIGITSERVE_GATE_THRESHOLD_MY_VIT"
    monkeypatch.setenv("DIGITSERVE_GATE_THRESHOLD_MY_VIT", "0.98")
    assert resolve_threshold("my-vit", "vit", None) == (0.98, "DIGITSERVE_GATE_THRESHOLD_MY_VIT")
    assert resolve_threshold("my-vit", "vit", 0.5) == (0.5, "--threshold")


def test_bad_thresholds_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DIGITSERVE_GATE_THRESHOLD_CNN", "high")
    with pytest.raises(SettingError, match="DIGITSERVE_GATE_THRESHOLD_CNN='high' is not a number"):
        resolve_threshold("cnn", "cnn", None)
    with pytest.raises(SettingError, match=r"must be an accuracy in \[0, 1\], got 99.6"):
        resolve_threshold("cnn", "cnn", 99.6)
    with pytest.raises(SettingError, match="no default gate threshold for architecture 'mlp'"):
        resolve_threshold("other", "mlp", None)


def test_not_a_digit_corrections_count_as_right_only_when_the_version_abstains() -> None:
    class Fixed:  # a runtime whose logits are given: 3 confident digits, 1 spread evenly
        def logits(self, images: np.ndarray) -> np.ndarray:
            out = np.zeros((len(images), 10), np.float32)
            out[:3, 4] = 10
            return out

    images = np.zeros((4, 28, 28), np.uint8)
    labels = np.array([4, 5, -1, -1])
    holdout = FeedbackHoldout("d", images, labels)
    result = score(Fixed(), Calibration(1.0, 0.5), holdout)
    assert (result.correct, result.samples) == (2, 4)  # the 4, and the spread answer to "not a digit"
    assert score(Fixed(), Calibration(1.0, None), holdout).correct == 1  # never abstains: only the 4


def test_the_regression_limit_comes_from_the_flag_then_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DIGITSERVE_GATE_MAX_REGRESSION", raising=False)
    assert resolve_max_regression(None) == MAX_REGRESSION
    monkeypatch.setenv("DIGITSERVE_GATE_MAX_REGRESSION", "0.02")
    assert resolve_max_regression(None) == 0.02
    assert resolve_max_regression(0.5) == 0.5
    monkeypatch.setenv("DIGITSERVE_GATE_MAX_REGRESSION", "lots")
    with pytest.raises(SettingError, match="is not a number"):
        resolve_max_regression(None)
    with pytest.raises(SettingError, match=r"in \[0, 1\]"):
        resolve_max_regression(2.0)
