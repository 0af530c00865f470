"""Issue 26, items 1 and 2, on a real server in the default layout (`--workers auto`): every
request is one JSON line on stdout, findable by the `X-Request-ID` its answer carries -- the
protocol's early refusals (408, 414, 431) included -- with its route template (never the raw
path), status, duration and client, and for predictions the model, version, alias, image count
and (with DIGITSERVE_LOG_ANSWERS) the labels. A client's id is kept only when it is sane."""

from __future__ import annotations

import base64
import io
import json
import re
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image
from support.server import start_server, stop_server

from digitserve.serving.api.schemas import EXAMPLE_PNG_B64  # a real MNIST "7"

pytestmark = pytest.mark.slow

GENERATED = re.compile(r"^[0-9a-f]{32}$")
HEAD_TIMEOUT_S = BODY_TIMEOUT_S = 1.0


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    log = tmp_path_factory.mktemp("logs") / "server.log"
    env = {
        "DIGITSERVE_WORKERS": "auto",  # what the Dockerfile and ECS run
        "DIGITSERVE_LOG_ANSWERS": "true",
        "DIGITSERVE_HEAD_TIMEOUT_S": str(HEAD_TIMEOUT_S),
        "DIGITSERVE_BODY_TIMEOUT_S": str(BODY_TIMEOUT_S),
        "DIGITSERVE_MODELS": "cnn",
    }
    process, url = start_server(env, log_path=log)
    yield url, log
    assert stop_server(process) == 0


def log_lines(log: Path) -> list[dict[str, Any]]:
    """Every line the server wrote, each a JSON object (the test fails on one that is not)."""
    lines = []
    text = log.read_text()
    complete = text[: text.rfind("\n") + 1]  # a line still being written is read next time
    for n, line in enumerate(complete.splitlines()):
        try:
            lines.append(json.loads(line))
        except ValueError:
            pytest.fail(f"line {n + 1} of the server's output is not JSON: {line[:200]!r}")
        assert isinstance(lines[-1], dict), line
    return lines


def access_lines(log: Path, request_id: str) -> list[dict[str, Any]]:
    return [x for x in log_lines(log) if x.get("logger") == "digitserve.access" and x["request_id"] == request_id]


def access_line(log: Path, request_id: str, within_s: float = 10.0, second_s: float = 0.0) -> dict[str, Any]:
    """The one access-log line of `request_id` (written just after its answer); with `second_s`,
    a second one (were the app and the protocol both to write one) is looked for that long more."""
    deadline = time.monotonic() + within_s
    while not (found := access_lines(log, request_id)) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(second_s)
    found = access_lines(log, request_id)
    assert len(found) == 1, f"{len(found)} access lines for {request_id}: {found}"
    return found[0]


def new_id() -> str:
    return f"test-{uuid.uuid4()}"


def png_b64(pixels: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_a_prediction_is_one_line_with_its_model_version_and_answers(server: tuple[str, Path]) -> None:
    url, log = server
    rid = new_id()
    square = np.zeros((28, 28), np.uint8)
    square[4:24, 4:24] = 255  # a filled square: not a digit
    r = httpx.post(
        f"{url}/v1/models/cnn/predict",
        json={"images": [EXAMPLE_PNG_B64, png_b64(square)]},
        headers={"X-Request-ID": rid},
    )
    assert r.status_code == 200 and r.headers["x-request-id"] == rid
    line = access_line(log, rid)
    assert line["level"] == "INFO" and line["time"]
    assert line["method"] == "POST" and line["route"] == "/v1/models/{model}/predict" and line["status"] == 200
    assert line["client"] == "127.0.0.1" and 0 < line["duration_ms"] < 10_000
    answer = r.json()
    assert (line["model"], line["version"], line["alias"]) == ("cnn", answer["version"], "production")
    assert line["images"] == 2
    assert line["labels"] == [p["label"] for p in answer["predictions"]] and line["labels"][0] == 7
    assert line["is_digit"] == [p["is_digit"] for p in answer["predictions"]] == [True, False]
    assert line["labels"][1] is None


def test_uploads_and_v2_carry_the_id_and_v2_answers_with_it(server: tuple[str, Path]) -> None:
    url, log = server
    rid = new_id()
    files = {"files": ("seven.png", base64.b64decode(EXAMPLE_PNG_B64), "image/png")}
    r = httpx.post(f"{url}/v1/models/cnn/predict/upload", files=files, headers={"X-Request-ID": rid})
    assert r.status_code == 200 and r.headers["x-request-id"] == rid
    assert access_line(log, rid)["route"] == "/v1/models/{model}/predict/upload"

    pixels = {"name": "pixels", "shape": [1, 28, 28], "datatype": "UINT8", "data": [0] * 784}
    rid = new_id()
    r = httpx.post(f"{url}/v2/models/cnn/infer", json={"inputs": [pixels]}, headers={"X-Request-ID": rid})
    assert r.status_code == 200 and r.json()["id"] == rid  # the client sent no id: the request's
    line = access_line(log, rid)
    assert line["route"] == "/v2/models/{model}/infer" and line["images"] == 1 and line["model"] == "cnn"
    r = httpx.post(f"{url}/v2/models/cnn/infer", json={"id": "mine", "inputs": [pixels]})
    assert r.json()["id"] == "mine" and GENERATED.match(r.headers["x-request-id"])


def test_refusals_name_their_code_and_route_never_the_raw_path(server: tuple[str, Path]) -> None:
    url, log = server
    cases = [
        ("GET", "/secret/path/12345", None, 404, "unmatched", "not_found"),
        ("POST", "/v1/models/cnn/predict", {"images": []}, 422, "/v1/models/{model}/predict", "invalid_input"),
        ("POST", "/v1/models/nosuch/predict", {"images": [EXAMPLE_PNG_B64]}, 404, "/v1/models/{model}/predict", None),
    ]
    for method, path, body, status, route, code in cases:
        rid = new_id()
        r = httpx.request(method, f"{url}{path}", json=body, headers={"X-Request-ID": rid})
        assert r.status_code == status and r.headers["x-request-id"] == rid
        line = access_line(log, rid)
        assert (line["route"], line["status"]) == (route, status)
        assert line["code"] == (code or r.json()["code"])
        assert "secret" not in json.dumps(line) and "nosuch" not in line["route"]
    rid = new_id()  # over the body limit: refused by the edge before the body is read
    head = (
        "POST /v1/models/cnn/predict HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
        f"X-Request-ID: {rid}\r\nContent-Length: {64 * 1024 * 1024}\r\n\r\n"
    )
    response = raw_exchange(url, head.encode())
    assert response.startswith(b"HTTP/1.1 413") and answered_id(response) == rid
    assert access_line(log, rid)["code"] == "payload_too_large"


@pytest.mark.parametrize("given", ["x" * 129, "has space", "tab\there", "caf\u00e9", ""])
def test_an_insane_id_is_replaced_by_a_new_one(server: tuple[str, Path], given: str) -> None:
    url, log = server
    headers = [(b"x-request-id", given.encode())]
    r = httpx.get(f"{url}/healthz", headers=headers)
    assert r.status_code == 200 and GENERATED.match(r.headers["x-request-id"]), r.headers
    assert access_line(log, r.headers["x-request-id"])["route"] == "/healthz"


def raw_exchange(url: str, data: bytes, wait_s: float = 10.0) -> bytes:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=wait_s) as sock:
        sock.sendall(data)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    return received


def answered_id(response: bytes) -> str:
    head = response.split(b"\r\n\r\n", 1)[0].decode("latin-1")
    found = re.search(r"(?im)^x-request-id: (\S+)\r?$", head)
    assert found, head
    return found.group(1)


def test_the_protocols_own_refusals_carry_an_id_and_are_logged(server: tuple[str, Path]) -> None:
    url, log = server
    rid = new_id()
    huge_header = f"POST /v1/models/cnn/predict HTTP/1.1\r\nHost: t\r\nX-Request-ID: {rid}\r\nX-Big: "
    response = raw_exchange(url, huge_header.encode() + b"a" * 40_000 + b"\r\n\r\n")
    assert response.startswith(b"HTTP/1.1 431") and answered_id(response) == rid
    line = access_line(log, rid)
    assert (line["status"], line["code"], line["method"]) == (431, "headers_too_large", "POST")

    response = raw_exchange(url, b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: t\r\n\r\n")
    assert response.startswith(b"HTTP/1.1 414")
    line = access_line(log, answered_id(response))
    assert (line["status"], line["code"], line["route"]) == (414, "uri_too_long", "unmatched")

    rid = new_id()  # a head that never ends: 408 after the head time limit
    partial = f"POST /v1/models/cnn/predict HTTP/1.1\r\nHost: t\r\nX-Request-ID: {rid}\r\nX-Slow: 1"
    response = raw_exchange(url, partial.encode(), wait_s=HEAD_TIMEOUT_S + 10)
    assert response.startswith(b"HTTP/1.1 408")
    assert answered_id(response) == rid  # the headers read before the time ran out name it
    assert access_line(log, rid)["code"] == "request_timeout"


def test_a_body_too_slow_is_one_408_line_and_never_a_500(server: tuple[str, Path]) -> None:
    """The protocol answers 408 while the app waits for the body: the app's own outcome (the
    client is gone) is not a second line, nor a 500 in the metrics."""
    url, log = server
    paths = {"/v2/models/cnn/infer": "application/json", "/v1/models/cnn/predict": "application/json"}
    for path, content_type in {**paths, "/v1/models/cnn/predict/upload": "text/csv"}.items():
        rid = new_id()
        head = (
            f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Type: {content_type}\r\n"
            f'X-Request-ID: {rid}\r\nContent-Length: 1000\r\n\r\n{{"inputs": ['
        )
        response = raw_exchange(url, head.encode(), wait_s=BODY_TIMEOUT_S + 10)
        assert response.startswith(b"HTTP/1.1 408") and answered_id(response) == rid, response[:200]
        line = access_line(log, rid, second_s=0.5)  # the app's outcome comes after the protocol's 408
        assert (line["status"], line["code"], line["route"]) == (408, "request_timeout", path.replace("cnn", "{model}"))
    metrics = httpx.get(f"{url}/metrics").text
    assert not re.search(r'digitserve_requests_total\{[^}]*status="500"', metrics)
    assert "unexpected error" not in log.read_text()


def test_a_request_uvicorn_cannot_parse_is_a_json_400_with_an_id(server: tuple[str, Path]) -> None:
    url, log = server
    response = raw_exchange(url, b"GET / HTTP/1.1\r\nHost: t\r\nBad Header Name: x\r\n\r\n")
    assert response.startswith(b"HTTP/1.1 400")
    body = json.loads(response.split(b"\r\n\r\n", 1)[1])
    assert body["code"] == "bad_request" and "cannot be parsed" in body["error"]
    line = access_line(log, answered_id(response))
    assert (line["status"], line["code"]) == (400, "bad_request")


def test_every_line_of_the_output_is_json(server: tuple[str, Path]) -> None:
    url, log = server
    httpx.get(f"{url}/readyz")
    lines = log_lines(log)
    loggers = {line["logger"] for line in lines}
    assert {"uvicorn.error", "digitserve.access"} <= loggers, loggers  # uvicorn's own lines too
    assert all({"time", "level", "logger", "message"} <= line.keys() for line in lines)
