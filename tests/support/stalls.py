"""The host's own stalls, witnessed beside a server: what a bound on the server's event-loop lag
must not blame on the server.

On a shared machine every process sometimes stops for 100-200 ms at once (a neighbour, the
hypervisor). The server's loop-lag probe (serving/observability/loop.py) then reads one late
wake-up, as any sleeper would. A witness process wakes every `INTERVAL_S` and records its own
late wake-ups: a stall that made a server reading later than `bound_s` makes the witness at
least `bound_s - INTERVAL_S` late (it was at most one interval from its next wake-up when the
stall began), which is the witness's threshold. So the server may have as many readings over
the bound as the witness saw stalls (per worker: each worker's probe is late once), and none
later than the witness's worst stall allows: the rest the server did to itself.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from types import TracebackType

from digitserve.serving.observability.metrics import LAG_BUCKETS
from support.server import loop_lags_over

INTERVAL_S = 0.01
# Stopped by SIGTERM, with a handler of its own: SIGINT would do nothing where the suite runs in
# the background (a non-interactive shell starts background jobs with SIGINT ignored, the child
# inherits that, and Python then installs no KeyboardInterrupt handler). The wait in progress
# when it stops counts too.
WITNESS = """
import signal, sys, time
threshold, interval = float(sys.argv[1]), float(sys.argv[2])
late, worst, due = 0, 0.0, time.monotonic() + interval

def stop(signum, frame):
    lateness = time.monotonic() - due
    print(late + (lateness > threshold), max(worst, lateness), flush=True)
    sys.exit(0)

signal.signal(signal.SIGTERM, stop)
print("watching", flush=True)
while True:
    due = time.monotonic() + interval
    time.sleep(interval)
    lateness = time.monotonic() - due
    late += lateness > threshold
    worst = max(worst, lateness)
"""


class HostStalls:
    """`with HostStalls(0.1) as stalls: ...`; then `stalls.count`: the host's stalls long enough
    to push a sleeper past `bound_s`, while the block ran, and `stalls.worst_s`: the longest."""

    def __init__(self, bound_s: float) -> None:
        self.threshold_s = bound_s - INTERVAL_S
        self.count = 0
        self.worst_s = 0.0
        self._process: subprocess.Popen[str] | None = None

    def __enter__(self) -> HostStalls:
        args = [sys.executable, "-c", WITNESS, str(self.threshold_s), str(INTERVAL_S)]
        self._process = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
        assert self._process.stdout is not None
        if self._process.stdout.readline().strip() != "watching":
            self._process.kill()
            raise AssertionError("the witness did not start")
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        assert self._process is not None
        self._process.send_signal(signal.SIGTERM)
        out, _ = self._process.communicate(timeout=30)
        assert self._process.returncode == 0 and len(out.split()) == 2, f"the witness failed: {out!r}"
        count, worst = out.split()
        self.count, self.worst_s = int(count), float(worst)


class LoopLagCheck:
    """`with LoopLagCheck(url, 0.1, workers) as check: ...`; then `check.unexplained()`: why the
    server's loop-lag readings over `bound_s` while the block ran are more, or later, than the
    host's own stalls explain (None when they are not). The witness runs from before the first
    reading of the server's counters to after the last."""

    def __init__(self, url: str, bound_s: float, workers: int = 1) -> None:
        self.url, self.bound_s, self.workers = url, bound_s, workers
        self.stalls = HostStalls(bound_s)
        self.edges = [float(edge) for edge in LAG_BUCKETS if edge >= bound_s]  # as /metrics writes them: le="1.0"
        self.late: dict[float, float] = {}

    def __enter__(self) -> LoopLagCheck:
        self.stalls.__enter__()
        self.late = {edge: -loop_lags_over(self.url, edge) for edge in self.edges}
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        try:
            self.late = {edge: before + loop_lags_over(self.url, edge) for edge, before in self.late.items()}
        finally:
            self.stalls.__exit__(kind, exc, tb)

    def unexplained(self) -> str | None:
        late, stalls = self.late[self.bound_s], self.stalls
        seen = f"the host stalled {stalls.count} times meanwhile, at worst {stalls.worst_s:.3f} s"
        if late > self.workers * stalls.count:
            return f"{late:.0f} readings of the event loop's lag were over {self.bound_s} s; {seen}"
        beyond = [edge for edge in self.edges if edge >= stalls.worst_s + INTERVAL_S and self.late[edge] > 0]
        if beyond:
            return f"{self.late[beyond[0]]:.0f} readings of the event loop's lag were over {beyond[0]} s; {seen}"
        return None
