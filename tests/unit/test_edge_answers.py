"""The edge middleware (serving/http/edge.py) answers what the app did not: a bug is a 500 with the
service's JSON body and the request's `X-Request-ID` (not Starlette's last-resort answer without
it), and a client that left before its body was read is recorded as such (499), not as a bug."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import httpx
import pytest
from starlette.requests import ClientDisconnect, Request
from starlette.types import Receive, Scope, Send

from digitserve.serving.http.admission import Admission
from digitserve.serving.http.edge import CLIENT_LEFT, EdgeMiddleware


class Recorder:
    """An observer that remembers what the edge told it."""

    def __init__(self) -> None:
        self.answers: list[tuple[str, int]] = []
        self.errors: list[bytes] = []

    def start(self, scope: Scope) -> str:
        return "rid-1"

    def error(self, scope: Scope, body: bytes) -> None:
        self.errors.append(body)

    def __call__(self, scope: Scope, status: int, seconds: float) -> None:
        self.answers.append((scope["path"], status))


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["path"] == "/bug":
        raise RuntimeError("a bug")
    await Request(scope, receive).body()
    raise ClientDisconnect()


def edge(recorder: Recorder) -> EdgeMiddleware:
    admission = Admission(8, 10.0, 1024, lambda model, n: None, lambda: False)
    return EdgeMiddleware(app, admission, {}, lambda: False, recorder)


def call(recorder: Recorder, path: str) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=edge(recorder), raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            return await client.post(path, content=b"{}")

    return asyncio.run(go())


def test_a_bug_is_a_json_500_with_the_request_id(caplog: pytest.LogCaptureFixture) -> None:
    recorder = Recorder()
    with caplog.at_level(logging.ERROR, logger="digitserve.serving.http.edge"):
        r = call(recorder, "/bug")
    assert r.status_code == 500 and r.headers["x-request-id"] == "rid-1"
    body: dict[str, Any] = r.json()
    assert body["code"] == "internal_error" and "a bug" not in r.text  # no internals to the client
    assert recorder.answers == [("/bug", 500)] and b"internal_error" in recorder.errors[0]
    assert any(record.exc_info for record in caplog.records), "the traceback is logged"


def test_a_client_that_left_is_recorded_as_such_not_as_a_bug(caplog: pytest.LogCaptureFixture) -> None:
    recorder, sent = Recorder(), []
    scope = {"type": "http", "method": "POST", "path": "/left", "headers": [], "query_string": b"", "state": {}}

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    with caplog.at_level(logging.ERROR):
        asyncio.run(edge(recorder)(scope, receive, send))
    assert recorder.answers == [("/left", CLIENT_LEFT)]
    assert sent == [] and not caplog.records  # nothing sent to no one, nothing logged as a bug
