"""Headless Chromium for the browser tests: Debian's build, driven by
Playwright (whose own browser download is not used).

Without Chromium (or Playwright) the tests skip, except on CI (the ``CI``
environment variable is set), where each of them fails saying why.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

CHROMIUM = Path(os.environ.get("DJANGO_NOTEBOOKS_TEST_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
MISSING = pytest.StashKey[str]()


class BrowserMissing(str):
    """Why there is no browser (a fixture's value in place of one)."""


def _missing_browser() -> BrowserMissing | None:
    if not (CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK)):
        return BrowserMissing(
            f"Chromium not found at {CHROMIUM}: install Debian's chromium package "
            "or point DJANGO_NOTEBOOKS_TEST_CHROMIUM at a Chromium binary"
        )
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return BrowserMissing("the playwright package is not installed")
    return None


HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config, items):
    """Skip (off CI) before any server starts for a test that cannot run."""
    missing = _missing_browser()
    if missing and not os.environ.get("CI"):
        for item in items:
            if HERE in Path(str(item.path)).resolve().parents:
                item.add_marker(pytest.mark.skip(reason=missing))


@pytest.fixture(scope="module")
def chromium():
    """A headless Chromium with a fresh profile (Playwright's ``launch``
    gives every browser its own temporary user-data dir)."""
    missing = _missing_browser()
    if missing:
        if not os.environ.get("CI"):
            pytest.skip(missing)
        yield missing  # each test fails, see pytest_runtest_call
        return
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS
        )
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def browser(chromium, request):
    if isinstance(chromium, BrowserMissing):
        request.node.stash[MISSING] = chromium
    return chromium


@pytest.fixture
def visit_server(notebook_server):
    """The server the ``visit`` fixture's tab is on (a module may name
    another by overriding this fixture)."""
    return notebook_server


@pytest.fixture
def visit(browser, visit_server, tmp_path):
    """A browser tab on ``visit_server`` (tests/browser/visit.py)."""
    from tests.browser.visit import visiting

    with visiting(browser, visit_server, tmp_path) as visit:
        yield visit


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_call(item):
    """On CI a missing browser fails the test itself (not its setup)."""
    missing = item.stash.get(MISSING, None)
    if missing:
        pytest.fail(
            f"{missing} (CI is set: the browser tests may not be skipped)",
            pytrace=False,
        )
