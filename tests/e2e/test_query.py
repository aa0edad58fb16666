"""Query parameters end to end: a real server and real marimo kernels. The
notebook prints what it got in ``request.meta["query"]``; invalid queries are
refused on the page and on the kernel websocket."""

from __future__ import annotations

import json
import re
from contextlib import asynccontextmanager

import pytest
import websockets

from tests.live import KernelSession, LiveServer, NotebookClient, new_session_id

pytestmark = pytest.mark.asyncio(loop_scope="function")

VALID = "region=north&since=2024-05-01&limit=4"
CLEANED = {"region": "north", "since": "2024-05-01", "limit": 4}


@pytest.fixture(scope="module", params=["daphne", "uvicorn"])
def query_server(request, live_db, tmp_path_factory):
    """The test project with its query notebooks (tests/settings.py adds
    them for DJANGO_NOTEBOOKS_TEST_QUERY)."""
    log = tmp_path_factory.mktemp("logs") / f"query-{request.param}.log"
    server = LiveServer(
        request.param,
        live_db,
        log,
        DJANGO_NOTEBOOKS_TEST_QUERY="1",
        DJANGO_NOTEBOOKS_TEST_FAST_PATH="1",
    )
    yield server
    server.stop()


@asynccontextmanager
async def kernel(client: NotebookClient, page: str, query: str):
    """``<page>ws?<the page's query>&session_id=...``, the URL marimo's
    frontend opens (tests/browser/test_query.py shows it does)."""
    session_id = new_session_id()
    url = client.base_url.replace("http://", "ws://") + (
        f"{page}ws?{query}&session_id={session_id}"
    )
    headers = {"Origin": client.base_url, "Cookie": client.cookie_header()}
    async with websockets.connect(
        url, additional_headers=headers, open_timeout=30
    ) as websocket:
        yield KernelSession(client, page, session_id, websocket)


def printed(outputs: list[str]) -> dict:
    """The last thing the query notebook printed."""
    texts = [t for t in outputs if "QUERY {" in t]
    assert texts, f"no QUERY output in {outputs!r}"
    return json.loads(
        texts[-1].replace("&quot;", '"').split("QUERY ", 1)[1].split("</")[0]
    )


@pytest.mark.parametrize("page", ["/notebooks/query-form/", "/notebooks/query-model/"])
async def test_the_notebook_gets_the_cleaned_values(query_server, page):
    async with NotebookClient(query_server.url) as client:
        await client.login("alice")
        response = await client.http.get(f"{page}?{VALID}")
        assert response.status_code == 200

        async with kernel(client, page, VALID) as session:
            await session.read_until_completed()
            seen = printed(session.outputs)
            assert seen["query"] == CLEANED
            # Python objects, not strings: marimo hands meta over in process.
            assert seen["types"] == {"region": "str", "since": "date", "limit": "int"}
            # The project's REQUEST_META hook still has its say.
            assert seen["meta_keys"] == ["query", "site"]
            # marimo's own view of the query: strings, as sent.
            assert seen["query_params"] == {
                "region": "north",
                "since": "2024-05-01",
                "limit": "4",
            }

            # A widget change (a kernel call) re-runs with the same values.
            [slider] = session.ui_element_ids()
            response = await session.set_ui_value(slider, 7)
            assert response.status_code == 200, response.text
            await session.read_until_completed()
            seen = printed(session.outputs)
            assert seen["run"] == 7
            assert seen["query"] == CLEANED
            assert seen["types"]["since"] == "date"


async def test_an_invalid_query_is_refused_on_the_page(query_server):
    async with NotebookClient(query_server.url) as client:
        await client.login("alice")
        response = await client.http.get(
            "/notebooks/query-form/?region=<i>west</i>&since=soon&limit=400"
        )
    assert response.status_code == 400
    errors = re.findall(r"<li><code>(\w+)</code>: ([^<]*)</li>", response.text)
    assert [name for name, _ in errors] == ["region", "since", "limit"]
    assert "&lt;i&gt;west&lt;/i&gt;" in errors[0][1]
    assert "<i>west</i>" not in response.text


async def test_an_invalid_query_is_refused_on_the_websocket(query_server):
    async with NotebookClient(query_server.url) as client:
        await client.login("alice")
        async with kernel(
            client, "/notebooks/query-model/", "region=west&since=2024-05-01"
        ) as session:
            frames = []
            with pytest.raises(websockets.ConnectionClosed) as closed:
                while True:
                    frames.append(json.loads(await session.websocket.recv()))
    # Refused before marimo saw it: no kernel, no outputs, and a notice
    # saying why in place of marimo's "kernel not found".
    assert [frame["op"] for frame in frames] == ["django-notebooks-notice"]
    assert frames[0]["data"]["title"] == "Invalid query parameters"
    assert "region: " in frames[0]["data"]["text"]
    assert closed.value.rcvd.code == 4400
