"""The witness of the host's stalls (tests/support/stalls.py) sees a stall, and only as many as there were."""

from __future__ import annotations

import os
import signal
import time

from support.stalls import HostStalls, LoopLagCheck


def test_the_witness_sees_every_stall() -> None:
    """A witness stopped twice for 0.25 s (as a neighbour taking the machine would stop it) counts
    both stops, and its worst lateness is at least what it was stopped for. (The host may stall it
    more; what it must never do is miss one.)"""
    with HostStalls(0.1) as stopped:
        assert stopped._process is not None
        pid = stopped._process.pid
        for _ in range(2):
            time.sleep(0.2)
            os.kill(pid, signal.SIGSTOP)
            time.sleep(0.25)
            os.kill(pid, signal.SIGCONT)
        time.sleep(0.2)
    assert stopped.count >= 2 and stopped.worst_s >= 0.2, (stopped.count, stopped.worst_s)


def test_readings_the_stalls_do_not_explain_are_the_servers() -> None:
    """As many late readings as stalls (per worker) are the host's; more, or later than the worst
    stall allows, are the server's own."""
    check = LoopLagCheck("http://unused", 0.1, workers=2)
    check.stalls.count, check.stalls.worst_s = 1, 0.15
    check.late = {0.1: 2, 0.25: 0, 0.5: 0, 1.0: 0, 2.5: 0}
    assert check.unexplained() is None  # one stall, two workers: two late readings
    check.late = {0.1: 3, 0.25: 0, 0.5: 0, 1.0: 0, 2.5: 0}
    assert "3 readings of the event loop's lag were over 0.1 s" in str(check.unexplained())
    check.late = {0.1: 1, 0.25: 1, 0.5: 1, 1.0: 0, 2.5: 0}  # a 0.5-1 s stall of its own, beside a 0.15 s one
    assert "1 readings of the event loop's lag were over 0.25 s" in str(check.unexplained())
    check.stalls.count, check.stalls.worst_s = 0, 0.004
    check.late = {0.1: 1, 0.25: 0, 0.5: 0, 1.0: 0, 2.5: 0}
    assert check.unexplained() is not None
