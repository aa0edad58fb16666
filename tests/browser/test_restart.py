"""A full restart of the server with a notebook open, in Chromium, under
daphne and uvicorn: while the server is down the page says the site is
restarting; once it is back the page goes on with its own kernel, its
widgets' values and outputs as they were (the kernel host kept it), or,
where the kernel was not kept (the host ended with the server: no grace
period), the page says the notebook started again (its widgets were reset).
marimo's red "kernel not found" never shows meanwhile."""

from __future__ import annotations

import os
import re
import signal

import pytest

from django_notebooks import notices
from tests.browser.test_isolation import choose, expect_done, open_notebook
from tests.browser.visit import FIRST_RENDER_MS, UPDATE_MS, visiting
from tests.live import LiveServer, database_of_its_own, end_kernel_host

pytestmark = pytest.mark.browser

KEPT_PAGE = "/notebooks/kept/"
KEPT_OUTPUT = re.compile(r"kept=\d+ moved=\d+ pid=\d+")
KEEP = {"DJANGO_NOTEBOOKS_TEST_HOST_GRACE": "60"}
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


def start(
    kind: str, db_path, log_path, port: int | None = None, **env: str
) -> LiveServer:
    return LiveServer(
        kind,
        db_path,
        log_path,
        port=port,
        DJANGO_NOTEBOOKS_TEST_MISBEHAVE="1",
        DJANGO_NOTEBOOKS_TEST_KEPT="1",
        **env,
    )


def expect_alert(visit, notice: notices.Notice, timeout: float) -> None:
    from playwright.sync_api import expect

    alert = visit.page.get_by_role("alert")
    with visit.step(f"the page says {notice.title!r}"):
        expect(alert).to_contain_text(notice.title, timeout=timeout)
        expect(alert).to_contain_text(notice.text)


@pytest.mark.parametrize("kind", ["daphne", "uvicorn"])
def test_a_restart_keeps_the_sliders_value_and_the_output(
    kind, browser, live_db, tmp_path
):
    from playwright.sync_api import expect

    db_path = database_of_its_own(live_db, tmp_path, superuser=False)
    # A grace period: the kernel host keeps the kernels while no server runs.
    server = start(kind, db_path, tmp_path / "server.log", **KEEP)
    again: LiveServer | None = None
    hosts: list[int] = []
    try:
        with visiting(browser, server, tmp_path) as visit:
            page = visit.page
            visit.login_through_form(KEPT_PAGE, "alice")
            output = page.get_by_text(KEPT_OUTPUT)
            sliders = page.get_by_role("slider")
            kept, moved = sliders.nth(0), sliders.nth(1)
            with visit.step("the first slider moved to 5"):
                expect(output).to_contain_text(
                    "kept=3 moved=1", timeout=FIRST_RENDER_MS
                )
                kept.focus()
                page.keyboard.press("ArrowRight")
                page.keyboard.press("ArrowRight")
                expect(output).to_contain_text("kept=5 moved=1", timeout=UPDATE_MS)
            pid = output.inner_text().split("pid=")[1].strip()
            hosts = server.kernel_hosts()
            page.evaluate(WATCH_KERNEL_NOT_FOUND)

            os.kill(server.process.pid, signal.SIGTERM)
            expect_alert(visit, RESTARTING, UPDATE_MS)
            with visit.step("the server stops"):
                server.process.wait(STOP_TIMEOUT)
            again = start(
                kind, db_path, tmp_path / "again.log", port=server.port, **KEEP
            )
            visit.server = again
            with visit.step("back on its own kernel: the notice goes"):
                expect(page.get_by_role("alert")).to_have_count(
                    0, timeout=RECONNECT_MS + FIRST_RENDER_MS
                )
            with visit.step("the slider and the output are as they were"):
                expect(kept).to_have_attribute("aria-valuenow", "5")
                expect(output).to_contain_text(f"kept=5 moved=1 pid={pid}")
            with visit.step("the kernel kept the value: moving the other slider"):
                moved.focus()
                page.keyboard.press("ArrowRight")
                expect(output).to_contain_text(
                    f"kept=5 moved=2 pid={pid}", timeout=UPDATE_MS
                )
            with visit.step("marimo's 'kernel not found' never showed"):
                seen = page.evaluate("window.kernelNotFound")
                assert seen["shown"] is False, seen
    finally:
        server.stop()
        if again is not None:
            again.stop()
        for host in hosts:
            end_kernel_host(host)


def test_a_restart_says_restarting_then_started_again(browser, live_db, tmp_path):
    # Both servers' ways of stopping are above (the sliders' test); what
    # differs here is the page's, after a new kernel: one server says it.
    kind = "uvicorn"
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
