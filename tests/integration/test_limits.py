"""Limits and trust, end to end through a real `digitserve serve` configured with small limits.

Body cap (413 on Content-Length before any body byte, and while a chunked body streams in),
per-image size, pixel count from the header (a decompression bomb is refused without the
server's memory moving), formats, images and files per request, multipart parts; then what the
server trusts: no URL a client sends is ever fetched, admin needs the exact token, and the
default bind is loopback only. test_server.py covers the defaults (TIFF 415, 257 images 413,
admin off without a token); test_v2_protocol.py the /v2 count and body limits.
"""

from __future__ import annotations

import base64
import io
import json
import os
import select
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image
from support.hostile import (
    address,
    assert_healthy,
    closed_by_peer,
    listener,
    png_with_header,
    proc_kib,
    read_response,
    v2_images,
)
from support.registries import copy_shipped
from support.server import start_server, stop_server

from digitserve.config import MiB, Settings
from digitserve.serving.api.schemas import EXAMPLE_PNG_B64

pytestmark = pytest.mark.slow

MAX_BODY = 1 * MiB
MAX_IMAGE = 256 * 1024
MAX_PIXELS = 1_000_000
MAX_IMAGES = 4
MAX_FILES = 6
TOKEN = "limits-admin-token"
PREDICT = "/v1/models/cnn/predict"
UPLOAD = "/v1/models/cnn/predict/upload"
INFER = "/v2/models/cnn/infer"
GOOD_PNG = base64.b64decode(EXAMPLE_PNG_B64)


@pytest.fixture(scope="module")
def server_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, str]]:
    registry = copy_shipped(tmp_path_factory.mktemp("registry"))
    env = {
        "DIGITSERVE_REGISTRY": registry.uri,
        "DIGITSERVE_MODELS": "cnn",
        "DIGITSERVE_POLL_SECONDS": "3600",
        "DIGITSERVE_ADMIN_TOKEN": TOKEN,
        "DIGITSERVE_MAX_BODY_BYTES": str(MAX_BODY),
        "DIGITSERVE_MAX_IMAGE_BYTES": str(MAX_IMAGE),
        "DIGITSERVE_MAX_IMAGE_PIXELS": str(MAX_PIXELS),
        "DIGITSERVE_MAX_IMAGES": str(MAX_IMAGES),
        "DIGITSERVE_MAX_UPLOAD_FILES": str(MAX_FILES),
    }
    process, url = start_server(env, log_path=tmp_path_factory.mktemp("logs") / "server.log")
    yield process.pid, url
    assert stop_server(process) == 0


@pytest.fixture
def server(server_process: tuple[int, str]) -> Iterator[str]:
    """The server's URL; after each test it must still answer a good prediction."""
    yield server_process[1]
    assert_healthy(server_process[1])


def test_defaults_are_the_documented_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [k for k in os.environ if k.startswith("DIGITSERVE_")]:
        monkeypatch.delenv(name)
    s = Settings()
    r = s.requests
    assert (r.max_body_bytes, r.max_image_bytes, r.max_image_pixels) == (8 * MiB, 4 * MiB, 16_000_000)
    assert (r.max_images, r.max_upload_files, s.batching.max_queue, r.max_concurrent_requests) == (256, 256, 2048, 512)
    assert (s.host, r.request_timeout_s, s.admin_token, s.http.keep_alive_s) == ("127.0.0.1", 10.0, None, 75)


# --- the body cap ---------------------------------------------------------------------------


@pytest.mark.parametrize("path", [PREDICT, UPLOAD, INFER])
def test_declared_length_over_the_cap_is_refused_before_any_body_byte(server: str, path: str) -> None:
    with socket.create_connection(address(server)) as sock:
        head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {MAX_BODY + 1}"
        sock.sendall(head.encode() + b"\r\n\r\n")  # and not one byte of the body
        status, headers, body = read_response(sock)
        assert status == 413 and headers["connection"] == "close"
        assert json.loads(body)["code"] == "payload_too_large" and str(MAX_BODY) in json.loads(body)["error"]
        assert closed_by_peer(sock)


def test_a_chunked_body_that_never_ends_is_cut_off_at_the_cap(server: str) -> None:
    """No Content-Length to check: the cap applies while the body streams in, and the server then
    answers 413 and closes, rather than reading on for as long as the client sends."""
    chunk = b"%x\r\n" % 65536 + b" " * 65536 + b"\r\n"
    sent = 0
    with socket.create_connection(address(server)) as sock:
        sock.settimeout(10)
        head = f"POST {PREDICT} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked"
        sock.sendall(head.encode() + b"\r\n\r\n")
        while sent < 64 * MiB and not select.select([sock], [], [], 0)[0]:
            try:
                sock.sendall(chunk)
            except OSError:  # the server closed its side
                break
            sent += 65536
        status, headers, body = read_response(sock)
        assert status == 413 and json.loads(body)["code"] == "payload_too_large"
        assert headers["connection"] == "close" and closed_by_peer(sock)
    assert MAX_BODY < sent < 16 * MiB  # answered long before the client would have stopped


@pytest.mark.parametrize("path", [PREDICT, UPLOAD, INFER])
def test_a_streamed_body_over_the_cap_gets_413_before_it_is_all_sent(server: str, path: str) -> None:
    """What an HTTP client streaming from a generator (chunked) sees."""
    produced = 0

    def body() -> Iterator[bytes]:
        nonlocal produced
        if path == UPLOAD:  # a well-formed start, so the multipart parser reads on
            yield b'--xyz\r\nContent-Disposition: form-data; name="files"; filename="a.png"\r\n\r\n'
        for _ in range(256):  # 16 MiB if nobody stops it
            produced += 65536
            yield b"x" * 65536

    content_type = "multipart/form-data; boundary=xyz" if path == UPLOAD else "application/json"
    r = httpx.post(server + path, content=body(), headers={"Content-Type": content_type}, timeout=30)
    assert r.status_code == 413 and r.json()["code"] == "payload_too_large"
    assert produced < 16 * MiB


# --- images ---------------------------------------------------------------------------------


def test_one_image_over_its_size_cap_is_413_in_every_form(server: str) -> None:
    big = GOOD_PNG + bytes(MAX_IMAGE)  # valid PNG, trailing bytes: over the cap, under the body cap
    b64 = base64.b64encode(big).decode()
    answers = {
        "json": httpx.post(server + PREDICT, json={"images": [b64]}),
        "upload": httpx.post(server + UPLOAD, files=[("files", ("big.png", big, "image/png"))]),
        "v2": httpx.post(server + INFER, json=v2_images([b64])),
    }
    for form, r in answers.items():
        assert r.status_code == 413, (form, r.text)
        assert str(MAX_IMAGE) in r.json()["error"] and r.json()["code"] == "payload_too_large", form


def bomb_requests(server: str, png: bytes) -> list[httpx.Response]:
    b64 = base64.b64encode(png).decode()
    return [
        httpx.post(server + PREDICT, json={"images": [b64]}, timeout=30),
        httpx.post(server + UPLOAD, files=[("files", ("bomb.png", png, "image/png"))], timeout=30),
        httpx.post(server + INFER, json=v2_images([b64]), timeout=30),
    ]


def test_decompression_bombs_are_refused_from_the_header_without_allocating(server_process: tuple[int, str]) -> None:
    pid, server = server_process
    bombs = {
        "complete 12000x12000 gray PNG (144 MB of pixels in ~140 KB)": png_with_header(12000, 12000),
        "10000x10000 RGBA header, 100 bytes of data (400 MB)": png_with_header(10000, 10000, bytes(100), 6),
        "65535x65535 header, no data (4.3 G pixels)": png_with_header(65535, 65535, b""),
    }
    real = io.BytesIO(bombs["complete 12000x12000 gray PNG (144 MB of pixels in ~140 KB)"])
    with pytest.warns(Image.DecompressionBombWarning), Image.open(real) as im:
        assert im.size == (12000, 12000) and im.mode == "L"  # a real image: decoding would allocate it
    peak_before = proc_kib(pid, "VmHWM")
    for name, png in bombs.items():
        assert len(png) < MAX_IMAGE, name
        for r in bomb_requests(server, png):
            assert r.status_code == 422, (name, r.text)
            assert r.json()["code"] == "image_too_large" and "pixels" in r.json()["error"], name
    grown_mib = (proc_kib(pid, "VmHWM") - peak_before) / 1024
    assert grown_mib < 40, f"peak RSS grew by {grown_mib:.0f} MiB: pixels were allocated"
    assert_healthy(server)


@pytest.mark.parametrize("fmt", ["ICO", "PPM", "TIFF"])
def test_formats_outside_the_allow_list_are_415_in_every_form(server: str, fmt: str) -> None:
    buf = io.BytesIO()
    Image.new("L", (28, 28), 255).save(buf, format=fmt)
    data, b64 = buf.getvalue(), base64.b64encode(buf.getvalue()).decode()
    for r in (
        httpx.post(server + PREDICT, json={"images": [b64]}),
        httpx.post(server + UPLOAD, files=[("files", ("digit.png", data, "image/png"))]),  # the name lies
        httpx.post(server + INFER, json=v2_images([b64])),
    ):
        assert r.status_code == 415 and fmt in r.json()["error"] and "PNG" in r.json()["error"], r.text


def test_images_per_request(server: str) -> None:
    five = [GOOD_PNG] * (MAX_IMAGES + 1)
    b64 = [base64.b64encode(p).decode() for p in five]
    for r in (
        httpx.post(server + PREDICT, json={"images": b64}),
        httpx.post(server + UPLOAD, files=[("files", (f"{i}.png", p, "image/png")) for i, p in enumerate(five)]),
        httpx.post(server + INFER, json=v2_images(b64)),
    ):
        assert r.status_code == 413 and f"limit is {MAX_IMAGES}" in r.json()["error"], r.text
    ok = httpx.post(server + PREDICT, json={"images": b64[:MAX_IMAGES]}, timeout=30)
    assert ok.status_code == 200 and [p["label"] for p in ok.json()["predictions"]] == [7] * MAX_IMAGES


def test_multipart_file_count_and_part_size(server: str) -> None:
    files = [("files", (f"{i}.png", GOOD_PNG, "image/png")) for i in range(MAX_FILES + 1)]
    too_many = httpx.post(server + UPLOAD, files=files)  # refused by the parser at file MAX_FILES + 1
    assert too_many.status_code == 400 and f"Maximum number of files is {MAX_FILES}" in too_many.json()["error"]
    big_field = httpx.post(server + UPLOAD, data={"note": "x" * (MAX_IMAGE + 1)}, files=files[:1])
    assert big_field.status_code == 400 and "exceeded maximum size" in big_field.json()["error"]
    fields = {f"f{i}": "x" for i in range(17)}
    many_fields = httpx.post(server + UPLOAD, data=fields, files=files[:1])
    assert many_fields.status_code == 400 and "Maximum number of fields" in many_fields.json()["error"]


# --- what the server trusts -----------------------------------------------------------------


def test_no_url_a_client_sends_is_ever_fetched(server: str) -> None:
    with listener() as (url, seen):
        b64_url = base64.b64encode(url.encode()).decode()
        answers = [
            httpx.post(server + PREDICT, json={"images": [url]}),
            httpx.post(server + PREDICT, json={"images": [f"data:image/png;base64,{url}"]}),
            httpx.post(server + PREDICT, json={"images": [b64_url]}),  # the URL's text, base64-encoded
            httpx.post(server + UPLOAD, files=[("files", ("digit.png", url.encode(), "image/png"))]),
            httpx.post(server + UPLOAD, files=[("files", (url, GOOD_PNG, "image/png"))]),  # URL as the name: ok
            httpx.post(server + INFER, json=v2_images([url])),
            httpx.post(f"{server}{PREDICT}?alias={url}", json={"images": [EXAMPLE_PNG_B64]}),
        ]
        time.sleep(0.5)
    assert [r.status_code for r in answers] == [422, 422, 422, 422, 200, 422, 422], [r.text for r in answers]
    assert seen == [], f"the server connected to a URL a client sent: {seen}"


@pytest.mark.parametrize(
    "header",
    ["", f"Basic {TOKEN}", f"Bearer {TOKEN}x", f"Bearer {TOKEN[:-1]}", "Bearer", f"Bearer{TOKEN}", TOKEN],
    ids=["none", "basic", "suffix", "prefix", "empty", "no-space", "bare"],
)
def test_admin_needs_the_exact_bearer_token(server: str, header: str) -> None:
    r = httpx.post(f"{server}/v1/admin/reload", headers={"Authorization": header} if header else {})
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer" and r.json()["code"] == "unauthorized"


def test_admin_reload_with_the_token(server: str) -> None:
    r = httpx.post(f"{server}/v1/admin/reload", headers={"Authorization": f"bearer {TOKEN}"}, timeout=60)
    assert r.status_code == 200 and r.json()["results"][0]["model"] == "cnn"


def listening_addresses(port: int) -> list[str]:
    """Local addresses in LISTEN state on `port`, from /proc/net/tcp and tcp6 (hex, as the kernel writes them)."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not Path(table).exists():
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            addr, _, hex_port = local.partition(":")
            if state == "0A" and int(hex_port, 16) == port:
                found.append(addr)
    return found


def test_serve_binds_to_loopback_unless_told_otherwise(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("DIGITSERVE_HOST", raising=False)
    registry = copy_shipped(tmp_path / "registry")
    env = {"DIGITSERVE_REGISTRY": registry.uri, "DIGITSERVE_MODELS": "cnn"}
    process, url = start_server(env, log_path=tmp_path / "s.log", host=None)  # no --host
    try:
        assert listening_addresses(address(url)[1]) == ["0100007F"]  # 127.0.0.1, and nothing else
    finally:
        assert stop_server(process) == 0
