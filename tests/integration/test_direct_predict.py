"""The direct JSON prediction path (serving/api/v1/direct.py) answers exactly as the FastAPI route
does, and takes only what it can read plainly; everything else reaches FastAPI.

The same request is sent twice: with `Content-Type: application/json` (the direct path's) and
with `application/json; charset=utf-8`, which FastAPI reads as JSON too but the direct path
leaves to it. The answers must be identical: status, body and content type.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image, ImageDraw, ImageFont
from support.registries import copy_shipped, png_b64
from support.server import start_server, stop_server

import digitserve.serving.app as app_module
from digitserve.config import Settings
from digitserve.data import load_mnist
from digitserve.registry.records import MAX_VERSION
from digitserve.serving.api.v1.direct import direct_predict
from digitserve.serving.rollouts.routing import MAX_STICKY
from digitserve.synthetic.negatives import font_dir

PLAIN = "application/json"
FASTAPI = "application/json; charset=utf-8"


def letter_b64(text: str) -> str:
    """A letter, black on white in a bold font: the models answer it is not a digit."""
    image = Image.new("L", (200, 200), 255)
    font = ImageFont.truetype(str(font_dir() / "DejaVuSans-Bold.ttf"), 150)
    ImageDraw.Draw(image).text((100, 100), text, fill=0, font=font, anchor="mm")
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


IMAGES = load_mnist("test").images[:3]
SEVEN = png_b64(IMAGES[0])
LETTER = letter_b64("A")  # not a digit: `label` depends on ?abstain=
CSV = "\n".join(",".join(str(int(v)) for v in row) for row in IMAGES[1])

# (query, extra headers, body): valid requests, then every kind of refusal
CASES: list[tuple[str, dict[str, str], Any]] = [
    ("", {}, {"images": [SEVEN]}),
    ("", {}, {"images": [png_b64(i) for i in IMAGES], "top_k": 5, "return_input": True}),
    ("", {}, {"csv": [CSV]}),
    ("", {}, {"images": [SEVEN], "csv": [CSV], "top_k": "2"}),  # lax: as pydantic takes it either way
    ("?abstain=false", {}, {"images": [SEVEN]}),
    ("?abstain=false", {}, {"images": [LETTER, SEVEN]}),
    ("?abstain=true", {}, {"images": [LETTER]}),
    ("?version=1", {}, {"images": [SEVEN]}),
    ("?alias=production&unknown=1", {}, {"images": [SEVEN]}),
    ("", {"X-Digitserve-Sticky": "alice"}, {"images": [SEVEN]}),
    ("", {}, b""),
    ("", {}, b"{"),
    ("", {}, b"\xff\xfe{}"),
    ("", {}, b'{"images": ["x"], "images": ["%s"]}' % SEVEN.encode()),
    ("", {}, []),
    ("", {}, {}),
    ("", {}, {"images": []}),
    ("", {}, {"images": ["!!!not base64"]}),
    ("", {}, {"images": [SEVEN], "extra": 1}),
    ("", {}, {"images": [SEVEN], "top_k": 0}),
    ("", {}, {"images": [SEVEN], "top_k": 1e400}),
    ("", {}, {"images": [SEVEN] * 300}),
    ("", {}, {"images": ["aGVsbG8="]}),  # base64 of text, not an image
    ("?version=0", {}, {"images": [SEVEN]}),
    ("?version=01", {}, {"images": [SEVEN]}),
    ("?version=abc", {}, {"images": [SEVEN]}),
    ("?version=99", {}, {"images": [SEVEN]}),
    ("?version=1&version=2", {}, {"images": [SEVEN]}),
    ("?alias=BAD!", {}, {"images": [SEVEN]}),
    ("?alias=nosuch", {}, {"images": [SEVEN]}),
    ("?version=1&alias=production", {}, {"images": [SEVEN]}),
    ("?abstain=maybe", {}, {"images": [SEVEN]}),
    ("?abstain=1", {}, {"images": [SEVEN]}),
    ("", {"X-Digitserve-Sticky": "k" * (MAX_STICKY + 1)}, {"images": [SEVEN]}),
    (f"?version={MAX_VERSION}", {}, {"images": [SEVEN]}),
    (f"?version={MAX_VERSION + 1}", {}, {"images": [SEVEN]}),
    ("?version=" + "1" * 4301, {}, {"images": [SEVEN]}),  # past what Python's int() takes from a string
]


PLAIN_VALID = 10  # CASES[:10]: valid, and plain: answered directly

COMPARED_HEADERS = ("content-type", "content-length", "retry-after", "connection")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    registry = copy_shipped(tmp_path_factory.mktemp("registry"))
    process, url = start_server({"DIGITSERVE_REGISTRY": registry.uri, "DIGITSERVE_MODELS": "cnn"})
    yield url
    assert stop_server(process) == 0


def send(client: httpx.Client, model: str, query: str, headers: dict[str, str], body: Any, kind: str) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return client.post(f"/v1/models/{model}/predict{query}", content=content, headers={**headers, "Content-Type": kind})


@pytest.mark.parametrize("model", ["cnn", "nosuch"])
def test_the_direct_path_answers_as_fastapi_does(server: str, model: str) -> None:
    with httpx.Client(base_url=server, timeout=60) as client:
        for query, headers, body in CASES:
            direct = send(client, model, query, headers, body, PLAIN)
            routed = send(client, model, query, headers, body, FASTAPI)
            case = f"{model}{query} {headers} {str(body)[:80]}"
            assert direct.status_code == routed.status_code, (case, direct.text[:300], routed.text[:300])
            assert direct.json() == routed.json(), case
            for name in COMPARED_HEADERS:
                assert direct.headers.get(name) == routed.headers.get(name), (case, name)
            assert direct.status_code < 500, (case, direct.text[:300])
            if model == "cnn" and isinstance(body, dict) and (body.get("images") or [None])[0] == LETTER:
                letter = direct.json()["predictions"][0]  # the abstain cases test what they claim to
                assert letter["is_digit"] is False and (letter["label"] is None) == ("abstain=true" in query), letter


def test_only_plain_requests_are_answered_directly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Which requests the direct path hands on to FastAPI: none of the plain ones; each one it
    cannot read as FastAPI would."""
    handed: list[str] = []

    async def watched(scope: Any, receive: Any, send: Any, fallback: Any) -> None:
        async def to_fastapi(s: Any, r: Any, se: Any) -> None:
            handed.append(f"{s['query_string'].decode()} {dict(s['headers']).get(b'content-type')!r}")
            await fallback(s, r, se)

        await direct_predict(scope, receive, send, to_fastapi)

    monkeypatch.setattr(app_module, "direct_predict", watched)
    registry = copy_shipped(tmp_path / "registry")
    settings = Settings(
        registry=registry.uri, models=["cnn"], poll_seconds=3600, shutdown_grace_s=0, max_body_bytes=LIMIT
    )

    async def scenario() -> list[int]:
        app = app_module.create_app(settings)
        statuses = []
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 5000))
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                for query, headers, body in [*CASES[:PLAIN_VALID], ("?abstain=maybe", {}, {"images": [SEVEN]})]:
                    content = body if isinstance(body, bytes) else json.dumps(body).encode()
                    r = await client.post(
                        f"/v1/models/cnn/predict{query}", content=content, headers={**headers, "Content-Type": PLAIN}
                    )
                    statuses.append(r.status_code)
                r = await client.post(
                    "/v1/models/cnn/predict", json={"images": [SEVEN]}, headers={"Content-Type": FASTAPI}
                )
                statuses.append(r.status_code)
                r = await client.post("/v1/models/cnn/predict", content=b"{", headers={"Content-Type": PLAIN})
                statuses.append(r.status_code)
                for kind in (PLAIN, FASTAPI):  # a streamed body (no Content-Length) past the limit, both ways
                    r = await client.post("/v1/models/cnn/predict", content=chunks(), headers={"Content-Type": kind})
                    over_limit.append((r.status_code, r.json(), r.headers.get("connection")))
        return statuses

    over_limit: list[tuple[int, Any, str | None]] = []
    statuses = asyncio.run(scenario())
    assert statuses == [200] * PLAIN_VALID + [422, 200, 422], statuses
    assert handed[:3] == [
        "abstain=maybe b'application/json'",
        " b'application/json; charset=utf-8'",
        " b'application/json'",
    ]
    assert handed[3:] == [" b'application/json; charset=utf-8'"], "the plain over-limit body is refused directly"
    assert over_limit[0] == over_limit[1] and over_limit[0][0] == 413, over_limit
    assert over_limit[0][1]["code"] == "payload_too_large" and over_limit[0][2] == "close", over_limit


LIMIT = 4096  # the in-process server's body limit


async def chunks() -> AsyncIterator[bytes]:
    """A JSON body of 3 x 2,000 bytes, sent without a Content-Length: the limit is met while it streams."""
    yield b'{"images": ["' + b"A" * 1986
    for _ in range(2):
        yield b"A" * 2000
    yield b'"]}'
