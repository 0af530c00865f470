"""How much feedback one client may send: token buckets keyed by where the client is, shared by
every worker of a server.

A request takes a token from two buckets, or from neither: the client's own (its IPv4 address,
or its IPv6 /64) at `per_minute`, and its network's (IPv4 /24, IPv6 /48: what one sender easily
holds) at `NETWORK_FACTOR` times that. The key is always an address or `other` (clients.py):
never a string the client wrote, so keys stay few and small. With several worker processes the
buckets live in one file in the server's runtime folder (`SharedBuckets`), so two workers allow
what one does, not twice as much.
"""

from __future__ import annotations

import fcntl
import hashlib
import mmap
import os
import struct
import time
from collections import OrderedDict
from pathlib import Path
from typing import Protocol

from digitserve.serving.clients import address_of, network_of, pseudonym

NETWORK_FACTOR = 10  # a network may send ten clients' worth
SLOTS = 1 << 15  # buckets in the shared file (32,768 x 24 bytes: 768 KiB)
PROBES = 8
SLOT = struct.Struct("<Qdd")  # key hash, tokens, last refill (time.monotonic: one clock for every process)


def client_key(host: str | None) -> tuple[str, str]:
    """(the client's own bucket key, the pseudonym a sample records: a hash of its network)."""
    address = address_of(host)
    network = network_of(host)
    if address is None:
        return network, pseudonym(network)
    own = str(address) if address.version == 4 else network_of(host, v6=64)
    return own, pseudonym(network)


class Buckets(Protocol):
    def take(self, keys: list[tuple[str, float]], rate_per_s: float) -> float | None:
        """A token from each `(key, capacity)` bucket, or none: None, or the seconds until all have one."""


class MemoryBuckets:
    """One process's buckets, the least recently used forgotten past `max_clients`."""

    def __init__(self, max_clients: int = 10_000) -> None:
        self.max_clients = max_clients
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key -> (tokens, at)

    def take(self, keys: list[tuple[str, float]], rate_per_s: float) -> float | None:
        now = time.monotonic()
        levels = []
        for key, capacity in keys:
            tokens, at = self._buckets.pop(key, (capacity, now))
            levels.append((key, min(capacity, tokens + (now - at) * rate_per_s)))
        wait = max(((1 - tokens) / rate_per_s for _, tokens in levels if tokens < 1), default=None)
        for key, tokens in levels:
            self._buckets[key] = (tokens - 1 if wait is None else tokens, now)
        while len(self._buckets) > self.max_clients:
            self._buckets.popitem(last=False)  # the longest-idle client's: memory stays bounded
        return wait


class SharedBuckets:
    """The buckets of every worker of one server, in a file of fixed size under a file lock."""

    def __init__(self, path: Path) -> None:
        self.path = path
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if os.fstat(fd).st_size < SLOTS * SLOT.size:
                os.ftruncate(fd, SLOTS * SLOT.size)
            self._map = mmap.mmap(fd, SLOTS * SLOT.size)
        finally:
            os.close(fd)
        self._lock = open(path, "rb")  # noqa: SIM115 - held for the process's life: flock on it

    def take(self, keys: list[tuple[str, float]], rate_per_s: float) -> float | None:
        now = time.monotonic()
        fcntl.flock(self._lock, fcntl.LOCK_EX)
        try:
            found = [(self._slot(key, capacity / rate_per_s, now), key, capacity) for key, capacity in keys]
            levels = []
            for (slot, fresh), key, capacity in found:
                tokens, at = (capacity, now) if fresh else SLOT.unpack_from(self._map, slot * SLOT.size)[1:]
                elapsed = max(0.0, now - at)  # a file from before a reboot holds times ahead of this clock
                levels.append((slot, _hash(key), min(capacity, tokens + elapsed * rate_per_s)))
            wait = max(((1 - tokens) / rate_per_s for _, _, tokens in levels if tokens < 1), default=None)
            for slot, hashed, tokens in levels:
                SLOT.pack_into(self._map, slot * SLOT.size, hashed, tokens - 1 if wait is None else tokens, now)
            return wait
        finally:
            fcntl.flock(self._lock, fcntl.LOCK_UN)

    def _slot(self, key: str, refill_s: float, now: float) -> tuple[int, bool]:
        """(the key's slot, whether it starts afresh): its own, else an empty or idle one (a bucket
        idle for a whole refill is full anyway), else the first probed -- shared, never unlimited."""
        hashed = _hash(key)
        first = hashed % SLOTS
        free = None
        for i in range(PROBES):  # its own slot first, wherever in the window it is
            slot = (first + i) % SLOTS
            owner, _, at = SLOT.unpack_from(self._map, slot * SLOT.size)
            if owner == hashed:
                return slot, False
            if free is None and (owner == 0 or not 0 <= now - at <= refill_s):
                free = slot
        return (free, True) if free is not None else (first, False)


def _hash(key: str) -> int:
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little") or 1


class RateLimiter:
    """`per_minute` samples a minute per client, bursts up to the same number (module docstring)."""

    def __init__(self, per_minute: int, buckets: Buckets | None = None, max_clients: int = 10_000) -> None:
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0
        self.buckets = buckets or MemoryBuckets(max_clients)

    def take(self, client: str) -> float | None:
        """Take one token for the client at address `client` (and its network): None if there was
        one, else the seconds until there will be."""
        own, _ = client_key(client)
        network = network_of(client)
        keys = [(f"client:{own}", self.capacity)]
        if network != own:
            keys.append((f"network:{network}", self.capacity * NETWORK_FACTOR))
        return self.buckets.take(keys, self.rate)
