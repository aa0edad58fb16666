"""Attack: cross-site request forgery on kernel calls, and cross-site
websocket hijacking. Both are refused whatever the Content-Type."""

from __future__ import annotations

import json

import pytest
import websockets

from tests.live import NotebookClient, square_session

pytestmark = pytest.mark.asyncio(loop_scope="function")


async def test_cross_site_kernel_posts_are_refused(notebook_server):
    async with square_session(notebook_server.url) as (client, kernel, slider):
        body = {"objectIds": [slider], "values": [5]}
        for headers in (
            {"Origin": "https://evil.example"},
            {"Origin": "null"},
            {"Referer": "https://evil.example/page", "Origin": None},
            {"Sec-Fetch-Site": "cross-site", "Origin": None},
        ):
            sent = {k: v for k, v in headers.items() if v is not None}
            response = await client.http.post(
                "/notebooks/square/api/kernel/set_ui_element_value",
                content=json.dumps(body),
                headers={
                    "Marimo-Session-Id": kernel.session_id,
                    "Content-Type": "text/plain",
                    **sent,
                },
            )
            assert response.status_code == 403, headers
        ok = await kernel.set_ui_value(slider, 5)
        assert ok.status_code == 200
        assert "access-control-allow-origin" not in ok.headers


async def test_cross_site_websocket_is_refused(notebook_server):
    async with NotebookClient(notebook_server.url) as client:
        await client.login("alice")
        with pytest.raises(websockets.InvalidStatus) as refused:
            async with client.kernel(
                "/notebooks/square/", origin="https://evil.example"
            ):
                pass
        assert refused.value.response.status_code == 403
