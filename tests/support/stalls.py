"""The host's own stalls, witnessed beside a server: what a bound on the server's event-loop lag
must not blame on the server.

On a shared machine every process sometimes stops for 100-200 ms at once (a neighbour, the
hypervisor). The server's loop-lag probe (serving/observability/loop.py) then reads one late
wake-up, as any sleeper would. A witness process wakes every `INTERVAL_S` too and counts its
own late wake-ups; a stall that made a server reading later than `bound_s` makes the witness
at least `bound_s - INTERVAL_S` late (it was at most one interval from its next wake-up when
the stall began), which is the witness's threshold. So a server reading over the bound that
the witness did not see coincides with no stall of the host: the server held its own loop.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from types import TracebackType

INTERVAL_S = 0.05  # as the server's probe
# Stopped by SIGTERM, with a handler of its own: SIGINT would do nothing where the suite runs in
# the background (a non-interactive shell starts background jobs with SIGINT ignored, the child
# inherits that, and Python then installs no KeyboardInterrupt handler).
WITNESS = """
import signal, sys, time
threshold, interval, late = float(sys.argv[1]), float(sys.argv[2]), 0

def stop(signum, frame):
    print(late, flush=True)
    sys.exit(0)

signal.signal(signal.SIGTERM, stop)
print("watching", flush=True)
while True:
    due = time.monotonic() + interval
    time.sleep(interval)
    if time.monotonic() - due > threshold:
        late += 1
"""


class HostStalls:
    """`with HostStalls(0.1) as stalls: ...`; then `stalls.count`: the host's stalls long enough
    to push a 50 ms sleeper past `bound_s`, while the block ran."""

    def __init__(self, bound_s: float) -> None:
        self.threshold_s = bound_s - INTERVAL_S
        self.count = 0
        self._process: subprocess.Popen[str] | None = None

    def __enter__(self) -> HostStalls:
        args = [sys.executable, "-c", WITNESS, str(self.threshold_s), str(INTERVAL_S)]
        self._process = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
        assert self._process.stdout is not None and self._process.stdout.readline().strip() == "watching"
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        assert self._process is not None
        self._process.send_signal(signal.SIGTERM)
        out, _ = self._process.communicate(timeout=30)
        assert self._process.returncode == 0 and out.strip().isdigit(), f"the witness failed: {out!r}"
        self.count = int(out)
