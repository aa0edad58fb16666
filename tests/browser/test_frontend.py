"""marimo's real frontend in headless Chromium, against a real daphne or
uvicorn server: log in through Django's form, load the notebook through the
bridge, and drive a UI element over the kernel websocket."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

import pytest

from tests.browser.visit import FIRST_RENDER_MS, UPDATE_MS

pytestmark = pytest.mark.browser

SQUARE_OUTPUT = re.compile(r"square=\d+ user=")


def test_logged_in_user_drives_the_real_frontend(visit):
    from playwright.sync_api import expect

    page = visit.page
    visit.login_through_form("/notebooks/square/", "alice")

    with visit.step("first render"):
        output = page.get_by_text(SQUARE_OUTPUT)
        expect(output).to_have_text("square=9 user=alice", timeout=FIRST_RENDER_MS)
        slider = page.get_by_role("slider")
        expect(slider).to_have_count(1)
        expect(slider).to_have_attribute("aria-valuenow", "3")
    visit.shot("square-9")

    with visit.step("slider ArrowRight"):
        slider.focus()
        page.keyboard.press("ArrowRight")
        expect(slider).to_have_attribute("aria-valuenow", "4")
        expect(output).to_have_text("square=16 user=alice", timeout=UPDATE_MS)

    with visit.step("slider End"):
        page.keyboard.press("End")
        expect(slider).to_have_attribute("aria-valuenow", "10")
        expect(output).to_have_text("square=100 user=alice", timeout=UPDATE_MS)
    shot = visit.shot("square-100")

    notebook = f"{visit.origin}/notebooks/square/"
    kernel_ws = notebook.replace("http", "ws", 1) + "ws?session_id="
    kernel_sockets = [ws.url for ws in visit.websockets if ws.url.startswith(kernel_ws)]
    assert len(kernel_sockets) == 1, f"expected one kernel websocket{visit.report()}"
    assert visit.frames_received > 0, f"no websocket frames arrived{visit.report()}"
    # marimo's frontend comes from the bridge's compressed copy, not from
    # marimo's uncompressed one below each notebook.
    frontend = f"{visit.origin}/notebooks/_marimo/"
    assets = [
        url
        for status, _, url in visit.responses
        if status == 200 and url.startswith(frontend)
    ]
    assert assets, f"marimo's assets were not loaded through the bridge{visit.report()}"
    assert not [
        url for _, _, url in visit.responses if url.startswith(notebook + "assets/")
    ], f"assets were loaded from marimo's uncompressed copy{visit.report()}"
    kernel_posts = [
        (status, url)
        for status, method, url in visit.responses
        if method == "POST" and url.startswith(notebook + "api/kernel/")
    ]
    assert kernel_posts and all(status == 200 for status, _ in kernel_posts), (
        f"kernel calls: {kernel_posts}{visit.report()}"
    )
    hosts = {urlsplit(url).netloc for _, _, url in visit.responses}
    foreign = hosts - {urlsplit(visit.origin).netloc}
    assert not foreign, f"the page reached other hosts: {foreign}{visit.report()}"
    assert not visit.problems, (
        f"problems while the notebook ran (screenshot {shot}){visit.report()}"
    )


def test_user_without_access_sees_a_403_page(visit):
    from playwright.sync_api import expect

    page = visit.page
    # The login redirects back to the notebook, which bob may not open.
    visit.login_through_form("/notebooks/sales/", "bob")
    with visit.step("403 page"):
        expect(page).to_have_url(f"{visit.origin}/notebooks/sales/")
        expect(page.locator("h1")).to_have_text("403 Forbidden")
    shot = visit.shot("sales-403")

    notebook = f"{visit.origin}/notebooks/sales/"
    page_loads = [
        (status, method) for status, method, url in visit.responses if url == notebook
    ]
    assert page_loads == [(302, "GET"), (403, "GET")], (
        f"{page_loads} (screenshot {shot}){visit.report()}"
    )
    below = [
        url
        for _, _, url in visit.responses
        if url.startswith(notebook) and url != notebook
    ]
    assert not below, f"the 403 page loaded notebook resources: {below}{visit.report()}"
    assert not visit.websockets, f"the 403 page opened a websocket{visit.report()}"
    assert page.get_by_role("slider").count() == 0, (
        f"a notebook rendered anyway{visit.report()}"
    )
    expected = (
        f"HTTP 403: GET {notebook} ",
        f"console error on {notebook}: Failed to load resource: "
        "the server responded with a status of 403",
    )
    unexpected = [p for p in visit.problems if not p.startswith(expected)]
    assert not unexpected, f"unexpected problems (screenshot {shot}){visit.report()}"
