"""When a call is tried again, and after how long: the one policy both clients follow."""

from __future__ import annotations

import random
from dataclasses import dataclass

import httpx

from digitserve.client.errors import retry_after_s

# Failures that happen before any byte of the request left: sending it again cannot do it twice.
NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


@dataclass(frozen=True)
class Retry:
    """Retries a 503 (overloaded, shutting down, model not ready) after its `Retry-After`, at most
    `max_retry_after_s`, or after an exponential backoff when it has none; and a connection that
    failed before the request was sent, after the backoff. Never a 4xx, a 504 or a request that
    may have reached the server. `attempts` counts the first one: `Retry(attempts=1)` never retries.

    The backoff before attempt n+1 is `backoff_s * 2**(n-1)`, at most `max_backoff_s`, scaled by
    a random 0.5-1 so that clients refused together do not come back together.
    """

    attempts: int = 3
    backoff_s: float = 0.25
    max_backoff_s: float = 4.0
    max_retry_after_s: float = 10.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("Retry.attempts counts the first attempt: at least 1")
        if min(self.backoff_s, self.max_backoff_s, self.max_retry_after_s) < 0:
            raise ValueError("Retry's waits cannot be negative")

    def delay(self, attempt: int, outcome: httpx.Response | httpx.RequestError) -> float | None:
        """Seconds to wait before trying again after attempt number `attempt` ended in `outcome`;
        None when that outcome is final."""
        if attempt >= self.attempts:
            return None
        if isinstance(outcome, httpx.Response):
            if outcome.status_code != 503:
                return None
            after = retry_after_s(outcome.headers.get("retry-after"))
            return self.backoff(attempt) if after is None else min(after, self.max_retry_after_s)
        return self.backoff(attempt) if isinstance(outcome, NOT_SENT) else None

    def backoff(self, attempt: int) -> float:
        return min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)
