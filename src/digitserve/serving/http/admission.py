"""Admission of predictions on arrival: one check, made once per request, by whichever sees the
request first -- the HTTP protocol (protocol.py, before any ASGI work, on a kept-alive connection)
or the edge middleware (edge.py, for every request the protocol did not judge).

A prediction is refused 503 + `Retry-After` before its body is read once `max_requests` are in
progress, or when the version its alias serves has no queue room for even one image: it could
not be queued whatever it holds, and reading and parsing its body would only take CPU from the
forward pass. A request that pins its version (`?version=`, `?alias=`, `/versions/{n}/`) is
judged when it is queued. An admitted prediction's deadline starts here, so it covers reading,
decoding, queueing and the forward pass; the request's state carries it (`DEADLINE`). A
prediction counts as in progress only once its whole body has arrived: a client that sends
headers and then stalls holds a connection (bounded by protocol.py), not a slot.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from digitserve.serving.errors import HttpError, OverloadedError, ServiceError, http_error
from digitserve.serving.http.routes import MATCHED, Prediction, match_prediction

DEADLINE = "digitserve.deadline"  # request state: time.monotonic() by which the answer is due
RoomCheck = Callable[[str, int], None]  # (model, images): raises when they cannot be queued


@dataclass
class Admission:
    """What admission control knows, shared by the protocol's early answer and the edge middleware."""

    max_requests: int
    timeout_s: float
    max_body_bytes: int
    check_room: RoomCheck
    draining: Callable[[], bool]
    in_progress: int = 0  # predictions whose body has arrived and whose answer has not gone

    def admit(self, prediction: Prediction, state: dict[str, Any]) -> HttpError | None:
        """The arrival check: a 503 to answer, or None (admitted: its deadline is stamped)."""
        if self.in_progress >= self.max_requests:
            message = f"{self.in_progress} predictions in progress, the server's limit; retry shortly"
            return http_error(OverloadedError(message))
        if not prediction.pinned:
            try:
                self.check_room(prediction.model, 1)
            except ServiceError as exc:
                if exc.status_code == 503:
                    return http_error(exc)  # an unknown model is the route's own 404
        state[DEADLINE] = time.monotonic() + self.timeout_s
        return None

    def early_answer(
        self, method: bytes, url: bytes, headers: list[tuple[bytes, bytes]], state: dict[str, Any]
    ) -> tuple[Prediction, HttpError] | None:
        """The 503 of a prediction refused on arrival, for the protocol to send on a kept-alive
        connection; None sends the request down the usual path, admitted or (anything unusual: a
        draining server, an escaped path, a body over the limit, `Connection: close`) left for the
        edge middleware to judge."""
        if method != b"POST" or self.draining():
            return None
        raw_path, _, query = url.partition(b"?")
        if not raw_path.isascii() or b"%" in raw_path:
            return None
        prediction = match_prediction(raw_path.decode("ascii"), query)
        if prediction is None or not _plain_body(headers, self.max_body_bytes):
            return None
        state[MATCHED] = prediction
        refusal = self.admit(prediction, state)
        return None if refusal is None else (prediction, refusal)


def _plain_body(headers: list[tuple[bytes, bytes]], max_body_bytes: int) -> bool:
    for name, value in headers:
        if name == b"connection" and b"close" in value.lower():
            return False
        if name == b"content-length" and (not value.isdigit() or int(value) > max_body_bytes):
            return False
    return True
