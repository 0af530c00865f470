"""A request's id: the client's `X-Request-ID` when it is sane, else a new one, made once and kept
in the request's state, so the protocol's answer and the app's log line name the same id."""

from __future__ import annotations

import itertools
import secrets
from collections.abc import MutableMapping, Sequence
from typing import Any

HEADER = b"x-request-id"
MAX_LENGTH = 128
STATE_KEY = "digitserve.request_id"
# A new id: 16 random hex digits chosen once per process, then a counter, 32 hex digits in all:
# unique across processes and restarts as a UUID4 is, without a random draw per request.
_PREFIX = secrets.token_hex(8)
_COUNTER = itertools.count(secrets.randbelow(2**32))


def new_request_id() -> str:
    return f"{_PREFIX}{next(_COUNTER):016x}"


def request_id_from(headers: Sequence[tuple[bytes, bytes]]) -> str:
    """The client's id when it is 1 to 128 printable ASCII characters without spaces (it cannot
    break a log line or grow without bound), else a new one."""
    for name, value in headers:
        if name.lower() == HEADER:
            if 0 < len(value) <= MAX_LENGTH and value.isascii() and all(33 <= b <= 126 for b in value):
                return value.decode("ascii")
            break
    return new_request_id()


def request_id_of(state: MutableMapping[str, Any], headers: Sequence[tuple[bytes, bytes]]) -> str:
    """The request's id, made on first use and kept in its state."""
    found = state.get(STATE_KEY)
    if not isinstance(found, str):
        found = state[STATE_KEY] = request_id_from(headers)
    return found
