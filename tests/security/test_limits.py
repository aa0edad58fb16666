"""Attack: exhausting the server with sessions or oversized messages."""

from __future__ import annotations

import asyncio
import contextlib
import json

import pytest
import websockets

from tests.live import LiveServer, NotebookClient, square_output

pytestmark = pytest.mark.asyncio(loop_scope="function")

PER_ADDRESS = 3
PER_SERVER = 5


@pytest.fixture(params=["daphne", "uvicorn"])
def capped_server(request, live_db, tmp_path):
    """A server that holds PER_SERVER sessions, PER_ADDRESS of them
    anonymous ones from one address."""
    server = LiveServer(
        request.param,
        live_db,
        tmp_path / "server.log",
        DJANGO_NOTEBOOKS_TEST_LIMIT_MAX_SESSIONS=str(PER_SERVER),
        DJANGO_NOTEBOOKS_TEST_LIMIT_MAX_SESSIONS_PER_ADDRESS=str(PER_ADDRESS),
    )
    yield server
    server.stop()


async def refusal(kernel) -> tuple[dict, int]:
    """The notice a refused websocket got, and its close code."""
    notice = json.loads(await asyncio.wait_for(kernel.websocket.recv(), 10))
    with pytest.raises(websockets.ConnectionClosed) as closed:
        await asyncio.wait_for(kernel.websocket.recv(), 10)
    return notice, closed.value.rcvd.code


async def test_anonymous_sessions_per_address_and_sessions_per_server_are_capped(
    capped_server,
):
    """Clients that drop the visitor cookie are new visitors each time:
    only their address counts them; and the server as a whole holds at most
    PER_SERVER sessions. Past a cap the page is told to try again, and the
    sessions already open go on."""
    async with contextlib.AsyncExitStack() as stack:
        open_sessions = []

        async def open_session(client, page):
            kernel = await stack.enter_async_context(client.kernel(page))
            open_sessions.append(kernel)
            return kernel

        for _ in range(PER_ADDRESS):
            client = await stack.enter_async_context(NotebookClient(capped_server.url))
            await client.http.get("/notebooks/hello/")  # its visitor cookie
            await (
                await open_session(client, "/notebooks/hello/")
            ).read_until_completed()
        cookieless = await stack.enter_async_context(NotebookClient(capped_server.url))
        await cookieless.http.get("/notebooks/hello/")
        notice, code = await refusal(
            await open_session(cookieless, "/notebooks/hello/")
        )
        assert notice["data"]["title"] == "Too many notebook sessions from your network"
        assert f"{PER_ADDRESS} notebooks are already open" in notice["data"]["text"]
        assert code == 4429

        # Logged-in users are not counted by address, but by the server.
        for username in ("alice", "bob"):
            client = await stack.enter_async_context(NotebookClient(capped_server.url))
            await client.login(username)
            await (
                await open_session(client, "/notebooks/square/")
            ).read_until_completed()
        carol = await stack.enter_async_context(NotebookClient(capped_server.url))
        await carol.login("carol")
        notice, code = await refusal(await open_session(carol, "/notebooks/square/"))
        assert notice["data"]["title"] == "The notebook server is busy"
        assert "Try again in a few minutes" in notice["data"]["text"]
        assert code == 4429

        # The sessions already open go on: the anonymous ones stay connected,
        # the logged-in ones answer a widget change.
        anonymous, logged_in = open_sessions[:PER_ADDRESS], open_sessions[-3:-1]
        for kernel in anonymous:
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(kernel.websocket.recv(), 0.2)
        for kernel in logged_in:
            [slider] = kernel.ui_element_ids()
            answer = await kernel.set_ui_value(slider, 4)
            assert answer.status_code == 200, answer.text
            await kernel.read_until_completed()
            assert square_output(kernel.outputs)[-1].startswith("square=16")


async def test_sessions_per_user_are_capped_with_a_clear_reason(notebook_server):
    async with (
        NotebookClient(notebook_server.url) as client,
        contextlib.AsyncExitStack() as stack,
    ):
        await client.login("bob")
        for _ in range(5):  # MAX_SESSIONS_PER_USER in the test settings
            kernel = await stack.enter_async_context(
                client.kernel("/notebooks/lab/demo/")
            )
            await kernel.read_until_completed()
        async with client.kernel("/notebooks/lab/demo/") as extra:
            notice = json.loads(await asyncio.wait_for(extra.websocket.recv(), 10))
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await asyncio.wait_for(extra.websocket.recv(), 10)
        assert notice["op"] == "django-notebooks-notice"
        assert notice["data"]["title"] == "Too many open notebook sessions"
        assert closed.value.rcvd.code == 4429
    # Closing sessions frees places again.
    async with NotebookClient(notebook_server.url) as client:
        await client.login("bob")
        async with client.kernel("/notebooks/lab/demo/") as kernel:
            await kernel.read_until_completed()


async def test_oversized_websocket_message_closes_only_that_socket(notebook_server):
    async with NotebookClient(notebook_server.url) as client:
        await client.login("alice")
        async with client.kernel("/notebooks/square/") as kernel:
            await kernel.read_until_completed()
            await kernel.websocket.send("x" * 200_000)
            with pytest.raises(websockets.ConnectionClosed) as closed:
                while True:
                    await asyncio.wait_for(kernel.websocket.recv(), 10)
            assert closed.value.rcvd.code == 4413
        async with client.kernel("/notebooks/square/") as kernel:
            await kernel.read_until_completed()
            assert square_output(kernel.outputs) == ["square=9 user=alice"]


async def test_request_body_over_djangos_limit_is_413(notebook_server):
    async with NotebookClient(notebook_server.url) as client:
        await client.login("alice")
        async with client.kernel("/notebooks/square/") as kernel:
            await kernel.read_until_completed()
            too_big = (
                b'{"objectIds": [], "values": [], "pad": "' + b"x" * 3_000_000 + b'"}'
            )
            response = await client.http.post(
                "/notebooks/square/api/kernel/set_ui_element_value",
                content=too_big,
                headers={
                    "Marimo-Session-Id": kernel.session_id,
                    "Origin": notebook_server.url,
                    "Content-Type": "application/json",
                },
            )
            assert response.status_code == 413
            # The session is unharmed.
            [slider] = kernel.ui_element_ids()
            assert (await kernel.set_ui_value(slider, 2)).status_code == 200
