"""The production path end to end on S3 (moto): train, promote through the gate, serve, roll back.

It runs what CI runs: `training/train.py` publishes to the bucket, and `scripts/promote.sh
MODEL VERSION|best` (the promote workflow's command) moves the alias through the gate, with
DIGITSERVE_REGISTRY, DIGITSERVE_ACTOR and the AWS credentials in the environment as the
workflow sets them. A server polling the alias every second follows each move.

The bucket starts as a fresh production registry: the shipped cnn uploaded as v1, no alias yet.
A smoke-trained model (v2, far below 99 %) can take `production` only through the threshold
knob and only while nothing better holds the alias: the gate also refuses a candidate more than
0.1 point below the alias's version, whatever the threshold, which the test shows too.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import httpx
import pytest
from support.cli import digitserve, error_line, succeeded
from support.registries import png_b64, publish_variant, seed_s3, train_smoke
from support.server import model_info, start_server, stop_server, wait_until

from digitserve.config import gate_threshold_variable
from digitserve.data import load_mnist
from digitserve.registry import ModelRegistry

REPO = Path(__file__).resolve().parents[2]
PROMOTE = REPO / "scripts" / "promote.sh"
THRESHOLD_VAR = gate_threshold_variable("cnn")  # DIGITSERVE_GATE_THRESHOLD_CNN
ACTOR = "github:octocat"  # what the workflow sets DIGITSERVE_ACTOR to
SERVED_WITHIN_S = 20.0  # a 1 s poll, then fetch, verify and golden-check the new version


def promote_sh(*args: str, threshold: str | None = None) -> subprocess.CompletedProcess[str]:
    """`scripts/promote.sh ARGS` from the repository root, as the workflow's step runs it."""
    env = {**os.environ, **({THRESHOLD_VAR: threshold} if threshold is not None else {})}
    return subprocess.run([str(PROMOTE), *args], cwd=REPO, capture_output=True, text=True, timeout=600, env=env)


def serving(url: str) -> int:
    return int(model_info(url, "cnn")["serving"]["version"])


def history_rows(*args: str) -> list[list[str]]:
    """`digitserve registry history` as rows of cells (its columns are two or more spaces apart)."""
    return [re.split(r" {2,}", line) for line in succeeded(digitserve("registry", "history", *args)).splitlines()]


@pytest.mark.slow  # trains a model and runs the gate on the full test set four times
@pytest.mark.timeout(1500)
def test_train_promote_serve_and_roll_back_on_s3(
    s3_bucket: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    uri = f"s3://{s3_bucket}/prod"
    monkeypatch.setenv("DIGITSERVE_REGISTRY", uri)
    monkeypatch.setenv("DIGITSERVE_ACTOR", ACTOR)
    monkeypatch.delenv(THRESHOLD_VAR, raising=False)
    seed_s3(uri, aliases=False)
    registry = ModelRegistry.open(uri)
    assert registry.list_versions("cnn") == [1] and registry.get_alias("cnn", "production") is None

    assert f"published cnn v2 to {uri}" in train_smoke(uri)

    # The default threshold refuses a smoke model: one line, non-zero exit, nothing moved.
    line = error_line(promote_sh("cnn", "2"))
    assert re.fullmatch(
        r"error: gate refused cnn v2: accuracy 0\.\d{4} refused: below the threshold 0\.9960 \(default for cnn\)"
        r"(; .*held-out negatives answered 'not a digit' < 95\.00%)",
        line,
    ), line
    assert registry.get_alias("cnn", "production") is None and registry.events("cnn") == []
    # A smoke model's confidence means nothing yet: relax the gate's trust limits as well.
    for name, value in {"MAX_ECE": "1", "MAX_DIGITS_NOT_A_DIGIT": "1", "MIN_NEGATIVES_NOT_A_DIGIT": "0"}.items():
        monkeypatch.setenv(f"DIGITSERVE_GATE_{name}", value)
    out = succeeded(promote_sh("cnn", "2", threshold="0.0"))
    assert out.startswith("cnn/production -> v2 (was unset): cnn v2: accuracy 0.")
    assert f">= threshold 0.0000 ({THRESHOLD_VAR})" in out

    images = load_mnist("test").images[:1]
    env = {"DIGITSERVE_MODELS": "cnn", "DIGITSERVE_POLL_SECONDS": "1", "DIGITSERVE_CACHE_DIR": str(tmp_path / "cache")}
    process, url = start_server(env, log_path=tmp_path / "server.log")
    try:
        assert serving(url) == 2

        # A newer version that passes the real gate: `best` promotes it, the server follows.
        assert publish_variant(registry, "cnn", 1) == 3  # the baseline's predictions, another blob
        base = f"{registry.manifest('cnn', 1).metrics['accuracy']:.4f}"  # the shipped production version's
        out = succeeded(promote_sh("cnn", "best"))
        assert out.startswith(
            f"cnn/production -> v3 (was v2): cnn v3: accuracy {base} >= threshold 0.9960 (default for cnn), "
        ), out
        assert "production v2 measures 0." in out and "test ECE" in out, out
        swap_s = wait_until(lambda: serving(url) == 3, SERVED_WITHIN_S, "server serves v3 after promote")
        answer = httpx.post(f"{url}/v1/models/cnn/predict", json={"images": [png_b64(images[0])]}, timeout=30)
        assert answer.status_code == 200 and answer.json()["version"] == 3

        # Lowering the threshold does not let a regression through.
        line = error_line(promote_sh("cnn", "2", threshold="0.0"))
        assert re.search(rf"refused: 0\.\d{{4}} below production v3 \({base}\); at most 0\.0010 is allowed$", line), (
            line
        )
        assert registry.resolve_alias("cnn", "production") == 3

        out = succeeded(digitserve("registry", "rollback", "cnn", env={"DIGITSERVE_ACTOR": "oncall"}))
        assert out.strip() == "cnn/production -> v2 (rolled back from v3)"
        rollback_s = wait_until(lambda: serving(url) == 2, SERVED_WITHIN_S, "server serves v2 after rollback")
    finally:
        assert stop_server(process) == 0
    print(f"after each command returned, the server served v3 in {swap_s:.1f}s and v2 in {rollback_s:.1f}s")

    # Who moved the alias, when, from where to where, and what the gate said: one row per move.
    header, *rows = history_rows("cnn")
    assert header == ["at", "action", "from", "to", "actor", "gate", "reason"]
    assert [row[1:5] for row in rows] == [
        ["promote", "-", "v2", ACTOR],
        ["promote", "v2", "v3", ACTOR],
        ["rollback", "v3", "v2", "oncall"],
    ]
    assert [row[0] for row in rows] == sorted(row[0] for row in rows)
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", row[0]) for row in rows)
    assert re.fullmatch(r"passed \(accuracy 0\.\d{4}, threshold 0\.0000\)", rows[0][5])
    assert rows[1][5] == f"passed (accuracy {base}, threshold 0.9960)" and rows[2][5] == "-"
    gates = [event["gate"] for event in registry.events("cnn", "production")]
    assert gates[0]["threshold_source"] == THRESHOLD_VAR and gates[0]["current"] is None
    # The gate re-measured what train.py published on all 10k test images, the very set whose
    # checksum the trainer recorded, with the ONNX artifact, which agrees with its torch weights.
    trained = registry.manifest("cnn", 2)
    assert gates[0]["num_examples"] == 10000 and gates[0]["data_sha256"] == trained.extra["data"]["test_sha256"]
    assert gates[0]["candidate"]["artifact"] == "onnx" and gates[0]["candidate"]["onnx_torch_label_disagreements"] == 0
    assert 0 < gates[0]["candidate"]["accuracy"] < 1
    assert gates[1]["threshold_source"] == "default for cnn" and gates[1]["current"]["version"] == 2
    assert gates[1]["num_examples"] == 10000 and gates[2] is None
