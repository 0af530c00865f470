"""The witness of the host's stalls (tests/support/stalls.py) sees a stall and only a stall."""

from __future__ import annotations

import os
import signal
import time

from support.stalls import HostStalls


def test_the_witness_counts_a_stall_and_nothing_else() -> None:
    with HostStalls(0.1) as quiet:
        time.sleep(0.5)
    assert quiet.count == 0
    with HostStalls(0.1) as stalled:
        assert stalled._process is not None
        pid = stalled._process.pid
        for _ in range(2):  # two stalls of 0.25 s, as a neighbour taking the machine would make
            time.sleep(0.2)
            os.kill(pid, signal.SIGSTOP)
            time.sleep(0.25)
            os.kill(pid, signal.SIGCONT)
        time.sleep(0.2)
    assert stalled.count == 2
