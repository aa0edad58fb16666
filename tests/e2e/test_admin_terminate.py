"""The admin's "terminate" action closes a live session within 2 seconds,
when the session's kernel runs in another server process than the one
serving the admin: two daphne processes on one database and one Redis
channel layer, as in a deployment with several processes."""

from __future__ import annotations

import asyncio
import json
import re
import time

import pytest
import websockets

from tests.helpers import async_wait_until
from tests.live import (
    LiveServer,
    NotebookClient,
    run_in_other_process,
    terminate_in_admin,
)
from tests.security import test_revocation

# A daphne server on a Redis channel layer, with a database of its own.
redis_server = test_revocation.redis_server

pytestmark = pytest.mark.asyncio(loop_scope="function")

SESSIONS = "/admin/django_notebooks/notebooksession/"
CLOSE_WITHIN = 2.0
ROW = re.compile(r'name="_selected_action" value="(\d+)"')


@pytest.fixture
def admin_server(redis_server, tmp_path):
    """A second daphne process on the same database and channel layer, and
    a superuser to log in with."""
    run_in_other_process(
        redis_server.db_path,
        redis_server.env,
        "User.objects.create_superuser('root', password='root-pw')",
    )
    server = LiveServer(
        "daphne", redis_server.db_path, tmp_path / "admin.log", **redis_server.env
    )
    yield server
    server.stop()


async def frames_until_closed(websocket) -> tuple[list[dict], float]:
    """Every frame until the server closes the websocket, and when it closed."""
    frames = []
    try:
        while True:
            frames.append(json.loads(await asyncio.wait_for(websocket.recv(), 10)))
    except websockets.ConnectionClosed:
        return frames, time.monotonic()


async def test_terminate_in_the_admin_closes_a_session_held_by_another_process(
    redis_server, admin_server
):
    async with (
        NotebookClient(redis_server.url) as alice,
        NotebookClient(admin_server.url) as root,
    ):
        await alice.login("alice")
        await root.login("root", "root-pw")
        async with alice.kernel("/notebooks/square/") as kernel:
            await kernel.read_until_completed()

            # (The database is a copy of one the shared servers use: it may
            # hold their sessions too.)
            page = await root.http.get(SESSIONS, params={"q": kernel.session_id})
            assert page.status_code == 200
            [row] = ROW.findall(page.text)
            assert "alice" in page.text

            watcher = asyncio.create_task(frames_until_closed(kernel.websocket))
            started = time.monotonic()
            response = await terminate_in_admin(root, SESSIONS, row)
            frames, closed_at = await watcher

        assert closed_at - started < CLOSE_WITHIN, (
            f"closed after {closed_at - started:.2f}s"
        )
        [notice] = [
            frame for frame in frames if frame.get("op") == "django-notebooks-notice"
        ]
        assert notice["data"]["title"] == "Notebook session ended"
        assert response.status_code == 302, response.text

        # The admin answered at once and said what it did.
        after = await root.http.get(SESSIONS, params={"q": kernel.session_id})
        assert "Asked 1 notebook session to close" in after.text

        # The holder closed the session and deleted its row.
        async def row_gone() -> bool:
            page = await root.http.get(SESSIONS, params={"q": kernel.session_id})
            return ROW.findall(page.text) == []

        await async_wait_until(row_gone, message="the session's row is still listed")
        # (Other rows the copied database holds are not this session's.)
        everything = await root.http.get(SESSIONS)
        assert row not in ROW.findall(everything.text)

        # The session is over for its kernel calls too.
        call = await alice.post_kernel(
            "/notebooks/square/",
            "set_ui_element_value",
            kernel.session_id,
            {"objectIds": [], "values": []},
        )
        assert call.status_code in (403, 410)
