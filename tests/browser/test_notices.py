"""The bridge's words on the rendered page, in Chromium, under daphne and
uvicorn: why a session ended (an administrator, the user's logout, an idle
timeout) or could not open (the server is busy, an invalid query). Each
notice stays on the page, and marimo's frontend stops reconnecting."""

from __future__ import annotations

import re
import time

import pytest
from django.conf import settings

from tests.browser.visit import FIRST_RENDER_MS, UPDATE_MS
from tests.helpers import wait_until
from tests.live import LiveServer, database_of_its_own

pytestmark = pytest.mark.browser

SQUARE_OUTPUT = re.compile(r"square=\d+ user=")
SESSIONS = "/admin/django_notebooks/notebooksession/"
IDLE_SECONDS = 4
SESSION_TTL = settings.DJANGO_NOTEBOOKS["MARIMO"]["session_ttl"]
# More than marimo's first reconnect delay (3 s).
RECONNECT_WAIT_S = 4.5


@pytest.fixture(scope="module", params=["daphne", "uvicorn"])
def visit_server(request, live_db, tmp_path_factory):
    """A server with a database of its own (and a superuser), the query
    notebooks, a notebook closed after IDLE_SECONDS without use, and room
    for two sessions."""
    folder = tmp_path_factory.mktemp(f"notices-{request.param}")
    server = LiveServer(
        request.param,
        database_of_its_own(live_db, folder, superuser=True),
        folder / "server.log",
        DJANGO_NOTEBOOKS_TEST_QUERY="1",
        DJANGO_NOTEBOOKS_TEST_IDLE_NOTEBOOK=str(IDLE_SECONDS),
        DJANGO_NOTEBOOKS_TEST_LIMIT_MAX_SESSIONS="2",
    )
    yield server
    server.stop()


def open_square(visit, path="/notebooks/square/"):
    from playwright.sync_api import expect

    with visit.step(f"first render of {path}"):
        visit.page.goto(visit.origin + path)
        expect(visit.page.get_by_text(SQUARE_OUTPUT)).to_be_visible(
            timeout=FIRST_RENDER_MS
        )


def kernel_sockets(visit) -> list[str]:
    return [ws.url for ws in visit.websockets if "/ws?" in ws.url]


def session_id_of(visit) -> str:
    return kernel_sockets(visit)[-1].split("session_id=", 1)[1].split("&", 1)[0]


def expect_notice(visit, text: str, *, final: bool = True) -> None:
    """The notice is on the page, and stays: marimo does not reconnect."""
    from playwright.sync_api import expect

    notice = visit.page.get_by_role("alert").filter(has_text=text)
    with visit.step(f"notice {text!r}"):
        expect(notice).to_be_visible(timeout=UPDATE_MS)
        expect(notice.get_by_role("button")).to_have_text(
            "Reload" if final else "Dismiss"
        )
    if final:
        sockets = len(kernel_sockets(visit))
        time.sleep(RECONNECT_WAIT_S)
        with visit.step("no reconnect"):
            expect(notice).to_be_visible()
            assert len(kernel_sockets(visit)) == sockets, visit.report()


def test_an_administrators_terminate(visit, browser, tmp_path):
    from playwright.sync_api import expect

    from tests.browser.visit import visiting

    visit.log_in("alice")
    open_square(visit)
    session_id = session_id_of(visit)

    with visiting(browser, visit.server, tmp_path) as admin:
        admin.page.goto(f"{admin.origin}/admin/login/?next={SESSIONS}")
        admin.submit_login("root", SESSIONS, password="root-pw")
        with admin.step("terminate"):
            admin.page.goto(f"{admin.origin}{SESSIONS}?q={session_id}")
            admin.page.locator("input[name=_selected_action]").check()
            admin.page.select_option("select[name=action]", "terminate_sessions")
            admin.page.get_by_role("button", name="Go").click()
            expect(admin.page.get_by_text("Asked 1 notebook session")).to_be_visible()

    expect_notice(visit, "An administrator ended this session.")
    with visit.step("reload starts again"):
        visit.page.get_by_role("alert").get_by_role("button").click()
        expect(visit.page.get_by_text(SQUARE_OUTPUT)).to_be_visible(
            timeout=FIRST_RENDER_MS
        )
        expect(visit.page.get_by_role("alert")).to_have_count(0)


def test_a_logout_in_another_tab(visit):
    visit.log_in("alice")
    open_square(visit)
    other_tab = visit.page.context.new_page()
    other_tab.goto(visit.origin + "/accounts/login/")
    status = other_tab.evaluate(
        """async () => {
            const token = document.cookie.match(/csrftoken=([^;]+)/)[1];
            const answer = await fetch("/accounts/logout/", {
                method: "POST", headers: {"X-CSRFToken": token},
            });
            return answer.status;
        }"""
    )
    assert status in (200, 302), status
    expect_notice(visit, "Your access to this notebook has ended.")


def test_an_idle_session(visit):
    visit.log_in("alice")
    open_square(visit, "/notebooks/idle/")
    expect_notice(
        visit, f"closed after {IDLE_SECONDS} seconds without use. Reload the page"
    )


def test_an_invalid_query_shows_as_text(visit):
    visit.log_in("alice")
    visit.page.goto(
        f"{visit.origin}/notebooks/query-form/?region=north&since=2024-05-01"
    )
    visit.page.wait_for_function(
        "document.body.innerText.includes('QUERY {')", timeout=FIRST_RENDER_MS
    )
    # The page itself passed (a page load checks the query too); the
    # websocket's query is what marimo runs with, so it is checked again:
    # send a hostile one the way a crafted link to the socket would.
    visit.page.evaluate(
        """() => { const ws = new WebSocket(location.href.replace("http", "ws")
            .split("?")[0] + "ws?session_id=s_crafted&region=<img src=x "
            + "onerror=window.hacked=1>"); }"""
    )
    expect_notice(visit, "region: ")
    assert visit.page.evaluate("() => window.hacked") is None
    assert visit.page.locator("#django-notebooks-notice img").count() == 0


def test_a_busy_server(visit, visit_server):
    from playwright.sync_api import expect

    # The sessions of the tests before are closed, but each still counts
    # while its kernel lives (session_ttl, 5 s in the test settings).
    wait_until(
        lambda: not visit_server.kernel_pids(),
        SESSION_TTL + 30,
        "the kernels of the closed tabs did not end",
    )
    visit.log_in("alice")
    open_square(visit)  # one of two
    second = visit.page.context.new_page()
    second.goto(visit.origin + "/notebooks/square/")
    expect(second.get_by_text(SQUARE_OUTPUT)).to_be_visible(timeout=FIRST_RENDER_MS)
    third = visit.page.context.new_page()
    third.goto(visit.origin + "/notebooks/square/")
    busy = third.get_by_role("alert").filter(has_text="Try again in a few minutes")
    expect(busy).to_be_visible(timeout=UPDATE_MS)
    # The sessions already open are untouched.
    expect(visit.page.get_by_text(SQUARE_OUTPUT)).to_be_visible()
    expect(visit.page.get_by_role("alert")).to_have_count(0)
