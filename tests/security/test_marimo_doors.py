"""Attack: marimo's other doors below a notebook's URL. marimo answers far
more than the page, its files and the run-mode kernel calls (server-sent
events, virtual files, workspace and status APIs, its own login form); only
the routes in django_notebooks/marimo/routes.py reach it, and every answer
below a notebook is a clear 4xx, never a 500."""

from __future__ import annotations

import asyncio
import json
import secrets
from multiprocessing import shared_memory

import marimo
import pytest
import websockets

from tests.live import (
    LiveServer,
    NotebookClient,
    logged_in,
    new_session_id,
    square_output,
)

pytestmark = pytest.mark.asyncio(loop_scope="function")

FILE_LINK = r"\./@file/([^\"'\\&]+)"


async def test_server_sent_events_are_no_second_kernel_transport(notebook_server):
    async with logged_in(notebook_server.url, "alice", "bob") as (alice, bob):
        async with alice.kernel("/notebooks/square/") as kernel:
            await kernel.read_until_completed()
            [slider] = kernel.ui_element_ids()
            # bob, who may open the notebook, attaches to alice's live
            # session by its id: nothing reaches marimo.
            hijack = await bob.http.get(
                f"/notebooks/square/sse?session_id={kernel.session_id}",
                timeout=10,
            )
            assert hijack.status_code == 404
            # A new session over sse (no binding, no cap, no record, no
            # query validation) is not opened either, not even for alice.
            for client in (alice, bob):
                fresh = await client.http.get(
                    f"/notebooks/square/sse?session_id={new_session_id()}"
                    "&region=Atlantis&since=notadate",
                    timeout=10,
                )
                assert fresh.status_code == 404
            # alice's session was not touched: her widget still answers.
            response = await kernel.set_ui_value(slider, 4)
            assert response.status_code == 200
            await kernel.read_until_completed()
            assert "square=16 user=alice" in square_output(kernel.outputs)


async def test_virtual_files_never_read_the_hosts_shared_memory(
    live_db, tmp_path, kind
):
    """Before any kernel of a process started, marimo read ``@file`` names
    from /dev/shm: another program's data, which Python's resource tracker
    then deleted at shutdown. Here on a server no kernel has run in."""
    secret = b"another program's secret " + secrets.token_hex(8).encode()
    segment = shared_memory.SharedMemory(create=True, size=len(secret))
    try:
        segment.buf[: len(secret)] = secret
        server = LiveServer(kind, live_db, tmp_path / f"{kind}.log")
        try:
            async with NotebookClient(server.url) as anonymous:
                response = await anonymous.http.get(
                    f"/notebooks/hello/@file/{len(secret)}-{segment.name}"
                )
            assert response.status_code == 404
            assert secret not in response.content
        finally:
            server.stop()
        # The segment outlived the server.
        again = shared_memory.SharedMemory(name=segment.name)
        assert bytes(again.buf[: len(secret)]) == secret
        again.close()
    finally:
        segment.close()
        segment.unlink()


@pytest.fixture(params=["daphne", "uvicorn"])
def kind(request):
    return request.param


async def test_virtual_files_belong_to_the_login_whose_session_made_them(
    notebook_server,
):
    import re

    async with (
        # alice_elsewhere: another browser of the same user.
        logged_in(notebook_server.url, "alice", "bob", "alice") as clients,
        NotebookClient(notebook_server.url) as anonymous,
    ):
        alice, bob, alice_elsewhere = clients
        async with alice.kernel("/notebooks/files/") as kernel:
            await kernel.read_until_completed()
            [name] = re.findall(FILE_LINK, " ".join(kernel.outputs))
            own = await alice.http.get(f"/notebooks/files/@file/{name}")
            assert own.status_code == 200
            assert own.content == b"0123456789" * 50_000

            for client, path in [
                (bob, f"/notebooks/files/@file/{name}"),
                (bob, f"/notebooks/whoami/@file/{name}"),
                (alice_elsewhere, f"/notebooks/files/@file/{name}"),
                # Through another notebook, even of the same login.
                (alice, f"/notebooks/square/@file/{name}"),
                (anonymous, f"/notebooks/hello/@file/{name}"),
            ]:
                response = await client.http.get(path)
                assert response.status_code == 404, path
                assert b"0123456789" not in response.content
            # Without access to the notebook at all: its usual refusal.
            refused = await anonymous.http.get(f"/notebooks/files/@file/{name}")
            assert refused.status_code == 401


async def test_no_answer_holds_a_server_path(notebook_server):
    """marimo's workspace API answers the notebook's absolute path to any
    session owner, an anonymous visitor of a public notebook included."""
    async with NotebookClient(notebook_server.url) as visitor:
        assert (await visitor.http.get("/notebooks/hello/")).status_code == 200
        async with visitor.kernel("/notebooks/hello/") as kernel:
            await kernel.read_until_completed()
            for path in (
                "api/home/workspace_files",
                "api/home/running_notebooks",
                "api/home/recent_files",
            ):
                response = await visitor.http.post(
                    f"/notebooks/hello/{path}",
                    json={"includeMarkdown": False},
                    headers={
                        "Origin": notebook_server.url,
                        "Marimo-Session-Id": kernel.session_id,
                    },
                )
                assert response.status_code == 404, path
                assert "tests/notebooks" not in response.text
                assert "whoami.py" not in response.text


@pytest.mark.parametrize(
    "path",
    [
        # marimo's own password form, on the site's origin.
        "/notebooks/square/auth/login",
        # How many sessions a notebook has, told to any viewer.
        "/notebooks/square/api/status/connections",
        "/notebooks/square/api/status",
        "/notebooks/square/api/version",
        "/notebooks/square/healthz",
        "/notebooks/square/og/thumbnail",
        "/notebooks/square/api/export/availability",
        "/notebooks/square/api/files/roots",
        "/notebooks/lab/demo/auth/login",
        "/notebooks/hello/api/status/connections",
    ],
)
async def test_marimos_other_pages_are_not_found(notebook_server, path):
    async with NotebookClient(notebook_server.url) as alice:
        await alice.login("alice")
        response = await alice.http.get(path)
        assert response.status_code == 404, response.text
        assert response.json() == {"error": "Not found."}
        assert "password" not in response.text.lower()


async def test_marimos_editor_apis_are_not_found_even_for_the_sessions_owner(
    notebook_server,
):
    async with NotebookClient(notebook_server.url) as alice:
        await alice.login("alice")
        async with alice.kernel("/notebooks/square/") as kernel:
            await kernel.read_until_completed()
            for endpoint in ("instantiate", "run", "interrupt", "restart_session"):
                response = await alice.post_kernel(
                    "/notebooks/square/", endpoint, kernel.session_id, {}
                )
                assert response.status_code == 404, endpoint
            # Known routes answer 405 to another method, saying which.
            wrong = await alice.http.get(
                "/notebooks/square/api/kernel/set_ui_element_value"
            )
            assert wrong.status_code == 405
            assert wrong.headers["Allow"] == "POST"
            page = await alice.http.post(
                "/notebooks/square/",
                json={},
                headers={"Origin": notebook_server.url},
            )
            assert page.status_code == 405
            assert page.headers["Allow"] == "GET, HEAD"


async def test_those_doors_tell_strangers_no_more_than_the_page(notebook_server):
    async with (
        NotebookClient(notebook_server.url) as anonymous,
        logged_in(notebook_server.url, "bob") as [bob],
    ):
        login = await anonymous.http.get("/notebooks/sales/auth/login")
        assert login.status_code == 401
        forbidden = await bob.http.get("/notebooks/sales/sse?session_id=s_abcdef")
        assert forbidden.status_code == 403


@pytest.mark.parametrize(
    "path",
    [
        f"/notebooks/_marimo/{marimo.__version__}/%00",
        f"/notebooks/_marimo/{marimo.__version__}/a%00b.js",
        f"/notebooks/_marimo/{marimo.__version__}/" + "x" * 300,
        f"/notebooks/_marimo/{marimo.__version__}/assets/" + "y" * 300 + ".js",
        f"/notebooks/_marimo/{marimo.__version__}/assets/%00",
        "/notebooks/hello/public/" + "z" * 300,
        "/notebooks/hello/public/%00",
        "/notebooks/hello/assets/" + "z" * 300,
    ],
)
async def test_odd_file_names_are_not_found(notebook_server, path):
    async with NotebookClient(notebook_server.url) as anonymous:
        assert await anonymous.raw_get(path) == 404


async def test_marimos_closes_reach_the_browser(notebook_server):
    """marimo closes with an IntEnum code that daphne could not send: the
    socket stayed open and silent (a refused kiosk connection hung)."""
    async with NotebookClient(notebook_server.url) as alice:
        await alice.login("alice")
        url = (
            notebook_server.url.replace("http://", "ws://")
            + f"/notebooks/square/ws?session_id={new_session_id()}&kiosk=true"
        )
        async with websockets.connect(
            url,
            additional_headers={
                "Origin": notebook_server.url,
                "Cookie": alice.cookie_header(),
            },
            open_timeout=30,
        ) as websocket:
            with pytest.raises(websockets.ConnectionClosed) as closed:
                while True:
                    frame = await asyncio.wait_for(websocket.recv(), 15)
                    assert json.loads(frame).get("op") != "completed-run"
        assert closed.value.rcvd is not None, "closed without a close frame"
        # marimo's 1008 (forbidden), as 4008: daphne cannot send 1008.
        assert closed.value.rcvd.code == 4008
