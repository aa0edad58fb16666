"""A full restart of the server with a notebook open, in Chromium, under
daphne and uvicorn: while the server is down the page says the site is
restarting, once it is back and marimo's frontend has reconnected to a new
kernel the page says the notebook started again (its widgets were reset),
and marimo's red "kernel not found" never shows meanwhile."""

from __future__ import annotations

import os
import signal

import pytest

from django_notebooks import notices
from tests.browser.test_isolation import choose, expect_done, open_notebook
from tests.browser.visit import FIRST_RENDER_MS, UPDATE_MS, visiting
from tests.live import LiveServer, database_of_its_own

pytestmark = pytest.mark.browser

RESTARTING = notices.SITE_RESTARTING
STARTED_AGAIN = notices.SITE_RESTARTING.then
# marimo's frontend waits up to 10 s between two attempts to reconnect.
RECONNECT_MS = 15_000
STOP_TIMEOUT = 30

# Watches every frame the page paints: whether marimo's "kernel not found"
# was in the page (it must be, or this test checks nothing) and whether it
# was ever visible.
WATCH_KERNEL_NOT_FOUND = """() => {
    window.kernelNotFound = {inPage: false, shown: false};
    const look = () => {
        for (const element of document.querySelectorAll("body *")) {
            if (element.children.length === 0
                    && element.textContent.trim() === "kernel not found") {
                window.kernelNotFound.inPage = true;
                if (element.checkVisibility()) {
                    window.kernelNotFound.shown = true;
                }
            }
        }
        requestAnimationFrame(look);
    };
    requestAnimationFrame(look);
}"""


def start(kind: str, db_path, log_path, port: int | None = None) -> LiveServer:
    return LiveServer(
        kind, db_path, log_path, port=port, DJANGO_NOTEBOOKS_TEST_MISBEHAVE="1"
    )


def expect_alert(visit, notice: notices.Notice, timeout: float) -> None:
    from playwright.sync_api import expect

    alert = visit.page.get_by_role("alert")
    with visit.step(f"the page says {notice.title!r}"):
        expect(alert).to_contain_text(notice.title, timeout=timeout)
        expect(alert).to_contain_text(notice.text)


@pytest.mark.parametrize("kind", ["daphne", "uvicorn"])
def test_a_restart_says_restarting_then_started_again(kind, browser, live_db, tmp_path):
    db_path = database_of_its_own(live_db, tmp_path, superuser=False)
    server = start(kind, db_path, tmp_path / "server.log")
    again: LiveServer | None = None
    try:
        with visiting(browser, server, tmp_path) as visit:
            open_notebook(visit)
            choose(visit, "print")
            expect_done(visit, "print")
            visit.page.evaluate(WATCH_KERNEL_NOT_FOUND)

            os.kill(server.process.pid, signal.SIGTERM)
            expect_alert(visit, RESTARTING, UPDATE_MS)
            with visit.step("the server stops"):
                server.process.wait(STOP_TIMEOUT)
            with visit.step("marimo's frontend finds nothing while it is down"):
                visit.page.wait_for_function(
                    "window.kernelNotFound.inPage", timeout=RECONNECT_MS
                )
            expect_alert(visit, RESTARTING, UPDATE_MS)  # still

            again = start(kind, db_path, tmp_path / "again.log", port=server.port)
            visit.server = again  # for the report of a failed step
            expect_alert(visit, STARTED_AGAIN, RECONNECT_MS + FIRST_RENDER_MS)
            expect_done(visit, "nothing")  # the new kernel's widget, reset
            with visit.step("marimo's 'kernel not found' never showed"):
                seen = visit.page.evaluate("window.kernelNotFound")
                assert seen == {"inPage": True, "shown": False}, seen
            with visit.step("the new session works"):
                choose(visit, "print")
                expect_done(visit, "print")
    finally:
        server.stop()
        if again is not None:
            again.stop()
