"""Query parameters in marimo's real frontend: the page's query string
reaches the kernel websocket (one value per name, the last), so the notebook
gets the cleaned values; an invalid query shows the 400 page."""

from __future__ import annotations

import json

import pytest

from tests.browser.visit import FIRST_RENDER_MS
from tests.live import LiveServer

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def visit_server(live_db, tmp_path_factory):
    """The test project with its query notebooks (``visit`` opens its tab
    here)."""
    server = LiveServer(
        "daphne",
        live_db,
        tmp_path_factory.mktemp("logs") / "query-browser.log",
        DJANGO_NOTEBOOKS_TEST_QUERY="1",
        DJANGO_NOTEBOOKS_TEST_FAST_PATH="1",
    )
    yield server
    server.stop()


def test_the_pages_query_reaches_the_notebook(visit):
    page = visit.page
    path = "/notebooks/query-form/"
    query = "region=south&region=north&since=2024-05-01&limit=7&other=a%20b"
    visit.log_in("alice")

    with visit.step("first render"):
        page.goto(f"{visit.origin}{path}?{query}")
        page.wait_for_function(
            "document.body.innerText.includes('QUERY {')", timeout=FIRST_RENDER_MS
        )
    text = next(
        line for line in page.inner_text("body").splitlines() if "QUERY {" in line
    )
    seen = json.loads(text.split("QUERY ", 1)[1])
    assert seen["query"] == {"region": "north", "since": "2024-05-01", "limit": 7}
    assert seen["types"]["since"] == "date"
    assert seen["query_params"]["other"] == "a b"

    [kernel_url] = [
        ws.url
        for ws in visit.websockets
        if ws.url.startswith(visit.origin.replace("http", "ws"))
    ]
    # What the bridge relies on, in marimo's frontend: the page's parameters,
    # the last value of a repeated one, then the session id.
    assert kernel_url.split("?", 1)[1].startswith(
        "region=north&since=2024-05-01&limit=7&other=a+b&session_id=s_"
    ), visit.report()
    assert not visit.problems, visit.report()


def test_an_invalid_query_shows_the_400_page(visit):
    page = visit.page
    path = "/notebooks/query-form/"
    visit.log_in("alice")
    response = page.goto(f"{visit.origin}{path}?region=west&since=2024-05-01")
    assert response.status == 400
    assert "region: Select a valid choice." in page.inner_text("body")
    assert visit.websockets == []
