"""The kernel websocket's flow control with the real page, in Chromium,
under daphne and uvicorn: the page's script acknowledges what it has read,
so a notebook that sends many times the server's window of output renders
all of it, on one websocket, and marimo's frontend never sees a mark."""

from __future__ import annotations

import pytest

from tests.browser.visit import FIRST_RENDER_MS
from tests.live import LiveServer

pytestmark = pytest.mark.browser

COUNT, SIZE_KB = 30, 64  # 1.9 MB: more than seven windows
WINDOW = 256 * 1024
PAGE = f"/notebooks/outputs/?count={COUNT}&size_kb={SIZE_KB}"


@pytest.fixture(scope="module", params=["daphne", "uvicorn"])
def visit_server(request, live_db, tmp_path_factory):
    folder = tmp_path_factory.mktemp(f"flow-{request.param}")
    server = LiveServer(
        request.param,
        live_db,
        folder / "server.log",
        DJANGO_NOTEBOOKS_TEST_OUTPUTS="1",
        DJANGO_NOTEBOOKS_TEST_MAX_UNREAD_WEBSOCKET_BYTES=str(WINDOW),
        DJANGO_NOTEBOOKS_TEST_WEBSOCKET_READ_TIMEOUT="5",
    )
    yield server
    server.stop()


def test_the_page_acknowledges_what_it_read_and_gets_every_output(visit):
    from playwright.sync_api import expect

    sent: list[str] = []
    visit.page.on(
        "websocket",
        lambda ws: ws.on("framesent", lambda payload: sent.append(str(payload))),
    )
    with visit.step("every output rendered"):
        visit.page.goto(visit.origin + PAGE)
        expect(visit.page.get_by_text(f"sent {COUNT} outputs")).to_be_visible(
            timeout=FIRST_RENDER_MS
        )
    acknowledgements = [text for text in sent if "django-notebooks-ack" in text]
    # The server waited for the page about every window's worth of output;
    # one acknowledgement per burst, not one per frame.
    assert COUNT * SIZE_KB * 1024 // WINDOW <= len(acknowledgements) < COUNT, sent
    assert len(sent) == len(acknowledgements), sent  # marimo sent nothing
    sockets = [ws.url for ws in visit.websockets if "/ws?" in ws.url]
    assert len(sockets) == 1, f"the page reconnected{visit.report()}"
    assert "read nothing" not in visit.server.log()
    assert not visit.problems, f"problems on the page{visit.report()}"
