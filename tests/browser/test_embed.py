"""``{% notebook %}`` in headless Chromium: a page of the test project
(tests/templates/embed_page.html) embeds a notebook whose height follows a
slider, and the ``sales`` notebook; the frames load the real marimo frontend
and grow and shrink with their content, and users who may not open a
notebook see the placeholder instead. Also the notebook index, and
embed.js on its own, with made-up pages (no server) for what marimo's pages
do not show: content sized in vh, CSS transitions, frames added later.

The page and embed.js do not depend on the server, so one server (daphne)
is enough here; tests/browser/test_frontend.py covers the others.
"""

from __future__ import annotations

import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

import django_notebooks
from tests.browser.visit import FIRST_RENDER_MS, UPDATE_MS, Visit, visiting

pytestmark = pytest.mark.browser
on_daphne = pytest.mark.parametrize("notebook_server", ["daphne"], indirect=True)

# Written into the server's dropbox directory (picked up without a restart),
# so the page can embed it as "dropbox/rows". It reads its first row count
# from the page's query string, which the tag sets (rows=3).
ROWS_NOTEBOOK = """
import marimo

app = marimo.App()


@app.cell
def _():
    import marimo as mo

    return (mo,)


@app.cell
def _(mo):
    count = mo.ui.slider(
        1, 60, value=int(mo.query_params().get("rows") or 1), label="rows"
    )
    count
    return (count,)


@app.cell
def _(count, mo):
    mo.md("\\n\\n".join(f"row {i}" for i in range(1, count.value + 1)))
    return
"""
ROWS = "iframe.rows-frame"
SALES = 'iframe[src="/notebooks/sales/"]'
EMBED_JS = "/static/django_notebooks/embed.js"

# The frame's size and what scrolls inside it: the document, and the
# element marimo's page scrolls in (#App, which fills the page).
MEASURE = """(selector) => {
  const frame = document.querySelector(selector);
  const doc = frame.contentDocument;
  const app = doc && doc.getElementById("App");
  const rows = doc ? [...doc.querySelectorAll("*")].filter(
    (e) => !e.children.length && /^row \\d+$/.test(e.textContent.trim())) : [];
  const last = rows.length ? rows[rows.length - 1] : null;
  return {
    frame: frame.getBoundingClientRect().height,
    doc: doc && [doc.documentElement.scrollHeight, doc.documentElement.clientHeight],
    app: app && [app.scrollHeight, app.clientHeight],
    rows: rows.length,
    lastRowBottom: last && last.getBoundingClientRect().bottom + app.scrollTop,
  };
}"""


def fits(measure: dict) -> bool:
    """Nothing scrolls inside the frame."""
    if not measure["doc"] or not measure["app"]:
        return False
    (doc_scroll, doc_client), (app_scroll, app_client) = measure["doc"], measure["app"]
    return doc_scroll <= doc_client + 1 and app_scroll <= app_client + 1


@pytest.fixture
def visit(browser, notebook_server, tmp_path):
    rows = notebook_server.dropbox / "rows.py"
    if not rows.exists():  # once per server: a rewrite would reload it
        rows.write_text(ROWS_NOTEBOOK)
    with visiting(browser, notebook_server, tmp_path, 1000, 700) as visit:
        yield visit


def wait_until_it_fits(
    visit: Visit,
    rows: int | None = None,
    frame: str = ROWS,
    taller_than: float = 0,
    shorter_than: float = 1e9,
) -> dict:
    """Wait until nothing scrolls in ``frame`` (and the rows frame shows
    ``rows`` rows, the frame's height is between ``taller_than`` and
    ``shorter_than``); the measurements then."""
    page = visit.page
    page.wait_for_function(
        f"""([selector, rows, tallerThan, shorterThan]) => {{
          const m = ({MEASURE})(selector);
          return (rows === null || m.rows === rows)
            && m.frame > tallerThan && m.frame < shorterThan
            && m.doc && m.app && m.doc[0] <= m.doc[1] + 1 && m.app[0] <= m.app[1] + 1;
        }}""",
        arg=[frame, rows, taller_than, shorter_than],
        timeout=UPDATE_MS,
    )
    measure = page.evaluate(MEASURE, frame)
    assert fits(measure), measure
    return measure


@on_daphne
def test_embedded_notebook_sizes_itself_to_its_content(visit):
    from playwright.sync_api import expect

    page = visit.page
    visit.log_in("alice", "/embed/")
    rows = page.frame_locator(ROWS)

    with visit.step("first render, with the query of the tag"):
        expect(rows.get_by_text("row 3", exact=True)).to_be_visible(
            timeout=FIRST_RENDER_MS
        )
        expect(rows.get_by_text("row 4", exact=True)).to_have_count(0)
        three = wait_until_it_fits(visit, 3)
    visit.shot("embed-3-rows")
    # Grown from the browser's 150px default to the content, and not much
    # more: below the last row there is only marimo's bottom padding.
    assert three["frame"] > 200, three
    assert 0 < three["frame"] - three["lastRowBottom"] < 200, three

    with visit.step("60 rows: the frame grows"):
        slider = rows.get_by_role("slider")
        slider.focus()
        page.keyboard.press("End")
        expect(rows.get_by_text("row 60", exact=True)).to_be_attached(timeout=UPDATE_MS)
        sixty = wait_until_it_fits(visit, 60)
    visit.shot("embed-60-rows")
    assert sixty["frame"] > three["frame"] + 1000, (three, sixty)
    assert 0 < sixty["frame"] - sixty["lastRowBottom"] < 200, sixty

    with visit.step("1 row: the frame shrinks"):
        slider.focus()
        page.keyboard.press("Home")
        expect(rows.get_by_text("row 2", exact=True)).to_have_count(
            0, timeout=UPDATE_MS
        )
        one = wait_until_it_fits(visit, 1)
    assert one["frame"] < three["frame"], (three, one)
    assert 0 < one["frame"] - one["lastRowBottom"] < 200, one

    with visit.step("the sales notebook, alice may open it"):
        sales = page.frame_locator(SALES)
        expect(sales.get_by_text('"username": "alice"')).to_be_visible(
            timeout=FIRST_RENDER_MS
        )
        wide = wait_until_it_fits(visit, frame=SALES)

    with visit.step("a narrower window: the text wraps, the frame grows"):
        page.set_viewport_size({"width": 520, "height": 700})
        narrow = wait_until_it_fits(visit, frame=SALES, taller_than=wide["frame"])
    with visit.step("wider again: the frame shrinks back"):
        page.set_viewport_size({"width": 1000, "height": 700})
        wait_until_it_fits(visit, frame=SALES, shorter_than=narrow["frame"])
    assert page.locator(SALES).get_attribute("title") == "Sales"
    assert page.locator(ROWS).get_attribute("loading") == "lazy"
    # embed.js is on the page, and fetched, once for both frames.
    assert page.locator(f'script[src="{EMBED_JS}"]').count() == 1
    fetched = [url for _, _, url in visit.responses if url.endswith(EMBED_JS)]
    assert len(fetched) == 1, f"{fetched}{visit.report()}"
    assert not visit.problems, f"problems on the page{visit.report()}"


@on_daphne
def test_users_without_access_see_the_placeholder(visit):
    from playwright.sync_api import expect

    page = visit.page
    with visit.step("anonymous: two placeholders, no frames"):
        page.goto(f"{visit.origin}/embed/")
        placeholders = page.locator(".dn-embed-unavailable")
        expect(placeholders).to_have_count(2)
        expect(placeholders.nth(0)).to_have_text("Log in to see the notebook Rows.")
        expect(placeholders.nth(1)).to_have_text("Log in to see the notebook Sales.")
        expect(page.locator("iframe")).to_have_count(0)
    visit.shot("embed-anonymous")
    assert not [url for *_, url in visit.responses if "/notebooks/" in url]

    with visit.step("the placeholder's link logs bob in and comes back"):
        placeholders.nth(1).get_by_role("link", name="Log in").click()
        expect(page).to_have_url(f"{visit.origin}/accounts/login/?next=/embed/")
        visit.submit_login("bob", "/embed/")

    with visit.step("bob: the rows notebook, and no access to sales"):
        expect(page.locator(".dn-embed-unavailable")).to_have_text(
            "You do not have access to the notebook Sales."
        )
        expect(page.frame_locator(ROWS).get_by_text("row 3", exact=True)).to_be_visible(
            timeout=FIRST_RENDER_MS
        )
        expect(page.locator("iframe")).to_have_count(1)
    visit.shot("embed-bob")
    assert not [url for *_, url in visit.responses if "/notebooks/sales/" in url]
    assert not visit.problems, f"problems on the page{visit.report()}"


@on_daphne
def test_the_index_lists_what_the_user_may_open(visit):
    from playwright.sync_api import expect

    page = visit.page
    cards = page.locator(".dn-notebook")
    visit.log_in("alice", "/notebooks/")
    with visit.step("alice's index"):
        expect(cards.first).to_be_visible()
        alice = cards.locator("a").evaluate_all("links => links.map(a => a.pathname)")
    visit.shot("index-alice")
    with visit.step("on a phone: one column, nothing sideways"):
        page.set_viewport_size({"width": 375, "height": 700})
        lefts = cards.evaluate_all(
            "cards => cards.map(card => card.getBoundingClientRect().left)"
        )
        assert len(set(lefts)) == 1, lefts
        assert page.evaluate(
            "() => document.documentElement.scrollWidth"
            " <= document.documentElement.clientWidth"
        )
        page.set_viewport_size({"width": 1000, "height": 700})
    assert "/notebooks/sales/" in alice
    assert "/notebooks/dropbox/rows/" in alice
    assert "/notebooks/ops/" not in alice and "/notebooks/report/" not in alice

    with visit.step("open a notebook from the index"):
        cards.filter(has_text="Square").get_by_role("link").click()
        expect(page).to_have_url(f"{visit.origin}/notebooks/square/")
        expect(page.get_by_text("square=9 user=alice")).to_be_visible(
            timeout=FIRST_RENDER_MS
        )

    page.context.clear_cookies()
    visit.log_in("bob", "/notebooks/")
    with visit.step("bob's index"):
        expect(cards.first).to_be_visible()
        bob = cards.locator("a").evaluate_all("links => links.map(a => a.pathname)")
    assert "/notebooks/sales/" not in bob
    assert set(bob) == set(alice) - {"/notebooks/sales/"}
    assert not visit.problems, f"problems on the page{visit.report()}"


# embed.js on its own

EMBED_JS_FILE = (
    Path(django_notebooks.__file__).parent / "static" / "django_notebooks" / "embed.js"
)
SITE = "http://site.test"
PARENT = """<!doctype html><html><body style="margin: 0">
<iframe id="auto" src="/frame" data-notebook-autosize
        style="box-sizing: border-box; width: 100%; border: 3px solid"></iframe>
<iframe id="fixed" src="/frame" height="222"></iframe>
<script src="/embed.js" defer></script>
</body></html>"""
FRAME_HEIGHT = """(id) => {
  const frame = document.getElementById(id);
  const doc = frame.contentDocument && frame.contentDocument.documentElement;
  return {
    height: frame.clientHeight,
    scroll: doc ? doc.scrollHeight : null,  // null: not loaded yet
    view: doc ? doc.clientHeight : null,
  };
}"""


@pytest.fixture
def site(browser):
    """A browser tab on a made-up site, whose pages the test writes."""
    if isinstance(browser, str):  # no browser, on CI: the test fails (conftest.py)
        yield None
        return
    pages = {"/": PARENT, "/embed.js": EMBED_JS_FILE.read_text()}
    context = browser.new_context(viewport={"width": 800, "height": 600})
    context.set_default_timeout(10_000)

    def answer(route):
        path = urlsplit(route.request.url).path
        if path not in pages:
            route.fulfill(status=404, body="")
            return
        kind = "text/javascript" if path.endswith(".js") else "text/html"
        route.fulfill(body=pages[path], content_type=kind)

    context.route(f"{SITE}/**", answer)
    page = context.new_page()
    page.pages = pages
    try:
        yield page
    finally:
        context.close()


def sized(page, height: int, frame: str = "auto") -> dict:
    """Wait until the frame shows ``height`` pixels of document, unscrolled."""
    page.wait_for_function(
        f"([id, height]) => {{ const m = ({FRAME_HEIGHT})(id);"
        " return m.view === height && m.scroll <= m.view; }",
        arg=[frame, height],
    )
    return page.evaluate(FRAME_HEIGHT, frame)


def test_embed_js_sizes_a_plain_document_and_leaves_fixed_frames_alone(site):
    site.pages["/frame"] = (
        '<!doctype html><body style="margin: 0">'
        '<div id="box" style="height: 300px"></div></body>'
    )
    site.goto(f"{SITE}/")
    sized(site, 300)
    box = site.frame_locator("#auto").locator("#box")
    box.evaluate("box => box.style.height = '900px'")
    sized(site, 900)
    box.evaluate("box => box.style.height = '120px'")
    sized(site, 120)
    # The frame's 3px borders (border-box) are kept around the content.
    assert site.evaluate("document.getElementById('auto').offsetHeight") == 126
    assert site.evaluate(FRAME_HEIGHT, "fixed")["height"] == 222
    assert site.evaluate("window.djangoNotebooksEmbed !== undefined")


@pytest.mark.parametrize("timing", ["linear", "steps(2, end)"])
def test_embed_js_follows_a_css_transition_to_its_end(site, timing):
    # steps(2): two equal jumps of 300px, the second one the same as the
    # frame's last growth, as content sized in vh would ask for.
    site.pages["/frame"] = (
        f"<!doctype html><style>#box {{ height: 100px; transition: height 0.8s {timing}; }}"
        " #box.open { height: 700px; }</style>"
        '<body style="margin: 0"><div id="box"></div></body>'
    )
    site.goto(f"{SITE}/")
    sized(site, 100)
    # One class change, then 0.8s of growth with no change to the DOM.
    site.frame_locator("#auto").locator("#box").evaluate(
        "box => box.classList.add('open')"
    )
    sized(site, 700)


def test_embed_js_stops_growing_with_content_sized_in_vh(site):
    site.pages["/frame"] = (
        '<!doctype html><body style="margin: 0"><div style="height: 100vh"></div>'
        '<p style="margin: 0; height: 40px">below a full screen</p></body>'
    )
    site.goto(f"{SITE}/")
    site.wait_for_function(f"({FRAME_HEIGHT})('auto').height > 150")
    # Sleeps on purpose: what is tested is that nothing happens. embed.js
    # gives up growing with no event to wait for, so the test lets it run
    # past its one retry (300ms later), then watches the height stay put.
    time.sleep(1.5)
    settled = site.evaluate(FRAME_HEIGHT, "auto")["height"]
    time.sleep(1)
    assert site.evaluate(FRAME_HEIGHT, "auto")["height"] == settled
    # 150px at first, then one growth and one retry of 40px each.
    assert settled <= 150 + 2 * 40, settled


def test_embed_js_sizes_frames_added_later(site):
    site.pages["/frame"] = (
        '<!doctype html><body style="margin: 0"><div style="height: 444px"></div>'
    )
    site.pages["/"] = PARENT.replace('<iframe id="auto"', '<iframe id="first"')
    site.goto(f"{SITE}/")
    # An htmx swap, say: a new frame, and a second copy of the script.
    site.evaluate(
        """() => document.body.insertAdjacentHTML("beforeend",
          '<iframe id="auto" src="/frame" data-notebook-autosize></iframe>'
          + '<script src="/embed.js"></script>')"""
    )
    sized(site, 444)
    sized(site, 444, frame="first")
