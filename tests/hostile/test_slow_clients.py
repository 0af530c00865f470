"""Round two, items 2 and 3: slow and oversized clients against a real server.

Each test reproduces a defect of the shipped main (uvicorn's httptools protocol with no limits):
stalled bodies filled every prediction slot, silent or half-sent requests stayed open forever,
the file-descriptor limit dropped clients and broke the alias poller, and a header or URL of any
size was buffered whole. The fix is serving/http/protocol.py plus admission counting a prediction
only once its body has arrived (serving/http/edge.py).
"""

from __future__ import annotations

import selectors
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from support.registries import copy_shipped, publish_variant
from support.server import DIGITSERVE, metric, model_info, spawn, start_server, stop_server, wait_until

from digitserve.registry import ModelRegistry
from digitserve.serving.api.schemas import EXAMPLE_PNG_B64

pytestmark = [pytest.mark.slow, pytest.mark.solo]  # solo: the server's timers are read by the client's clock

HEAD_TIMEOUT_S, BODY_TIMEOUT_S = 1.5, 3.0
LIMITS = {
    "DIGITSERVE_HEAD_TIMEOUT_S": str(HEAD_TIMEOUT_S),
    "DIGITSERVE_BODY_TIMEOUT_S": str(BODY_TIMEOUT_S),
    "DIGITSERVE_MAX_CONCURRENT_REQUESTS": "64",
    "DIGITSERVE_POLL_SECONDS": "0.5",
    "DIGITSERVE_MODELS": "cnn",
}


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> ModelRegistry:
    return copy_shipped(tmp_path_factory.mktemp("registry"))


@pytest.fixture(scope="module")
def server(registry: ModelRegistry, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    env = {"DIGITSERVE_REGISTRY": registry.uri, **LIMITS}
    process, url = start_server(env, log_path=tmp_path_factory.mktemp("logs") / "server.log")
    yield url
    assert stop_server(process) == 0


def connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=30)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def read_until_closed(sock: socket.socket, within_s: float) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection, and the seconds that took;
    fails if the connection is still open after `within_s`."""
    sock.settimeout(within_s)
    started, received = time.monotonic(), b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except TimeoutError:
        pytest.fail(f"still open after {within_s} s; received {received[:200]!r}")
    except ConnectionResetError:
        pass
    finally:
        sock.close()
    return received, time.monotonic() - started


def first_answers(clients: list[socket.socket], within_s: float) -> list[bytes]:
    """What the server sent on each connection that got anything within `within_s`."""
    answers = []
    with selectors.DefaultSelector() as selector:
        for sock in clients:
            sock.setblocking(False)
            selector.register(sock, selectors.EVENT_READ)
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline:
            for key, _ in selector.select(timeout=0.05):
                answers.append(key.fileobj.recv(65536))  # type: ignore[union-attr]
                selector.unregister(key.fileobj)
    return answers


def predict(url: str) -> httpx.Response:
    return httpx.post(f"{url}/v1/models/cnn/predict", json={"images": [EXAMPLE_PNG_B64]}, timeout=30)


def test_stalled_bodies_hold_no_prediction_slot_and_time_out(server: str) -> None:
    """512 POSTs send their headers and part of the body, then stall: predictions still answer
    (on main every prediction was 503 while they stayed open), and each stalled request is
    answered 408 and closed once the body time limit passes."""
    head = b"POST /v1/models/cnn/predict HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
    stalled = []
    for _ in range(512):
        sock = connect(server)
        sock.sendall(head + b"Content-Length: 1000\r\n\r\n" + b'{"images": [')
        stalled.append(sock)
    opened = time.monotonic()
    answers = [predict(server) for _ in range(5)]
    assert [a.status_code for a in answers] == [200] * 5, answers[-1].text
    assert time.monotonic() - opened < BODY_TIMEOUT_S, "the check must run while the bodies are stalled"
    for sock in stalled:
        received, _ = read_until_closed(sock, BODY_TIMEOUT_S + 10)
        assert received.startswith(b"HTTP/1.1 408 "), received[:200]
        assert b"request body did not arrive" in received
    assert time.monotonic() - opened >= BODY_TIMEOUT_S - 0.5
    assert predict(server).status_code == 200


@pytest.mark.parametrize(
    "sent",
    [
        b"",
        b"POST /v1/mod",
        b"GET /healthz HTTP/1.1\r\nHost: t\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\nGET /healthz HTTP/1.1\r\nHo",  # the next request, half sent
    ],
    ids=["nothing", "partial-line", "partial-headers", "partial-second-request"],
)
def test_silent_and_half_sent_requests_are_closed(server: str, sent: bytes) -> None:
    """On main each of these stayed open past KEEP_ALIVE_S (75 s), holding a file descriptor."""
    sock = connect(server)
    sock.sendall(sent)
    received, took = read_until_closed(sock, HEAD_TIMEOUT_S + 5)
    assert took < HEAD_TIMEOUT_S + 2
    if sent.count(b"\r\n\r\n") == 1:
        assert received.startswith(b"HTTP/1.1 200 ")  # the complete request was answered first
        received = received[received.index(b"HTTP/1.1 ", 10) :]
    if sent.endswith(b"\r\n\r\n") or not sent:
        assert received == b""
    else:
        assert received.startswith(b"HTTP/1.1 408 ") and b"request line and headers did not arrive" in received


def send_until_answered(sock: socket.socket, chunks: Iterator[bytes]) -> tuple[bytes, int]:
    """Send chunks until the server answers (or stops reading); returns its answer and the bytes sent."""
    sent = 0
    sock.settimeout(0.05)
    for chunk in chunks:
        try:
            sock.sendall(chunk)
            sent += len(chunk)
            if sock.recv(65536, socket.MSG_PEEK):
                break
        except TimeoutError:
            continue
        except (BrokenPipeError, ConnectionResetError):
            break
    received, _ = read_until_closed(sock, 10)
    return received, sent


def test_a_huge_url_is_refused_before_it_is_sent_in_full(server: str) -> None:
    """On main a 64 KiB URL was buffered whole before its 400."""
    sock = connect(server)
    parts = iter([b"GET /healthz?q="] + [b"a" * 4096] * 16 + [b" HTTP/1.1\r\nHost: t\r\n\r\n"])
    received, sent = send_until_answered(sock, parts)
    assert received.startswith(b"HTTP/1.1 414 ") and b"URL is over the 8192 byte limit" in received, received[:300]
    assert sent < 32 * 1024


def test_a_huge_header_is_refused_as_it_arrives(server: str) -> None:
    """On main a 64 MiB header was accepted (7.6 s of CPU); now 431 after the first tens of KB."""
    sock = connect(server)
    chunks = (b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Pad: " if i == 0 else b"a" * 65536 for i in range(1024))
    started = time.monotonic()
    received, sent = send_until_answered(sock, chunks)
    assert received.startswith(b"HTTP/1.1 431 "), received[:300]
    assert b"over the 32768 byte limit" in received
    assert sent < 1024 * 1024 and time.monotonic() - started < 5
    many = connect(server)  # many small headers: the total counts, not each one
    received, _ = send_until_answered(many, iter([b"GET /healthz HTTP/1.1\r\n" + b"X-A: bbbbbbbbbbbb\r\n" * 4000]))
    assert received.startswith(b"HTTP/1.1 431 ")


def test_headers_within_the_limit_are_served(server: str) -> None:
    r = httpx.get(f"{server}/healthz", headers={f"X-Pad-{i}": "c" * 1000 for i in range(20)}, timeout=30)
    assert r.status_code == 200
    assert httpx.get(f"{server}/healthz?q={'d' * 7000}", timeout=30).status_code == 200


def test_at_the_descriptor_limit_clients_get_503_and_the_poller_keeps_working(
    registry: ModelRegistry, tmp_path: Path
) -> None:
    """A server allowed 220 file descriptors, and 260 clients that connect and wait: on main the
    accepts failed with EMFILE (clients dropped unanswered) and so did the alias poller's reads.
    Now connections stop below the limit: the rest are answered 503 at once, and an alias move
    made meanwhile is served."""
    variant = publish_variant(registry, "cnn", 1)
    env = {"DIGITSERVE_REGISTRY": registry.uri, "DIGITSERVE_WORKERS": "1", **LIMITS, "DIGITSERVE_HEAD_TIMEOUT_S": "4"}
    log = tmp_path / "server.log"
    cmd = ["prlimit", "--nofile=220:220", str(DIGITSERVE), "serve", "--host", "127.0.0.1"]
    process, url, _ = spawn(cmd, env, log_path=log)
    try:
        clients = [connect(url) for _ in range(260)]
        registry.move_alias("cnn", "production", variant)  # the poller reads it while they are held
        answers = first_answers(clients, within_s=2.0)
        assert all(a.startswith(b"HTTP/1.1 503 ") and b"connections are open" in a for a in answers), answers[:3]
        assert 40 <= len(answers) <= 200, len(answers)  # the rest are held open, waiting for a request
        for sock in clients:
            sock.close()
        wait_until(lambda: model_info(url, "cnn")["serving"]["version"] == variant, 20, "the alias move served")
        assert model_info(url, "cnn")["last_reload_error"] is None
        assert predict(url).json()["version"] == variant
        assert metric(url, "digitserve_protocol_refusals_total", reason="overloaded") == len(answers)
    finally:
        assert stop_server(process) == 0
    text = log.read_text()
    assert "Too many open files" not in text and "EMFILE" not in text, text[-2000:]
