"""The bridge's notice bar on the rendered page, in Chromium, under daphne
and uvicorn: while it shows, marimo's own words for the same event are
hidden, and the page is pushed down by the bar's height (at a wide and at
a narrow window), and both are undone when the bar is dismissed.

notices.js finds marimo's words as marimo 0.25.2 shows them: these tests
first check that marimo still puts them in the page, so that a marimo
whose markup changed fails here, saying so, instead of the hiding quietly
stopping to work."""

from __future__ import annotations

import pytest

from tests.browser import test_isolation
from tests.browser.test_isolation import choose, expect_done, open_notebook
from tests.browser.test_notices import expect_notice
from tests.browser.visit import UPDATE_MS, visiting
from tests.helpers import wait_until

pytestmark = pytest.mark.browser

HEADING = "A notebook that misbehaves on request"
MARIMO_TOAST = "An internal error occurred"
MARIMO_TOAST_DETAIL = "See console for details"
MARIMO_STATUS = "kernel not found"
CHANGED = (
    "marimo no longer shows {words!r} as marimo 0.25.2 did: notices.js "
    "(MARIMO_WORDS) must learn how this marimo shows it"
)


# The misbehaving notebook's server, on daphne and on uvicorn (one per module).
visit_server = test_isolation.visit_server


def expect_marimo_words_hidden(visit, words: str) -> None:
    """marimo has ``words`` in the page (else its markup changed), and they
    are not shown."""
    from playwright.sync_api import expect

    # marimo's announcement for screen readers (a role=status live region,
    # never shown) repeats the words at times: it is not what a visitor sees.
    found = visit.page.get_by_text(words, exact=False).and_(
        visit.page.locator(':not([role="status"])')
    )
    with visit.step(f"marimo's {words!r} is in the page"):
        expect(found.first, CHANGED.format(words=words)).to_be_attached(
            timeout=UPDATE_MS
        )
    with visit.step(f"marimo's {words!r} is hidden"):
        for index in range(found.count()):
            expect(found.nth(index)).to_be_hidden()


def test_marimos_error_toast_is_hidden_while_the_notice_shows(visit):
    from playwright.sync_api import expect

    open_notebook(visit)
    choose(visit, "allocate")
    expect_notice(
        visit,
        "needed more memory than it may use, so its last step failed.",
        final=False,
    )
    expect_marimo_words_hidden(visit, MARIMO_TOAST)
    expect_marimo_words_hidden(visit, MARIMO_TOAST_DETAIL)
    with visit.step("dismiss: nothing of marimo's stays hidden"):
        visit.page.get_by_role("alert").get_by_role("button").click()
        expect(visit.page.get_by_role("alert")).to_have_count(0)
        expect(visit.page.locator("[data-django-notebooks-hidden]")).to_have_count(0)
    choose(visit, "nothing")
    expect_done(visit, "nothing")


def test_marimos_kernel_not_found_is_hidden_under_notebook_stopped(visit):
    open_notebook(visit)
    choose(visit, "crash")
    expect_notice(visit, "This notebook stopped unexpectedly.")
    expect_marimo_words_hidden(visit, MARIMO_STATUS)


def apart(one: dict[str, float], other: dict[str, float]) -> bool:
    """Whether two boxes (Playwright's bounding boxes) do not overlap."""
    return (
        one["y"] + one["height"] <= other["y"]
        or other["y"] + other["height"] <= one["y"]
        or one["x"] + one["width"] <= other["x"]
        or other["x"] + other["width"] <= one["x"]
    )


@pytest.mark.parametrize("width", [1100, 420])
def test_the_bar_pushes_the_page_down_and_back(browser, visit_server, tmp_path, width):
    from playwright.sync_api import expect

    with visiting(browser, visit_server, tmp_path, width=width) as visit:
        open_notebook(visit)
        heading = visit.page.get_by_role("heading", name=HEADING)
        before = heading.bounding_box()
        assert before is not None, visit.report()
        choose(visit, "loop")
        expect_notice(visit, "so it was stopped.", final=False)
        bar = visit.page.get_by_role("alert")
        with visit.step(f"at {width} px the heading is below the bar"):
            visit.shot(f"bar-{width}")
            bar_box, heading_box = bar.bounding_box(), heading.bounding_box()
            assert bar_box and heading_box, visit.report()
            assert apart(bar_box, heading_box), (bar_box, heading_box)
            expect(heading).to_be_in_viewport()
        with visit.step("dismissed, the heading is back where it was"):
            bar.get_by_role("button").click()
            expect(bar).to_have_count(0)
            wait_until(
                lambda: heading.bounding_box() == before,
                UPDATE_MS / 1000,
                lambda: f"the heading stays at {heading.bounding_box()}, not {before}",
            )
