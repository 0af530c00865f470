"""A request's record: its id, when it arrived, what it was answered, and (while tracing) its
stages. The edge's observer makes it (requests.py), the pipeline fills it in, the access log and
the spans (tracing.py) read it."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
from starlette.types import Scope

RECORD = "digitserve.record"  # request state: this request's RequestRecord
ERROR_CODE = re.compile(rb'"code":\s*"([a-z_]{1,40})"')  # the service's JSON error body (serving/errors.py)


class Stage(NamedTuple):
    name: str  # admission, decode, queue wait, inference batch, answer
    start: float  # time.monotonic()
    end: float
    attributes: dict[str, Any]


@dataclass(slots=True)
class Answer:
    model: str
    version: int
    alias: str | None
    probabilities: np.ndarray  # (n, 10)
    is_digit: np.ndarray  # (n,)


@dataclass(slots=True)
class RequestRecord:
    request_id: str
    arrived: float = field(default_factory=time.monotonic)
    wall_ns: int = field(default_factory=time.time_ns)  # the same instant, for spans
    answer: Answer | None = None
    answered_at: float | None = None
    stages: list[Stage] | None = None  # kept only while tracing
    code: str | None = None  # the error code of a 4xx/5xx answer

    def stage(self, name: str, start: float, end: float, **attributes: Any) -> None:
        if self.stages is not None:
            self.stages.append(Stage(name, start, end, attributes))

    def answered(self, answer: Answer) -> None:
        self.answer, self.answered_at = answer, time.monotonic()

    def error_body(self, body: bytes) -> None:
        """Note the error code of an error answer's body (the first one)."""
        if self.code is None:
            found = ERROR_CODE.search(body[:4096])
            self.code = found.group(1).decode() if found else "other"


def record_of(scope: Scope) -> RequestRecord:
    record: RequestRecord = scope["state"][RECORD]
    return record


def prediction_record(scope: Scope) -> RequestRecord | None:
    """The record of a request that came through the edge (None for one that did not: tests)."""
    found = scope.get("state", {}).get(RECORD)
    return found if isinstance(found, RequestRecord) else None
