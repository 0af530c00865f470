"""How much feedback one client may send: a token bucket per client, keyed by its network address."""

from __future__ import annotations

import hashlib
import ipaddress
import time
from collections import OrderedDict


def client_key(host: str | None) -> tuple[str, str]:
    """(the key the rate limit counts by, the pseudonym a sample records) for a client's address.

    The address is the connection's, or behind a load balancer what `FORWARDED_ALLOW_IPS` lets
    X-Forwarded-For say. IPv6 clients are counted by their /64, which one client can fill. The
    pseudonym is a hash of the network (/24, /48), not of the address: enough to see one sender's
    flood, and not the person."""
    host = host or "unknown"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host, _hash(host)
    if address.version == 6:
        key = str(ipaddress.ip_network(f"{address}/64", strict=False))
        return key, _hash(str(ipaddress.ip_network(f"{address}/48", strict=False)))
    return host, _hash(str(ipaddress.ip_network(f"{address}/24", strict=False)))


def _hash(text: str) -> str:
    return hashlib.sha256(f"digitserve-client:{text}".encode()).hexdigest()[:16]


class RateLimiter:
    """A token bucket per client: `per_minute` samples a minute, bursts up to the same number."""

    def __init__(self, per_minute: int, max_clients: int = 10_000) -> None:
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0
        self.max_clients = max_clients
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # client -> (tokens, at)

    def take(self, client: str) -> float | None:
        """Take one token for `client`: None if it had one, else the seconds until it will."""
        now = time.monotonic()
        tokens, at = self._buckets.pop(client, (self.capacity, now))
        tokens = min(self.capacity, tokens + (now - at) * self.rate)
        wait = None if tokens >= 1 else (1 - tokens) / self.rate
        self._buckets[client] = (tokens - 1 if wait is None else tokens, now)
        while len(self._buckets) > self.max_clients:
            self._buckets.popitem(last=False)  # the longest-idle client's: memory stays bounded
        return wait
