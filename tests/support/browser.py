"""Real-browser tests: Debian's ``chromium`` driven by Playwright for Python.

A pytest plugin (``pytest_plugins`` in ``tests/conftest.py``) with two fixtures:

* ``browser`` (module): one headless Chromium, started from ``/usr/bin/chromium``
  (``IMAGEGATE_CHROMIUM`` overrides it). Playwright's own browser downloads are
  never used: only the package registries are reachable, so CI installs Debian's
  ``chromium`` (scripts/lib.sh) and Playwright drives it over CDP. Module scope,
  not session: Playwright's sync API keeps its asyncio loop running on the main
  thread while it is open, and a later test calling ``asyncio.run()`` would fail;
  closing it after each module gives the loop back (a launch costs about a second).
* ``tab`` (function): a :class:`Tab` -- a fresh browser context (its own cookies and
  session storage) and page. It records what the page reports as broken (script
  errors, console errors, which include Content-Security-Policy violations, and
  failed requests) and writes a full-page screenshot when the test ends, passed or
  failed, to the artifacts folder: ``$IMAGEGATE_TEST_ARTIFACTS`` or
  ``test-artifacts/`` in the checkout (ignored by git), under ``browser/``.

Pages under test are plain URLs of a live stack (the ``gateway`` fixture), so the
same fixtures serve the playground's tests and, later, the console's.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support.processes import REPO

CHROMIUM = os.environ.get("IMAGEGATE_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(os.environ.get("IMAGEGATE_TEST_ARTIFACTS") or REPO / "test-artifacts")


def artifacts_dir() -> Path:
    """Where browser tests write their screenshots (made on first use)."""
    path = ARTIFACTS / "browser"
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="module")
def browser() -> Iterator:
    """One headless Chromium per test module (Debian's, not a download)."""
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(
            f"No Chromium at {CHROMIUM}: the browser tests need Debian's `chromium` package "
            "(installed by the README's test command, scripts/test.sh)."
        )
    from playwright.sync_api import sync_playwright

    args = ["--disable-dev-shm-usage", "--disable-gpu"]
    if os.geteuid() == 0:  # Chromium refuses to run its sandbox as root (CI runs as root)
        args.append("--no-sandbox")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=args)
        yield chromium
        chromium.close()


@dataclass
class Tab:
    """A page in a fresh browser context, and what went wrong in it."""

    page: object  # playwright.sync_api.Page
    name: str
    errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    shots: list[Path] = field(default_factory=list)

    def screenshot(self, label: str = "") -> Path:
        """A full-page screenshot in the artifacts folder; returns its path."""
        stem = self.name + (f"-{label}" if label else "")
        path = artifacts_dir() / f"{stem}.png"
        self.page.screenshot(path=str(path), full_page=True)
        self.shots.append(path)
        return path

    def tab_to(self, selector: str, limit: int = 60) -> None:
        """Press Tab (only the keyboard) until the element ``selector`` has the focus."""
        for _ in range(limit):
            if self.page.evaluate("(s) => document.activeElement?.matches(s) ?? false", selector):
                return
            self.page.keyboard.press("Tab")
        raise AssertionError(f"{selector} never got the focus after {limit} Tab presses")


def _safe_name(nodeid: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", nodeid.split("::", 1)[-1])[:120]


@pytest.fixture()
def tab(browser, request: pytest.FixtureRequest) -> Iterator[Tab]:
    """A fresh context and page; a screenshot of it is written when the test ends."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(30_000)
    page = context.new_page()
    result = Tab(page=page, name=_safe_name(request.node.nodeid))
    page.on("pageerror", lambda error: result.errors.append(f"page error: {error}"))
    page.on(
        "console",
        lambda message: (
            message.type == "error" and result.errors.append(f"console: {message.text}")
        ),
    )
    page.on(
        "requestfailed",
        lambda req: result.errors.append(f"request failed: {req.method} {req.url} {req.failure}"),
    )
    page.on("request", lambda req: result.requests.append(req.url))
    try:
        yield result
    finally:
        try:
            result.screenshot("end")
        finally:
            context.close()
