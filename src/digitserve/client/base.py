"""What `Client` and `AsyncClient` share besides the calls: the server's URL, the retry policy,
the options of their httpx client, and the one request each attempt sends."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx

from digitserve import __version__
from digitserve.client.calls import Call, base_url
from digitserve.client.retry import Retry

USER_AGENT = f"digitserve-client/{__version__}"
Timeout = float | httpx.Timeout


class ClientBase:
    def __init__(self, url: str | None, retry: Retry | None) -> None:
        self.url = base_url(url)
        self.retry = retry if retry is not None else Retry()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"

    @staticmethod
    def _options(timeout: Timeout, headers: Mapping[str, str] | None) -> dict[str, Any]:
        return {"timeout": timeout, "headers": {"User-Agent": USER_AGENT, **(headers or {})}}

    def _request(self, call: Call[Any]) -> dict[str, Any]:
        return {"method": call.method, "url": self.url + call.path, "json": call.json, "params": call.params}

    def _delay(self, call: Call[Any], attempt: int, outcome: httpx.Response | httpx.RequestError) -> float | None:
        """Seconds before trying `call` again, or None: `outcome` is its answer."""
        return self.retry.delay(attempt, outcome) if call.retry else None
