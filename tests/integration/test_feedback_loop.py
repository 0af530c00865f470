"""The whole feedback loop against a real server: a person draws a digit on the page in Chromium and
corrects the answer; a reviewer accepts it with the CLI; `train.py --smoke --feedback` trains the
next version with it; the gate reports the feedback holdout; the version is promoted and the
server follows the alias.

Production starts as a model that always answers 1 (`support/constant.py`), so every digit
people correct is one it got wrong, and its score on a holdout of other digits is known: 0.
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect
from support.browser import DESKTOP, PageWatch, chromium, draw, panel, screenshot, wait_for_answers
from support.cli import digitserve, succeeded
from support.constant import publish_constant
from support.feedback import correction, predict_with_input, send, wait_for_samples
from support.handwriting import handwritten
from support.registries import ROOT, png_bytes
from support.server import model_info, running_server, wait_until

from digitserve.data import load_mnist
from digitserve.registry import ModelRegistry
from digitserve.registry.feedback import split_of
from digitserve.registry.feedback_snapshot import FeedbackSnapshot

pytestmark = [pytest.mark.browser, pytest.mark.slow]
LOOSE_GATE = ("--threshold", "0", "--max-ece", "1", "--max-digits-not-a-digit", "1", "--min-negatives-not-a-digit", "0")


@pytest.fixture
def registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModelRegistry:
    monkeypatch.setenv("DIGITSERVE_ACTOR", "reviewer")
    registry = ModelRegistry.open(str(tmp_path / "registry"))
    publish_constant(registry, 1, model="cnn")  # v1: answers 1 to everything
    registry.move_alias("cnn", "production", 1, reason="the model before feedback")
    return registry


@pytest.fixture
def server(registry: ModelRegistry, tmp_path: Path) -> Iterator[str]:
    env = {
        "DIGITSERVE_REGISTRY": registry.uri,
        "FORWARDED_ALLOW_IPS": "127.0.0.1",  # the tests say which client they are
        "DIGITSERVE_MODELS": "cnn",
        "DIGITSERVE_POLL_SECONDS": "1",
        "DIGITSERVE_FEEDBACK_SPOOL_DIR": str(tmp_path / "spool"),
    }
    with running_server(env, log_path=tmp_path / "server.log") as url:
        yield url


def correct_on_the_page(url: str) -> str:
    """Draw a 7, see the model say 1, answer "It is a 7"; returns the id prefix the page shows."""
    with chromium() as browser:
        context = browser.new_context(viewport=DESKTOP)
        page = context.new_page()
        watch = PageWatch(url.removeprefix("http://"))
        watch.attach(page)
        page.goto(url + "/")
        expect(panel(page, "cnn").locator(".version")).to_have_text(re.compile(r"^v1\b"))
        expect(panel(page, "vit")).to_be_hidden()  # a model this server does not serve is not shown
        expect(page.get_by_role("button", name="It is a 7")).to_be_hidden()
        draw(page, handwritten(7, seed=700))
        wait_for_answers(page)
        expect(panel(page, "cnn").locator(".digit")).to_have_text("1")
        page.get_by_role("button", name="It is a 7").click()
        status = page.locator("#feedback-status")
        expect(status).to_contain_text("Thanks — saved as a 7 for review (CNN ")
        expect(page.get_by_role("button", name="It is a 7")).to_have_attribute("aria-pressed", "true")
        screenshot(page, "desktop-feedback-sent.png")
        watch.assert_clean()
        found = re.search(r"CNN ([0-9a-f]{8})", status.inner_text())
        assert found, status.inner_text()
        context.close()
        return found.group(1)


def corrections_through_the_api(url: str) -> tuple[list[str], list[str], str]:
    """Corrections of MNIST test digits (none of them a 1): (train ids, holdout ids, one wrong label's id)."""
    test = load_mnist("test")
    train, holdout = [], []
    for i in range(10, 400):
        image, label = test.images[i], int(test.labels[i])
        split = split_of(image)
        chosen = holdout if split == "holdout" else train
        if label == 1 or len(chosen) >= (4 if split == "holdout" else 6):
            continue
        answer = predict_with_input(url, png_bytes(image))
        response = send(url, correction(answer, label), client=f"192.0.2.{i % 250}")
        assert response.status_code == 201, response.text
        chosen.append(response.json()["id"])
        if len(train) == 6 and len(holdout) == 4:
            break
    wrong = send(url, correction(predict_with_input(url, png_bytes(test.images[3])), 8), client="198.51.100.1")
    assert wrong.status_code == 201  # test image 3 is a 0: someone says 8
    return train, holdout, wrong.json()["id"]


def train_with_feedback(uri: str) -> str:
    command = [sys.executable, str(ROOT / "training" / "train.py"), "--arch", "cnn", "--smoke", "--feedback"]
    trained = subprocess.run([*command, "--registry", uri], capture_output=True, text=True, timeout=900)
    assert trained.returncode == 0, trained.stderr[-3000:]
    return trained.stdout


def test_a_correction_on_the_page_teaches_the_next_version(server: str, registry: ModelRegistry) -> None:
    drawn = correct_on_the_page(server)
    train, holdout, wrong = corrections_through_the_api(server)
    uri = registry.uri
    store = wait_for_samples(registry, [*train, *holdout, wrong])
    [drawn_id] = [sid for sid in store.ids() if sid.startswith(drawn)]
    drawn_sample = store.sample(drawn_id)
    assert (drawn_sample.label, drawn_sample.predicted, drawn_sample.version) == (7, 1, 1)

    pending = succeeded(digitserve("feedback", "list", "--state", "pending", "--registry", uri)).splitlines()
    assert len(pending) == len(train) + len(holdout) + 2
    for sid in [drawn_id, *train, *holdout]:
        succeeded(digitserve("feedback", "accept", sid[:12], "--reason", "looks right", "--registry", uri))
    succeeded(digitserve("feedback", "reject", wrong[:12], "--reason", "that is a 0", "--registry", uri))

    out = train_with_feedback(uri)
    holdout_all = holdout + ([drawn_id] if drawn_sample.split == "holdout" else [])
    train_all = train + ([drawn_id] if drawn_sample.split == "train" else [])
    assert f"{len(train_all) + len(holdout_all)} accepted samples ({len(train_all)} to train on" in out
    manifest = registry.manifest("cnn", 2)
    recorded: dict[str, Any] = manifest.extra["feedback"]
    assert recorded["snapshot_sha256"] == FeedbackSnapshot.read(store).digest
    assert (recorded["train"], recorded["holdout"], recorded["repeat"]) == (len(train_all), len(holdout_all), 20)
    seen = json.loads(registry.read_report("cnn", 2, "feedback.json"))
    assert sorted(seen["train"]) == sorted(train_all) and sorted(seen["holdout"]) == sorted(holdout_all)
    assert wrong not in json.dumps(seen), "a rejected sample never reaches training"

    promoted = succeeded(digitserve("registry", "promote", "cnn", "2", *LOOSE_GATE, "--registry", uri))
    assert (
        "feedback holdout: " in promoted
        and f"/{len(holdout_all)} right (production v1: 0/{len(holdout_all)})" in promoted
    )
    gate = registry.events("cnn", "production")[-1]["gate"]
    assert gate["feedback_holdout"]["samples"] == len(holdout_all)
    assert gate["feedback_holdout"]["current"] == {"correct": 0, "accuracy": 0.0}

    wait_until(lambda: model_info(server, "cnn")["serving"]["version"] == 2, 30, "the server follows production")
    seven = base64.b64encode(png_bytes(load_mnist("test").images[0])).decode()
    answer = predict_with_input(server, base64.b64decode(seven))
    assert answer["version"] == 2 and answer["alias"] == "production"
