"""Snapshots in headless Chromium: a notebook shown outputs first has its
outputs on the page long before its own run could have made them (the run
takes seconds), says nothing odd meanwhile, and its widgets work once its
kernel has caught up; a static notebook's page shows its outputs, with no
websocket, and says when it was made; ``{% notebook %}`` embeds it."""

from __future__ import annotations

import time

import httpx
import pytest
from playwright.sync_api import expect

from tests.browser.visit import FIRST_RENDER_MS, UPDATE_MS
from tests.e2e.test_snapshots import start, stop
from tests.helpers import wait_until

pytestmark = pytest.mark.browser

# How long the notebook's run takes (its second cell sleeps).
RUN_SECONDS = 4


@pytest.fixture(scope="module", params=["daphne", "uvicorn"])
def visit_server(request, live_db, tmp_path_factory):
    folder = tmp_path_factory.mktemp(f"snapshots-{request.param}")
    server = start(
        request.param,
        folder,
        live_db,
        DJANGO_NOTEBOOKS_TEST_RUN_SECONDS=str(RUN_SECONDS),
    )
    try:
        # The first page of a notebook starts the server's keeper.
        httpx.get(server.url + "/notebooks/kpis/", timeout=30)
        wait_until(
            lambda: all(
                f"Made the snapshot of '{slug}'" in server.log()
                for slug in ("kpis", "report")
            ),
            120,
            "the snapshots were not made",
        )
        yield server
    finally:
        stop(server)


def test_outputs_show_before_the_kernel_and_widgets_work_after(visit):
    page = visit.page
    opened: list[float] = []
    page.on("websocket", lambda ws: opened.append(time.monotonic()))
    with visit.step("the snapshot's outputs"):
        page.goto(visit.origin + "/notebooks/report/")
        output = page.get_by_text("groups=1 square=16")
        expect(output).to_be_visible(timeout=FIRST_RENDER_MS)
        shown = time.monotonic()
        assert opened, "the page opened no websocket"
        # The session's own run takes RUN_SECONDS from its start: what
        # shows before then is the snapshot.
        assert shown - opened[0] < RUN_SECONDS, shown - opened[0]
        visit.shot("outputs-first")
    with visit.step("nothing odd while the kernel runs"):
        for words in ("error", "Error", "reconnect", "disconnected"):
            assert not page.get_by_text(words, exact=False).is_visible(), words
    with visit.step("the widget works once the kernel has run"):
        slider = page.get_by_role("slider")
        expect(slider).to_have_count(1)
        time.sleep(RUN_SECONDS)  # its cell runs after the slow one
        slider.focus()
        page.keyboard.press("End")
        expect(page.get_by_text("groups=1 square=100")).to_be_visible(timeout=UPDATE_MS)
    assert not visit.problems, visit.report()


def test_a_static_page_needs_no_kernel_and_says_when_it_was_made(visit):
    page = visit.page
    with visit.step("the static page"):
        page.goto(visit.origin + "/notebooks/kpis/")
        expect(page.get_by_text("groups=1 square=16")).to_be_visible(
            timeout=FIRST_RENDER_MS
        )
        expect(page.locator(".django-notebooks-snapshot")).to_contain_text(
            "Snapshot of"
        )
        expect(page.get_by_role("slider")).to_have_count(1)
        visit.shot("static")
    with visit.step("embedded in a page of the site"):
        page.goto(visit.origin + "/embed-snapshot/")
        frame = page.frame_locator('iframe[src="/notebooks/kpis/"]')
        expect(frame.get_by_text("groups=1 square=16")).to_be_visible(
            timeout=FIRST_RENDER_MS
        )
    assert not visit.websockets, "a static page opened a websocket"
    assert not visit.problems, visit.report()
