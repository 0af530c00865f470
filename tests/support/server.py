"""A real `digitserve serve` process for integration tests.

`start_server(env)` runs the console script on a free loopback port and returns once /readyz
answers 200; `stop_server` sends SIGTERM (the production stop signal) and waits for the exit.
`running_server(env)` wraps both for a `with` block or a fixture. `metric`, `model_info` and
`wait_until` read what a running server reports.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from support.net import free_port

READY_TIMEOUT_S = 180.0  # loading and golden-checking both models on a busy 2-core machine
STOP_TIMEOUT_S = 40.0  # the server's drain grace plus uvicorn's graceful shutdown
DIGITSERVE = Path(sys.executable).with_name("digitserve")


def _log_tail(log_path: Path, chars: int = 3000) -> str:
    try:
        return log_path.read_text(errors="replace")[-chars:]
    except OSError:
        return "(no log)"


def wait_until_ready(
    process: subprocess.Popen[bytes],
    base_url: str,
    log_path: Path,
    timeout_s: float,
    path: str = "/readyz",
    poll_s: float = 0.2,
) -> None:
    """Poll `path` (/readyz) until it answers 200; raise with the server's log if it exits or times out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"digitserve exited with {process.returncode} before ready:\n{_log_tail(log_path)}")
        try:
            with urllib.request.urlopen(f"{base_url}{path}", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass  # not listening yet, or 503 while the models load
        time.sleep(poll_s)
    raise RuntimeError(f"digitserve at {base_url} was not ready within {timeout_s:.0f}s:\n{_log_tail(log_path)}")


def spawn(
    cmd: Sequence[str],
    env: Mapping[str, str] | None = None,
    *,
    log_path: Path | None = None,
    ready_timeout_s: float = READY_TIMEOUT_S,
    wait_path: str = "/readyz",
    poll_s: float = 0.2,
    cwd: Path | None = None,
) -> tuple[subprocess.Popen[bytes], str, float]:
    """Start any server command on a free loopback port (`cmd` gets `--port N`); returns the process,
    its base URL and the seconds from spawn to `wait_path` answering 200. The one way the tests and
    the benchmark start a server."""
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    if log_path is None:
        log_path = Path(tempfile.mkstemp(prefix="digitserve-", suffix=".log")[1])
    with open(log_path, "ab") as log:
        started = time.perf_counter()
        process = subprocess.Popen(
            [*cmd, "--port", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            cwd=cwd,
        )
    try:
        wait_until_ready(process, base_url, log_path, ready_timeout_s, wait_path, poll_s)
    except BaseException:
        stop_server(process)
        raise
    return process, base_url, time.perf_counter() - started


def start_server(
    env: Mapping[str, str] | None = None,
    *,
    log_path: Path | None = None,
    ready_timeout_s: float = READY_TIMEOUT_S,
    extra_args: Sequence[str] = (),
    wait_path: str = "/readyz",
    host: str | None = "127.0.0.1",
) -> tuple[subprocess.Popen[bytes], str]:
    """Start `digitserve serve` on 127.0.0.1 and a free port; `env` adds to this process's environment
    (with one worker process unless `env` or `extra_args` say otherwise).

    Returns the process and its base URL once `wait_path` (/readyz; /healthz for a server that
    is meant to start unready) is 200. `host=None` passes no --host (the default bind). The
    server's output goes to `log_path` (a temporary file by default) and is quoted in the
    error if it never gets ready.
    """
    bind = ["--host", host] if host is not None else []
    cmd = [str(DIGITSERVE), "serve", *bind, *extra_args]
    env = {  # one process unless a test asks for more; a feedback spool of its own, never the user's
        "DIGITSERVE_WORKERS": "1",
        "DIGITSERVE_FEEDBACK_SPOOL_DIR": tempfile.mkdtemp(prefix="digitserve-spool-"),
        # the drain before the listener closes is for a load balancer to notice /readyz: none here
        # (the drain's own tests set it)
        "DIGITSERVE_SHUTDOWN_GRACE_S": "0.2",
        **(env or {}),
    }
    process, base_url, _ = spawn(cmd, env, log_path=log_path, ready_timeout_s=ready_timeout_s, wait_path=wait_path)
    return process, base_url


def stop_server(process: subprocess.Popen[bytes], timeout_s: float = STOP_TIMEOUT_S) -> int:
    """SIGTERM, wait for a clean exit (killed past `timeout_s`); returns the exit status.

    Then no process it started may outlive it: a server whose own shutdown leaves its children
    running (LitServe's inference workers do) would take CPU from every later test and run."""
    import psutil

    try:
        children = psutil.Process(process.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        children = []
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    for child in children:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.terminate()
    for child in _still_running(children, timeout_s=5):
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()
    return process.returncode


def _still_running(processes: list[Any], timeout_s: float) -> list[Any]:
    """Those of `processes` (psutil) still running after up to `timeout_s`, polled every 20 ms
    (psutil.wait_procs backs off to over a second for processes that are not our children)."""
    import psutil

    def running(proc: Any) -> bool:
        try:
            return bool(proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE)
        except psutil.NoSuchProcess:
            return False

    deadline = time.monotonic() + timeout_s
    alive = [p for p in processes if running(p)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.02)
        alive = [p for p in alive if running(p)]
    return alive


CANARY_ENV = {  # the default two workers, a canary on half the traffic, client networks from a trusted proxy
    "DIGITSERVE_MODELS": "cnn",
    "DIGITSERVE_WORKERS": "2",
    "DIGITSERVE_POLL_SECONDS": "1",
    "DIGITSERVE_CANARY_ALIAS": "canary",
    "DIGITSERVE_CANARY_PERCENT": "50",
    "FORWARDED_ALLOW_IPS": "127.0.0.1",  # steady_load's clients say which network they are
}


@contextmanager
def running_server(
    env: Mapping[str, str] | None = None, *, log_path: Path | None = None, ready_timeout_s: float = READY_TIMEOUT_S
) -> Iterator[str]:
    """`with running_server({...}) as base_url:` — a started server, stopped on the way out."""
    process, base_url = start_server(env, log_path=log_path, ready_timeout_s=ready_timeout_s)
    try:
        yield base_url
    finally:
        stop_server(process)


def metric(url: str, name: str, **labels: str) -> float:
    """The sum of the /metrics samples called `name` whose labels include `labels`."""
    scraped = httpx.get(f"{url}/metrics")
    assert scraped.status_code == 200, f"/metrics answered {scraped.status_code}: {scraped.text[:200]}"
    return metric_in(scraped.text, name, **labels)


LOOP_LAG = "digitserve_event_loop_lag_seconds"  # taken inside the server every 50 ms, in every worker


def loop_lags_over(url: str, bound_s: float) -> float:
    """How many of the server's event-loop lag readings so far exceeded `bound_s` (a bucket edge of
    the histogram): what a wall-clock bound on some request would measure, without the client's
    own scheduling on a shared machine."""
    text = httpx.get(f"{url}/metrics").text
    return metric_in(text, f"{LOOP_LAG}_count") - metric_in(text, f"{LOOP_LAG}_bucket", le=str(bound_s))


def metric_in(text: str, name: str, **labels: str) -> float:
    """The sum of the samples called `name` whose labels include `labels`, in a /metrics text."""
    total = 0.0
    for line in text.splitlines():
        named = line.startswith((name + "{", name + " "))
        if named and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def model_info(url: str, model: str) -> dict[str, Any]:
    """`GET /v1/models/{model}`; generous timeout: while the registry is down its listing retries."""
    response = httpx.get(f"{url}/v1/models/{model}", timeout=60)
    assert response.status_code == 200, response.text
    return dict(response.json())


def wait_for_polls(url: str, model: str, polls: int = 2, timeout_s: float = 30) -> None:
    """Wait until the server has re-read the registry `polls` more times (its `last_poll_at` moved
    on that often): what "after the next polls" means, without a sleep guessing the interval."""

    def polled_after(moment: float) -> bool:
        return bool(model_info(url, model)["last_poll_at"] > moment)

    for _ in range(polls):
        moment = model_info(url, model)["last_poll_at"]
        wait_until(lambda: polled_after(moment), timeout_s, "the next registry poll")  # noqa: B023 (called at once)


def wait_until(check: Callable[[], bool], timeout_s: float, what: str, interval_s: float = 0.25) -> float:
    """Poll `check` until it holds; returns the seconds it took, fails the test past `timeout_s`."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout_s:
            raise AssertionError(f"{what}: not within {timeout_s:.0f}s")
        time.sleep(interval_s)
    return time.monotonic() - start
