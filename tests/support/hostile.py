"""Helpers for the limits, hostile-input and fault tests: raw sockets, crafted images, /proc readings."""

from __future__ import annotations

import socket
import struct
import threading
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

import httpx

from digitserve.serving.api.schemas import EXAMPLE_PNG_B64  # a real MNIST "7"


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_with_header(width: int, height: int, idat: bytes | None = None, color_type: int = 0) -> bytes:
    """A PNG whose IHDR claims `width` x `height` (8-bit; gray by default), followed by `idat`.

    `idat=None` gives a complete, valid image of zeros: each row compressed as it is made, so a
    decompression bomb (gigabytes of pixels in kilobytes) is built without allocating it here.
    """
    channels = {0: 1, 2: 3, 4: 2, 6: 4}[color_type]
    if idat is None:
        packer = zlib.compressobj(9)
        row = bytes(1 + width * channels)  # filter byte 0, then the row's samples
        idat = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def v2_images(data: list[Any]) -> dict[str, Any]:
    """A /v2 inference request body with the `images` input (BYTES, base64 in JSON)."""
    return {"inputs": [{"name": "images", "shape": [len(data)], "datatype": "BYTES", "data": data}]}


def proc_kib(pid: int, field: str) -> int:
    """A `/proc/<pid>/status` memory field (VmRSS, VmHWM, ...) in KiB."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def address(base_url: str) -> tuple[str, int]:
    parts = urlsplit(base_url)
    assert parts.hostname is not None and parts.port is not None
    return parts.hostname, parts.port


def read_response(sock: socket.socket, timeout_s: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response from a raw socket: (status, lower-cased headers, body)."""
    sock.settimeout(timeout_s)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"connection closed before a full response head: {data[:200]!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(lines[0].split(" ", 2)[1]), headers, body[:length]


def closed_by_peer(sock: socket.socket, timeout_s: float = 5.0) -> bool:
    """True once the server has closed its side (EOF or reset), False if it is still open."""
    sock.settimeout(timeout_s)
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    return True


@contextmanager
def listener() -> Iterator[tuple[str, list[bytes]]]:
    """A TCP listener on loopback that records every connection made to it: (url, requests seen)."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    seen: list[bytes] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(1)
                try:
                    seen.append(conn.recv(4096) or b"(connected, sent nothing)")
                except OSError:
                    seen.append(b"(connected)")

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}/digit.png", seen
    finally:
        stop.set()
        thread.join()
        server.close()


def assert_healthy(base_url: str, model: str = "cnn") -> None:
    """The server still answers: liveness, and a good prediction right after whatever came before."""
    assert httpx.get(f"{base_url}/healthz", timeout=10).status_code == 200
    r = httpx.post(f"{base_url}/v1/models/{model}/predict", json={"images": [EXAMPLE_PNG_B64]}, timeout=30)
    assert r.status_code == 200 and r.json()["predictions"][0]["label"] == 7, r.text
