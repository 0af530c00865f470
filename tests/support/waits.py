"""Waiting on a condition inside an event loop: the async twin of `support.server.wait_until`."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


async def until(
    check: Callable[[], bool], what: str | Callable[[], str], timeout_s: float = 30.0, interval_s: float = 0.005
) -> None:
    """Turn the event loop until `check` holds; fail the test past `timeout_s`, saying `what`
    (or what `what()` says then, for a message that shows the state at the timeout)."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            said = what() if callable(what) else what
            raise AssertionError(f"not within {timeout_s:.0f} s: {said}")
        await asyncio.sleep(interval_s)
