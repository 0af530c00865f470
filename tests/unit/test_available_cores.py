"""`--workers auto` counts the cores the container may use, not the host's (serving/workers.py)."""

from __future__ import annotations

import os
from pathlib import Path

from digitserve.serving.workers import available_cores

HOST = len(os.sched_getaffinity(0))


def cgroup(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    return tmp_path


def test_a_cgroup_v2_limit_rounds_up(tmp_path: Path) -> None:
    assert available_cores(cgroup(tmp_path, {"cpu.max": "50000 100000\n"})) == 1
    assert available_cores(cgroup(tmp_path, {"cpu.max": "150000 100000\n"})) == min(HOST, 2)


def test_no_limit_is_the_cores_the_process_may_run_on(tmp_path: Path) -> None:
    assert available_cores(cgroup(tmp_path, {"cpu.max": "max 100000\n"})) == HOST
    assert available_cores(tmp_path / "absent") == HOST
    assert available_cores(cgroup(tmp_path / "junk", {"cpu.max": "lots\n"})) == HOST


def test_a_cgroup_v1_quota(tmp_path: Path) -> None:
    v1 = {"cpu/cpu.cfs_quota_us": "100000\n", "cpu/cpu.cfs_period_us": "100000\n"}
    assert available_cores(cgroup(tmp_path, v1)) == 1
    unlimited = {"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}
    assert available_cores(cgroup(tmp_path / "free", unlimited)) == HOST
