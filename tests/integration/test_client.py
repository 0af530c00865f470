"""digitserve.client and `digitserve predict` against a real server (one for the module, both models).

Each image kind the client takes must get the answer the server gives to the same PNG sent raw;
refusals raise their typed exceptions and print the server's own message; retries are checked
against a real HTTP server in front of it that refuses first (503 + Retry-After), counting attempts.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import re
import subprocess
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import asdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import httpx
import numpy as np
import pytest
from PIL import Image
from support.net import free_port
from support.registries import copy_shipped
from support.server import DIGITSERVE, start_server, stop_server

from digitserve.client import (
    NOT_A_DIGIT,
    AsyncClient,
    Client,
    DigitserveError,
    InvalidInputError,
    NoAnswerError,
    NotFoundError,
    PayloadTooLargeError,
    PredictResult,
    RateLimitedError,
    Retry,
    ServerUnreachableError,
    ServiceUnavailableError,
    UnsupportedMediaTypeError,
)
from digitserve.serving.api.schemas import EXAMPLE_PNG_B64

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "docs" / "img" / "seven.png"  # the README's example digit
SEVEN = np.asarray(Image.open(EXAMPLE))
HARD = np.asarray(Image.fromarray(SEVEN).rotate(45))  # a leaning 7: probabilities spread over several digits
UPRIGHT_NOT = np.rot90(SEVEN).copy()  # a 7 on its side: the cnn does not take it for a digit
T = TypeVar("T")


def png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    registry = copy_shipped(tmp_path_factory.mktemp("registry"), ("cnn", "vit"))
    env = {"DIGITSERVE_REGISTRY": registry.uri, "DIGITSERVE_MODELS": "cnn,vit", "DIGITSERVE_POLL_SECONDS": "3600"}
    process, url = start_server(env, log_path=tmp_path_factory.mktemp("logs") / "server.log")
    yield url
    assert stop_server(process) == 0


def raw_predict(url: str, images: list[bytes], model: str = "cnn") -> httpx.Response:
    body = {"images": [base64.b64encode(i).decode() for i in images]}
    return httpx.post(f"{url}/v1/models/{model}/predict", json=body, timeout=60)


def run(client: str, call: Callable[[Any], T | Awaitable[T]], url: str, **options: Any) -> T:
    """`call(c)` on a `Client` or, through asyncio, an `AsyncClient` made with the same arguments."""
    if client == "sync":
        with Client(url, **options) as c:
            return call(c)  # type: ignore[return-value]

    async def scenario() -> T:
        async with AsyncClient(url, **options) as c:
            return await call(c)  # type: ignore[misc]

    return asyncio.run(scenario())


# --- predictions: every image kind, both clients ---------------------------------------------------


def image_of(kind: str, pixels: np.ndarray, name: str, tmp_path: Path) -> Any:
    if kind == "bytes":
        return png(pixels)
    if kind == "path":
        path = tmp_path / f"{name}.png"
        path.write_bytes(png(pixels))
        return path if name == "seven" else str(path)  # an os.PathLike and a str
    if kind == "pil":
        return Image.open(io.BytesIO(png(pixels)))
    return pixels if kind == "uint8" else pixels.astype(np.float32) / 255  # float 0..1


@pytest.mark.parametrize("client", ["sync", "async"])
@pytest.mark.parametrize("kind", ["bytes", "path", "pil", "uint8", "float"])
def test_each_image_kind_gets_the_servers_answer_to_the_same_png(
    server: str, client: str, kind: str, tmp_path: Path
) -> None:
    raw = raw_predict(server, [png(SEVEN), png(HARD)])
    assert raw.status_code == 200, raw.text
    images = [image_of(kind, pixels, name, tmp_path) for pixels, name in ((SEVEN, "seven"), (HARD, "hard"))]
    result = run(client, lambda c: c.predict(images), server)
    assert isinstance(result, PredictResult)
    expected = raw.json()
    assert (result.model, result.version, result.alias) == ("cnn", expected["version"], "production")
    keys = ("label", "is_digit", "confidence", "best_guess", "reason", "top_k", "probabilities")
    for got, want in zip(result.predictions, expected["predictions"], strict=True):
        assert json.loads(json.dumps(asdict(got))) == {k: want[k] for k in keys}
    assert result.predictions[0].label == 7
    assert result.predictions[1].confidence < 0.95  # the comparison above is not of two near-certain answers


def test_the_example_image_is_the_openapi_seven_and_both_models_read_7(server: str) -> None:
    assert EXAMPLE.read_bytes() == base64.b64decode(EXAMPLE_PNG_B64)
    with Client(server) as client:
        for model in ("cnn", "vit"):
            answer = client.predict(EXAMPLE, model, top_k=2)
            assert answer.model == model and answer.version == 1
            (prediction,) = answer.predictions
            assert (prediction.label, prediction.is_digit, prediction.top_k[0].label) == (7, True, 7)
            assert len(prediction.top_k) == 2 and prediction.confidence > 0.99


def test_models_health_and_feedback(server: str) -> None:
    with Client(server) as client:
        models = {m.name: m for m in client.models()}
        assert set(models) == {"cnn", "vit"}
        assert all(m.ready and m.version == 1 and m.aliases == {"production": 1} for m in models.values())
        assert client.model("vit").versions == (1,)
        assert client.live() and client.ready()
        receipts = [client.feedback(EXAMPLE, model="cnn", version=1, predicted=7, label=NOT_A_DIGIT) for _ in "ab"]
    assert len(receipts[0].id) == 64 and receipts[0].review == "pending"
    assert [r.duplicate for r in receipts] == [False, True] and receipts[0].id == receipts[1].id
    with Client(f"127.0.0.1:{free_port()}") as nowhere:
        assert (nowhere.live(), nowhere.ready()) == (False, False)


# --- refusals as typed exceptions ------------------------------------------------------------------


def tiff(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="TIFF")
    return buf.getvalue()


REFUSALS = [  # (what is sent, to which model, the exception, status, code)
    (png(SEVEN), "nope", NotFoundError, 404, "unknown_model"),
    (tiff(SEVEN), "cnn", UnsupportedMediaTypeError, 415, "unsupported_format"),
    (b"this is not an image", "cnn", InvalidInputError, 422, "invalid_image"),
    (b"\x89PNG" + bytes(5 * 1024 * 1024), "cnn", PayloadTooLargeError, 413, "payload_too_large"),
]


@pytest.mark.parametrize("client", ["sync", "async"])
@pytest.mark.parametrize(("image", "model", "error", "status", "code"), REFUSALS, ids=[r[4] for r in REFUSALS])
def test_refusals_raise_the_exception_of_their_code(
    server: str, client: str, image: bytes, model: str, error: type[DigitserveError], status: int, code: str
) -> None:
    raw = raw_predict(server, [image], model)
    request_id = f"client-test-{code}-{client}"
    with pytest.raises(error) as caught:
        run(client, lambda c: c.predict(image, model), server, headers={"X-Request-ID": request_id})
    exc = caught.value
    assert (exc.status, exc.code, exc.message) == (raw.status_code, raw.json()["code"], raw.json()["error"])
    assert (exc.status, exc.code, exc.request_id) == (status, code, request_id)
    assert not exc.retryable


def test_an_unknown_version_is_not_found(server: str) -> None:
    with Client(server) as client, pytest.raises(NotFoundError) as caught:
        client.predict(EXAMPLE, version=99)
    assert caught.value.code == "unknown_version" and "99" in caught.value.message


# --- retries, against a real HTTP server that refuses first --------------------------------------


class Refusing:
    """An HTTP server on loopback that answers its first `refusals` requests `status` with the server's
    error body and `Retry-After`, and passes every later one on to `upstream`, answering what it answers.
    `attempts` counts the requests it received."""

    def __init__(self, upstream: str, refusals: int, retry_after: str = "0", status: int = 503, port: int = 0):
        self.attempts = 0
        lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with lock:
                    outer.attempts += 1
                    refuse = outer.attempts <= refusals
                if refuse:
                    code = {503: "overloaded", 429: "rate_limited", 404: "unknown_model"}[status]
                    headers = {"Retry-After": retry_after, "X-Request-ID": f"refusal-{outer.attempts}"}
                    self.answer(status, json.dumps({"error": "not now", "code": code}).encode(), headers)
                    return
                passed = httpx.post(upstream + self.path, content=body, headers={"content-type": "application/json"})
                self.answer(passed.status_code, passed.content, {})

            def answer(self, status: int, body: bytes, headers: dict[str, str]) -> None:
                self.send_response(status)
                for name, value in {**headers, "Content-Type": "application/json"}.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def refusing(server: str) -> Iterator[Callable[..., Refusing]]:
    made: list[Refusing] = []

    def make(refusals: int, retry_after: str = "0", status: int = 503, port: int = 0) -> Refusing:
        made.append(Refusing(server, refusals, retry_after, status, port))
        return made[-1]

    yield make
    for r in made:
        r.close()


@pytest.mark.parametrize("client", ["sync", "async"])
def test_a_503_with_retry_after_is_retried_until_answered(refusing: Callable[..., Refusing], client: str) -> None:
    proxy = refusing(2)
    result = run(client, lambda c: c.predict(EXAMPLE), proxy.url, retry=Retry(attempts=3))
    assert result.predictions[0].label == 7
    assert proxy.attempts == 3  # two refusals, then the answer


@pytest.mark.parametrize("client", ["sync", "async"])
@pytest.mark.parametrize("attempts", [1, 3])
def test_retries_are_bounded(refusing: Callable[..., Refusing], client: str, attempts: int) -> None:
    proxy = refusing(10)
    with pytest.raises(ServiceUnavailableError) as caught:
        run(client, lambda c: c.predict(EXAMPLE), proxy.url, retry=Retry(attempts=attempts))
    assert proxy.attempts == attempts
    exc = caught.value
    assert (exc.status, exc.code, exc.retryable, exc.request_id) == (503, "overloaded", True, f"refusal-{attempts}")


@pytest.mark.parametrize(("retry_after", "cap_s", "least_s"), [("1", 10.0, 0.95), ("30", 0.3, 0.29)])
def test_retry_after_is_honoured_up_to_its_cap(
    refusing: Callable[..., Refusing], retry_after: str, cap_s: float, least_s: float
) -> None:
    proxy = refusing(1, retry_after)
    started = time.monotonic()
    with Client(proxy.url, retry=Retry(attempts=2, max_retry_after_s=cap_s)) as client:
        assert client.predict(EXAMPLE).predictions[0].label == 7
    took = time.monotonic() - started
    assert proxy.attempts == 2 and least_s <= took < least_s + 5


@pytest.mark.parametrize(("status", "error"), [(429, RateLimitedError), (404, NotFoundError)])
def test_a_4xx_is_never_retried(refusing: Callable[..., Refusing], status: int, error: type[DigitserveError]) -> None:
    proxy = refusing(10, "0", status)
    with Client(proxy.url, retry=Retry(attempts=5)) as client, pytest.raises(error):
        client.predict(EXAMPLE)
    assert proxy.attempts == 1


@pytest.mark.parametrize(
    ("image", "error"),
    [(np.zeros((3, 28, 28), np.uint8), ValueError), (SEVEN * 2.0, ValueError), (7, TypeError)],
    ids=["a stack", "floats past 1", "an int"],
)
def test_what_cannot_be_an_image_is_refused_before_sending(
    refusing: Callable[..., Refusing], image: Any, error: type[Exception]
) -> None:
    proxy = refusing(0)
    with Client(proxy.url) as client, pytest.raises(error):
        client.predict([EXAMPLE, image])
    assert proxy.attempts == 0


def test_a_connection_refused_is_retried_until_a_server_listens(refusing: Callable[..., Refusing]) -> None:
    port = free_port()
    started: list[Refusing] = []
    threading.Timer(0.3, lambda: started.append(refusing(0, port=port))).start()  # after the first attempt
    with Client(f"127.0.0.1:{port}", retry=Retry(attempts=8, backoff_s=0.2, max_backoff_s=1)) as client:
        assert client.predict(EXAMPLE).predictions[0].label == 7
    assert started and started[0].attempts == 1  # the refused connections never reached it


def test_nothing_listening_is_unreachable_after_the_backoff() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    with Client(url, retry=Retry(attempts=3, backoff_s=0.4)) as client, pytest.raises(ServerUnreachableError) as caught:
        client.predict(EXAMPLE)
    assert time.monotonic() - started >= 0.2 + 0.4  # two waits, each at least half its backoff
    assert str(caught.value) == f"no digitserve server at {url}; start one with `digitserve serve`"
    assert caught.value.status is None


# --- `digitserve predict` --------------------------------------------------------------------------


def predict_cli(*args: str, stdin: Path | None = None, url: str | None = None) -> subprocess.CompletedProcess[str]:
    """`digitserve predict ARGS` with `stdin` (a file) as its stdin and `url` as `DIGITSERVE_URL`."""
    env = {k: v for k, v in os.environ.items() if k != "DIGITSERVE_URL"} | ({"DIGITSERVE_URL": url} if url else {})
    with open(stdin or os.devnull, "rb") as source:
        command = [str(DIGITSERVE), "predict", *args]
        return subprocess.run(command, stdin=source, capture_output=True, text=True, timeout=120, env=env)


def table_rows(stdout: str) -> list[list[str]]:
    """The table's rows (after its header), split at runs of two or more spaces."""
    lines = stdout.strip().splitlines()
    assert re.split(r"\s{2,}", lines[0])[:4] == ["file", "answer", "confidence", "model"], stdout
    return [re.split(r"\s{2,}", line.strip()) for line in lines[1:]]


def test_cli_prints_a_table_of_answers(server: str, tmp_path: Path) -> None:
    sideways = tmp_path / "sideways.png"
    sideways.write_bytes(png(UPRIGHT_NOT))
    with Client(server) as client:
        answer = client.predict(sideways).predictions[0]
    assert not answer.is_digit  # what the table must say "not a digit" for
    done = predict_cli(str(EXAMPLE), str(sideways), "--url", server)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    rows = table_rows(done.stdout)
    assert rows[0][:2] == [str(EXAMPLE), "7"] and rows[0][3] == "cnn v1 (production)"
    assert rows[1][:2] == [str(sideways), f"not a digit (closest {answer.best_guess})"]
    assert float(rows[0][2].rstrip("%")) > 99


def test_cli_json_lines_for_both_models_with_top_k(server: str) -> None:
    done = predict_cli(str(EXAMPLE), "--model", "both", "--top-k", "2", "--json", "--url", server)
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert [(d["file"], d["model"], d["version"], d["label"]) for d in lines] == [
        (str(EXAMPLE), "cnn", 1, 7),
        (str(EXAMPLE), "vit", 1, 7),
    ]
    assert all(len(d["top_k"]) == 2 and len(d["probabilities"]) == 10 and d["is_digit"] for d in lines)


def test_cli_reads_stdin_and_the_url_from_the_environment(server: str) -> None:
    done = predict_cli("-", "--top-k", "3", stdin=EXAMPLE, url=server)
    assert done.returncode == 0, done.stderr
    (row,) = table_rows(done.stdout)
    assert row[:2] == ["-", "7"] and row[3] == "cnn v1 (production)"  # v1: this module's server, not another's
    top = [score.split() for score in row[4].split(", ")]
    assert len(top) == 3 and top[0][0] == "7" and len({label for label, _ in top}) == 3


def test_cli_refusals_print_the_servers_message_and_code(server: str, tmp_path: Path) -> None:
    unknown = predict_cli(str(EXAMPLE), "--model", "nope", "--url", server)
    said = raw_predict(server, [EXAMPLE.read_bytes()], "nope").json()
    assert unknown.returncode == 1 and unknown.stdout == ""
    assert unknown.stderr == f"error: {said['error']} (404 unknown_model)\n"

    notes = tmp_path / "notes.txt"
    notes.write_bytes(b"this is not an image")
    said = raw_predict(server, [notes.read_bytes()]).json()
    mixed = predict_cli(str(notes), str(EXAMPLE), "--url", server)
    assert mixed.returncode == 1
    assert mixed.stderr == f"error: {notes}: {said['error']} (422 invalid_image)\n"
    assert [row[:2] for row in table_rows(mixed.stdout)] == [[str(EXAMPLE), "7"]]  # the other file still answered


def test_cli_without_a_server_says_so_in_one_line() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    done = predict_cli(str(EXAMPLE), "--url", url)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr == f"error: no digitserve server at {url}; start one with `digitserve serve`\n"


class NotDigitserve:
    """An HTTP server on loopback that answers every request 200 with an HTML page (a captive
    portal, a proxy's error page, another service on the port)."""

    def __init__(self) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                body = b"<html><body>Welcome to the hotel wifi</body></html>"
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


def test_what_is_not_a_digitserve_answer_is_an_error_not_a_traceback() -> None:
    other = NotDigitserve()
    try:
        with pytest.raises(NoAnswerError, match="is not a digitserve answer"), Client(other.url) as client:
            client.predict(EXAMPLE.read_bytes())
        done = predict_cli(str(EXAMPLE), "--url", other.url)
        assert done.returncode == 1 and done.stderr.startswith(f"error: the answer from {other.url} is not")
        assert "Traceback" not in done.stderr
    finally:
        other.httpd.shutdown()
        other.httpd.server_close()
    with pytest.raises(DigitserveError, match="is not a server's URL"):
        Client("http://[::1")
    done = predict_cli(str(EXAMPLE), "--url", "http://[::1")
    assert done.returncode == 1 and done.stderr.count("\n") == 1 and "is not a server's URL" in done.stderr
