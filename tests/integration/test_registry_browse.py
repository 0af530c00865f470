"""The JSON behind the models pages when the registry holds damaged or odd files (in-process app)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
from support.registries import copy_shipped

from digitserve.config import Settings
from digitserve.serving.app import create_app


def test_damaged_registry_files_are_shown_as_such_never_a_500(tmp_path: Path) -> None:
    """A model folder with nothing published, an unreadable manifest, a damaged metrics.json or
    test samples, a hand-edited event with a 70-digit number: each is shown in its place."""
    registry = copy_shipped(tmp_path / "registry")
    root = Path(registry.uri)
    (root / "empty" / "aliases").mkdir(parents=True)
    (root / "cnn" / "versions" / "2").mkdir()
    (root / "cnn" / "versions" / "2" / "manifest.json").write_text("{damaged")
    (root / "cnn" / "versions" / "1" / "report" / "metrics.json").write_text("[" * 100_000)
    (root / "cnn" / "versions" / "1" / "report" / "test_samples.json").write_text('{"num_examples": 1e999}')
    (root / "cnn" / "events").mkdir(exist_ok=True)
    event = {"action": "promote", "alias": "production", "from": None, "to": 10**70, "at": "2026-12-01T00:00:00Z"}
    (root / "cnn" / "events" / "20261201T000000.000Z-aaaaaaaa.json").write_text(json.dumps(event))

    async def scenario() -> dict[str, httpx.Response]:
        settings = Settings(
            registry=registry.uri,
            models=["cnn"],
            poll_seconds=3600,
            shutdown_grace_s=0,
            feedback_spool_dir=tmp_path / "spool",
        )
        app = create_app(settings)
        paths = {
            "empty": "/v1/registry/models/empty/versions",
            "versions": "/v1/registry/models/cnn/versions",
            "version": "/v1/registry/models/cnn/versions/1",
            "cell": "/v1/registry/models/cnn/versions/1/confusion/7/2",
            "events": "/v1/registry/models/cnn/events",
            "unknown": "/v1/registry/models/nope/events",
        }
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                return {name: await client.get(path) for name, path in paths.items()}

    r = asyncio.run(scenario())
    assert r["empty"].status_code == 200 and r["empty"].json()["total"] == 0
    cards = r["versions"].json()["items"]
    assert [c["version"] for c in cards] == [2, 1] and "error" in cards[0] and cards[1]["accuracy"] > 0.99
    assert r["version"].status_code == 200 and r["version"].json()["metrics"] is None
    assert "damaged" in r["version"].json()["metrics_error"]
    assert r["cell"].status_code == 503 and "damaged" in r["cell"].json()["error"]
    assert r["events"].status_code == 200 and r["events"].json()["items"][0]["to"] == str(10**70)
    assert r["unknown"].status_code == 404
