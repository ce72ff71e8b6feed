"""Debian's chromium driven by Playwright, for the web app's end-to-end tests.

Playwright never downloads a browser here: it launches the system's `/usr/bin/chromium`
(installed by `make setup`), headless, with the flags that keep it from reaching for
the network. A missing chromium fails the tests, as a missing service does. Each step
of a test can leave a screenshot in `reports/ui/` (not committed).
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Final

import pytest
from playwright.sync_api import Browser, Locator, Page, ViewportSize, sync_playwright

CHROMIUM: Final = "/usr/bin/chromium"
FLAGS: Final = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
REPORTS: Final = Path(__file__).resolve().parents[2] / "reports" / "ui"
PHONE: Final[ViewportSize] = {"width": 390, "height": 844}
DESKTOP: Final[ViewportSize] = {"width": 1280, "height": 900}


@contextmanager
def chromium() -> Iterator[Browser]:
    """A headless chromium for one test (closed after it)."""
    executable = shutil.which("chromium") or CHROMIUM
    if not Path(executable).exists():
        pytest.fail(f"{CHROMIUM} is missing: run `make setup` (it installs Debian's chromium)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=list(FLAGS))
        try:
            yield browser
        finally:
            browser.close()


class Shots:
    """Screenshots of one test's steps: `reports/ui/<test>-<nn>-<step>.png`."""

    def __init__(self, test_name: str) -> None:
        self._prefix = re.sub(r"[^a-z0-9]+", "-", test_name.lower()).strip("-")
        self._count = 0
        REPORTS.mkdir(parents=True, exist_ok=True)
        for stale in REPORTS.glob(f"{self._prefix}-[0-9][0-9]-*.png"):  # a previous run's steps
            stale.unlink()

    def take(self, page: Page, step: str) -> Path:
        """Save the whole page as it is now."""
        self._count += 1
        path = REPORTS / f"{self._prefix}-{self._count:02d}-{step}.png"
        page.screenshot(path=str(path), full_page=True)
        return path


def tab_to(page: Page, target: Locator, *, limit: int = 40) -> None:
    """Press Tab until `target` has the focus (keyboard only: no click, no focus())."""
    for _ in range(limit):
        if target.evaluate("node => node === document.activeElement"):
            return
        page.keyboard.press("Tab")
    pytest.fail(f"{target} never got the focus after {limit} Tab presses")
