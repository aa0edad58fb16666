"""Attack: exhausting the server with sessions or oversized messages."""

from __future__ import annotations

import asyncio
import contextlib
import json

import pytest
import websockets

from tests.live import NotebookClient, square_output

pytestmark = pytest.mark.asyncio(loop_scope="function")


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
            alert = json.loads(await asyncio.wait_for(extra.websocket.recv(), 10))
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await asyncio.wait_for(extra.websocket.recv(), 10)
        assert alert["op"] == "alert"
        assert alert["data"]["title"] == "Too many open notebook sessions"
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
