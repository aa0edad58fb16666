"""Kernel isolation on the rendered page, in Chromium, under daphne and
uvicorn: what the page says when a cell runs too long, runs out of memory,
or crashes its kernel process, and that another user's session of the same
notebook goes on. (tests/e2e/test_isolation.py checks the processes.)"""

from __future__ import annotations

import pytest

from tests.browser.test_notices import expect_notice
from tests.browser.visit import FIRST_RENDER_MS, UPDATE_MS
from tests.e2e.test_isolation import CELL_TIMEOUT, misbehaving_server

pytestmark = pytest.mark.browser

PAGE = "/notebooks/misbehave/"
SESSIONS = "/admin/django_notebooks/notebooksession/"


@pytest.fixture(scope="module", params=["daphne", "uvicorn"])
def visit_server(request, live_db, tmp_path_factory):
    folder = tmp_path_factory.mktemp(f"isolation-{request.param}")
    server = misbehaving_server(request.param, live_db, folder)
    yield server
    server.stop()


def open_notebook(visit) -> None:
    from playwright.sync_api import expect

    with visit.step("first render"):
        visit.page.goto(visit.origin + PAGE)
        expect(visit.page.get_by_text("done nothing")).to_be_visible(
            timeout=FIRST_RENDER_MS
        )


def choose(visit, action: str) -> None:
    with visit.step(f"choose {action}"):
        visit.page.locator("select").select_option(action)


def expect_done(visit, action: str) -> None:
    from playwright.sync_api import expect

    with visit.step(f"{action} done"):
        expect(visit.page.get_by_text(f"done {action}")).to_be_visible(
            timeout=UPDATE_MS
        )


def test_a_runaway_cell_is_stopped_and_the_page_says_so(visit):
    from playwright.sync_api import expect

    open_notebook(visit)
    choose(visit, "loop")
    expect_notice(
        visit,
        f"Part of this notebook ran for longer than {CELL_TIMEOUT} seconds, so it "
        "was stopped.",
        final=False,
    )
    with visit.step("dismiss"):
        visit.page.get_by_role("alert").get_by_role("button").click()
        expect(visit.page.get_by_role("alert")).to_have_count(0)
    choose(visit, "nothing")  # the same session runs on
    expect_done(visit, "nothing")


def test_a_cell_that_ignores_the_interrupt_ends_its_session(visit):
    open_notebook(visit)
    choose(visit, "sleep")
    expect_notice(visit, "could not be stopped, so the notebook was closed.")


def test_a_cell_out_of_memory(visit):
    open_notebook(visit)
    choose(visit, "allocate")
    expect_notice(
        visit,
        "needed more memory than it may use, so its last step failed.",
        final=False,
    )
    choose(visit, "nothing")
    expect_done(visit, "nothing")


def test_a_crash_ends_that_session_only(visit, browser, tmp_path):
    from tests.browser.visit import visiting

    with visiting(browser, visit.server, tmp_path / "other") as other:
        open_notebook(other)
        open_notebook(visit)
        choose(visit, "crash")
        expect_notice(visit, "This notebook stopped unexpectedly.")
        # The other visitor's session of the same notebook runs on.
        choose(other, "loop")
        expect_notice(other, "so it was stopped.", final=False)
        choose(other, "nothing")
        expect_done(other, "nothing")


def test_the_admin_shows_the_kernel_process_and_terminate_ends_it(
    visit, browser, tmp_path
):
    import re

    from playwright.sync_api import expect

    from tests.browser.visit import visiting

    visit.log_in("alice")
    open_notebook(visit)
    shown = visit.page.get_by_text(re.compile(r"kernel pid=\d+")).inner_text()
    pid = re.search(r"kernel pid=(\d+)", shown)[1]
    with visiting(browser, visit.server, tmp_path / "admin") as admin:
        admin.page.goto(f"{admin.origin}/admin/login/?next={SESSIONS}")
        admin.submit_login("root", SESSIONS, password="root-pw")
        with admin.step("the kernel's figures"):
            admin.page.goto(f"{admin.origin}{SESSIONS}?q=alice")
            expect(
                admin.page.get_by_text(
                    re.compile(rf"pid {pid} · [\d.]+ s CPU · \d+ MB")
                )
            ).to_be_visible()
        with admin.step("terminate"):
            admin.page.locator("input[name=_selected_action]").first.check()
            admin.page.select_option("select[name=action]", "terminate_sessions")
            admin.page.get_by_role("button", name="Go").click()
            expect(admin.page.get_by_text("Asked 1 notebook session")).to_be_visible()
    expect_notice(visit, "An administrator ended this session.")
