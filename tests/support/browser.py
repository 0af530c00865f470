"""Driving the pages in a real Chromium (Debian's, through Playwright): launch, watch, draw, screenshot.

Shared by the browser tests of the digit page and the models pages.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest
from playwright.sync_api import Browser, ConsoleMessage, Locator, Page, Request, ViewportSize, expect, sync_playwright

REPO = Path(__file__).resolve().parents[2]
SCREENSHOTS = REPO / "artifacts" / "screenshots"
ANSWER_TIMEOUT_MS = 30_000
# What a page shows after a round trip to the server (a listing, an answer, a registry page) is
# waited for as long as an answer is: 5 s, Playwright's default, is short beside a training run
# on the other core. A page that never shows it still fails, only later.
expect.set_options(timeout=ANSWER_TIMEOUT_MS)

CHROMIUM = Path(os.environ.get("DIGITSERVE_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
DESKTOP: ViewportSize = {"width": 1280, "height": 900}
PHONE: ViewportSize = {"width": 390, "height": 844}


@contextmanager
def chromium() -> Iterator[Browser]:
    """A headless Chromium; the test fails (never skips) when it is not installed."""
    if not CHROMIUM.is_file():
        pytest.fail(f"Chromium not found at {CHROMIUM}: run `make system-deps` (or set DIGITSERVE_CHROMIUM)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@dataclass
class PageWatch:
    """What went wrong while a page was open: console errors, script errors, failed or foreign requests."""

    host: str
    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    failed_requests: list[str] = field(default_factory=list)
    foreign_requests: list[str] = field(default_factory=list)

    def attach(self, page: Page) -> None:
        page.on("console", self._on_console)
        page.on("pageerror", lambda exc: self.page_errors.append(str(exc)))
        page.on("requestfailed", lambda req: self.failed_requests.append(f"{req.url}: {req.failure}"))
        page.on("request", self._check_host)

    def _on_console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.console_errors.append(message.text)

    def _check_host(self, request: Request) -> None:
        parts = urlsplit(request.url)
        if parts.scheme not in ("data", "blob") and parts.netloc != self.host:
            self.foreign_requests.append(request.url)

    def assert_clean(self) -> None:
        problems = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "host" and getattr(self, f.name)}
        assert not problems, f"the page had problems: {problems}"


def panel(page: Page, model: str) -> Locator:
    return page.locator(f'.panel[data-model="{model}"]')


def draw(page: Page, strokes: list[np.ndarray]) -> None:
    """Draw `strokes` (unit-box points) on the pad with the mouse: down, move along, up."""
    box = page.locator("#pad").bounding_box()
    assert box is not None
    for stroke in strokes:
        points = [(box["x"] + x * box["width"], box["y"] + y * box["height"]) for x, y in stroke]
        page.mouse.move(*points[0])
        page.mouse.down()
        for point in points[1:]:
            page.mouse.move(*point)
        page.mouse.up()


def wait_for_answers(page: Page) -> None:
    """Until every shown panel shows an answer (a prediction or an error) for what is on the pad now."""
    page.wait_for_function(
        "() => [...document.querySelectorAll('.panel:not([hidden])')]"
        ".every(p => ['done', 'not-digit', 'error'].includes(p.dataset.state))",
        timeout=ANSWER_TIMEOUT_MS,
    )


def screenshot(page: Page, name: str, full_page: bool = False) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / name), full_page=full_page, animations="disabled")
