"""The load benchmark runs end to end: `bench/run.py --smoke` (a second per scenario) writes its report.

This checks the harness (servers start, wrk drives them, the alias moves, the report is
written), not how fast anything is: the machine may be busy with other tests.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed (make system-deps installs it)"),
]


def test_smoke_run_writes_its_report(tmp_path: Path) -> None:
    out = tmp_path / "results.md"
    run = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), "--smoke", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=540,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]

    report = out.read_text()
    assert "Smoke run" in report
    sections = (
        "## Servers",
        "## Targets",
        "## Every run",
        "## Compute limit",
        "## Process start to ready",
        "## Alias move",
        "## Fresh starts of the default layout",
    )
    for section in sections:
        assert section in report
    results = json.loads(out.with_suffix(".json").read_text())
    scenarios = {(r["server"], r["model"], r["body"]) for r in results["runs"]}
    assert {
        ("bare", "cnn", "one"),
        ("bare, decoding", "cnn", "one"),
        ("digitserve", "cnn", "one"),
        ("digitserve", "cnn", "batch"),
        ("digitserve", "cnn", "upload"),
        ("digitserve", "vit", "one"),
        ("LitServe", "cnn", "one"),
        ("digitserve, alias moving", "cnn", "one"),
    } <= scenarios
    assert all(r.get("cpu_s_per_1000") is None or r["cpu_s_per_1000"] > 0 for r in results["runs"])
    moving = next(r for r in results["runs"] if r["server"] == "digitserve, alias moving")
    workers = os.cpu_count()  # the default layout: one worker per core, each reloaded
    assert moving["moves"][0]["answer"]["workers"] == {"expected": workers, "reloaded": workers}
    assert set(results["compute"]) == {"cnn", "vit", "cnn, 1 thread"}
    assert results["compute"]["cnn, 1 thread"]["threads"] == 1
    # each fresh start measured once, with the host's steal and every server process's CPU
    fresh = results["fresh_starts"]
    assert sorted({row["start"] for row in fresh}) == [0, 1]
    for row in fresh:
        assert row["rps"] > 0 and 0 <= row["steal"] <= 1 and row["flagged"] == (row["steal"] > 0.05)
        assert {"supervisor", *(f"worker {i}" for i in range(workers))} <= set(row["cpu_s"])
        assert sum(v for k, v in row["cpu_s"].items() if k.startswith("worker")) > 0
    assert results["startup"] and all(s["seconds"] > 0 for s in results["startup"])
    moving = next(r for r in results["runs"] if r["server"] == "digitserve, alias moving")
    assert [m["answer"]["results"][0]["version"] for m in moving["moves"]] == [2, 1]
    assert all(m["answer"]["results"][0]["changed"] for m in moving["moves"])


def test_cpu_budget_accounts_for_the_cpu_by_stage(tmp_path: Path) -> None:
    """bench/cpu_budget.py: the stages add up to the process's measured CPU per request, and the
    profile sees the request path (the forward pass, the HTTP protocol, validation, decoding)."""
    out = tmp_path / "budget.json"
    run = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "cpu_budget.py"), "--rounds", "1", "--seconds", "3", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    budget = json.loads(out.read_text())
    (only,) = budget["rounds"]
    assert only["cpu_s_per_1000"] > 0 and only["rps"] > 0
    total = only["cpu_s_per_1000"]  # the process's CPU from the kernel; the threads' add up to it within a few %
    assert abs(sum(only["stages"].values()) - total) < 0.05 * total, (only["stages"], total)
    assert only["stages"]["threads that ended during the round"] < 0.1 * total, only["stages"]
    seen = {stage for stage, cpu in only["stages"].items() if cpu > 0}
    assert {
        "forward pass (ONNX Runtime)",
        "HTTP protocol (uvicorn, httptools)",
        "routing and validation (digitserve)",
        "decode and preprocessing",
    } <= seen, only["stages"]
    assert only["stages"]["other Python"] < 0.25 * only["cpu_s_per_1000"], only["stages"]  # the stages name the path
