"""Where the promotion gate's threshold comes from (the measuring is in test_cli_registry)."""

from __future__ import annotations

import pytest

from digitserve.config import gate_threshold_variable
from digitserve.gate import resolve_threshold
from digitserve.registry import RegistryError


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
    with pytest.raises(RegistryError, match="DIGITSERVE_GATE_THRESHOLD_CNN='high' is not a number"):
        resolve_threshold("cnn", "cnn", None)
    with pytest.raises(RegistryError, match=r"must be an accuracy in \[0, 1\], got 99.6"):
        resolve_threshold("cnn", "cnn", 99.6)
    with pytest.raises(RegistryError, match="no default gate threshold for architecture 'mlp'"):
        resolve_threshold("other", "mlp", None)
