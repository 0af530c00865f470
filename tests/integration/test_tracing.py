"""Issue 26, item 3: OpenTelemetry traces to a real OTLP receiver process (tests/support/
otlp_receiver.py), from a real server in the default layout. A request is a server span --
the child of the client's W3C `traceparent` when it sent one -- with a child span per stage it
went through; its access-log line names the trace. Without an OTLP endpoint there is no tracer."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from support.server import start_server, stop_server

from digitserve.serving.api.schemas import EXAMPLE_PNG_B64

pytestmark = pytest.mark.slow

RECEIVER = Path(__file__).resolve().parents[1] / "support" / "otlp_receiver.py"
SERVER_KIND = 2  # SpanKind.SPAN_KIND_SERVER in OTLP


@pytest.fixture(scope="module")
def receiver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    out = tmp_path_factory.mktemp("otlp") / "spans.jsonl"
    process = subprocess.Popen([sys.executable, str(RECEIVER), str(out)], stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    port = int(process.stdout.readline())
    yield port, out
    process.terminate()
    process.wait(10)


@pytest.fixture(scope="module")
def server(receiver: tuple[int, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    log = tmp_path_factory.mktemp("logs") / "server.log"
    env = {
        "DIGITSERVE_WORKERS": "auto",
        "DIGITSERVE_MODELS": "cnn",
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{receiver[0]}",
        "OTEL_BSP_SCHEDULE_DELAY": "100",  # ms: export soon after each span
    }
    process, url = start_server(env, log_path=log)
    yield url, log
    assert stop_server(process) == 0


def spans_of_trace(out: Path, trace_id: str, at_least: int, within_s: float = 15.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + within_s
    while True:
        lines = out.read_text().splitlines() if out.exists() else []
        spans = [s for s in map(json.loads, lines) if s["trace_id"] == trace_id]
        if len(spans) >= at_least or time.monotonic() > deadline:
            return spans
        time.sleep(0.1)


def access_line(log: Path, request_id: str) -> dict[str, Any]:
    for _ in range(100):
        for line in log.read_text().splitlines():
            entry = json.loads(line)
            if entry.get("request_id") == request_id and entry["logger"] == "digitserve.access":
                return dict(entry)
        time.sleep(0.05)
    raise AssertionError(f"no access line for {request_id}")


def check_stages(spans: list[dict[str, Any]], expected: set[str]) -> dict[str, Any]:
    """The one server span, and its children: one per expected stage, inside its time."""
    (server,) = [s for s in spans if s["kind"] == SERVER_KIND]
    children = [s for s in spans if s["parent_span_id"] == server["span_id"]]
    assert {c["name"] for c in children} == expected and len(children) == len(expected), children
    for child in children:
        assert server["start_ns"] <= child["start_ns"] <= child["end_ns"] <= server["end_ns"], child
    (batch,) = [c for c in children if c["name"] == "inference batch"]
    assert batch["attributes"]["batch_size"] >= 1 and batch["attributes"]["model"] == "cnn"
    return dict(server)


def test_a_request_is_a_span_under_the_clients_traceparent_with_its_stages(
    server: tuple[str, Path], receiver: tuple[int, Path]
) -> None:
    url, log = server
    trace_id, parent = secrets.token_hex(16), secrets.token_hex(8)
    rid = f"traced-{secrets.token_hex(4)}"
    headers = {"traceparent": f"00-{trace_id}-{parent}-01", "X-Request-ID": rid}
    r = httpx.post(f"{url}/v1/models/cnn/predict", json={"images": [EXAMPLE_PNG_B64] * 3}, headers=headers)
    assert r.status_code == 200
    spans = spans_of_trace(receiver[1], trace_id, at_least=6)
    top = check_stages(spans, {"admission", "decode", "queue wait", "inference batch", "answer"})
    assert top["name"] == "POST /v1/models/{model}/predict" and top["parent_span_id"] == parent
    assert top["service"] == "digitserve"
    attributes = top["attributes"]
    assert attributes["digitserve.request_id"] == rid and attributes["http.response.status_code"] == 200
    assert attributes["digitserve.version"] == r.json()["version"] and attributes["digitserve.images"] == 3
    assert access_line(log, rid)["trace_id"] == trace_id  # from the log line to the trace


def test_pixels_sent_as_such_have_no_decode_stage_and_start_a_trace(
    server: tuple[str, Path], receiver: tuple[int, Path]
) -> None:
    url, log = server
    rid = f"pixels-{secrets.token_hex(4)}"
    pixels = {"name": "pixels", "shape": [1, 28, 28], "datatype": "UINT8", "data": [0] * 784}
    r = httpx.post(f"{url}/v2/models/cnn/infer", json={"inputs": [pixels]}, headers={"X-Request-ID": rid})
    assert r.status_code == 200
    trace_id = access_line(log, rid)["trace_id"]
    top = check_stages(
        spans_of_trace(receiver[1], trace_id, at_least=5), {"admission", "queue wait", "inference batch", "answer"}
    )
    assert top["parent_span_id"] == "" and top["name"] == "POST /v2/models/{model}/infer"


def test_a_refused_request_is_a_span_too(server: tuple[str, Path], receiver: tuple[int, Path]) -> None:
    url, log = server
    rid = f"refused-{secrets.token_hex(4)}"
    r = httpx.post(f"{url}/v1/models/cnn/predict", json={"images": []}, headers={"X-Request-ID": rid})
    assert r.status_code == 422
    trace_id = access_line(log, rid)["trace_id"]
    (span,) = spans_of_trace(receiver[1], trace_id, at_least=1)
    assert span["attributes"]["http.response.status_code"] == 422


def test_without_an_endpoint_no_tracer_exists() -> None:
    """No SDK, no exporter, no export thread. (FastAPI imports OpenTelemetry's API when it is
    installed, and stays off while no global provider is set, which digitserve never sets.)"""
    code = (
        "import sys, threading\n"
        "from digitserve.serving.app import create_app\n"
        "app = create_app()\n"
        "native = getattr(app, '_native_telemetry', None)\n"
        "assert app.state.tracing is None and (native is None or not native.enabled())\n"
        "print(sorted(m for m in sys.modules if m.startswith(('opentelemetry.sdk', 'opentelemetry.exporter')))"
        " + [t.name for t in threading.enumerate() if 'Span' in t.name])\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
