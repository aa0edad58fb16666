"""Open notebook sessions end when their user's access ends: on logout, on
deactivation, on losing the group or permission the notebook needs. With a
Redis channel layer this works across processes: here the change is made by
another process than the server holding the websocket."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
import websockets

from tests.live import (
    REDIS_LAYERS,
    LiveServer,
    NotebookClient,
    require_redis,
    run_in_other_process,
    square_session,
)

pytestmark = pytest.mark.asyncio(loop_scope="function")

CLOSE_WITHIN = 2.0


async def closed_within(kernel, seconds: float) -> float:
    """Seconds until the server closed the websocket (fails if it did not)."""
    started = time.monotonic()
    try:
        while True:
            await asyncio.wait_for(kernel.websocket.recv(), seconds)
    except websockets.ConnectionClosed:
        return time.monotonic() - started
    except TimeoutError:
        raise AssertionError(f"websocket still open after {seconds}s") from None


async def logout(client: NotebookClient) -> None:
    await client.http.get("/accounts/login/")
    response = await client.http.post(
        "/accounts/logout/",
        data={"csrfmiddlewaretoken": client.http.cookies["csrftoken"]},
        headers={"Referer": f"{client.base_url}/accounts/login/"},
    )
    assert response.status_code in (200, 302)


async def test_logout_closes_open_sessions_and_refuses_later_calls(notebook_server):
    async with square_session(notebook_server.url) as (client, kernel, slider):
        old_cookies = dict(client.http.cookies)
        await logout(client)
        await closed_within(kernel, CLOSE_WITHIN)
        # Replaying the old session cookie does not bring the session back.
        for name, value in old_cookies.items():
            client.http.cookies.set(name, value)
        response = await kernel.set_ui_value(slider, 4)
        assert response.status_code in (401, 403)


@pytest.fixture(params=REDIS_LAYERS)
def redis_server(request, live_db, tmp_path):
    """A daphne server on a Redis channel layer (channels_redis's list-based
    layer, then its pub/sub layer), with a database of its own."""
    require_redis()
    db_path = tmp_path / "db.sqlite3"
    db_path.write_bytes(live_db.read_bytes())
    env = {
        "DJANGO_NOTEBOOKS_TEST_CHANNEL_LAYER": request.param,
        "DJANGO_NOTEBOOKS_TEST_REDIS_PREFIX": f"dn-test-{uuid.uuid4().hex[:8]}",
    }
    server = LiveServer("daphne", db_path, tmp_path / "server.log", **env)
    server.db_path, server.env = db_path, env
    yield server
    server.stop()


@pytest.mark.parametrize(
    ("username", "slug", "change"),
    [
        ("alice", "sales", "User.objects.get(username='alice').groups.clear()"),
        (
            "alice",
            "sales",
            "Group.objects.get(name='sales').user_set.remove(User.objects.get(username='alice'))",
        ),
        ("alice", "sales", "Group.objects.get(name='sales').delete()"),
        (
            "carol",
            "report",
            "User.objects.get(username='carol').user_permissions.remove(Permission.objects.get(codename='change_user'))",
        ),
        (
            "bob",
            "square",
            "u = User.objects.get(username='bob'); u.is_active = False; u.save()",
        ),
    ],
)
async def test_losing_access_in_another_process_closes_sessions(
    redis_server, username, slug, change
):
    async with NotebookClient(redis_server.url) as client:
        await client.login(username)
        async with (
            client.kernel(f"/notebooks/{slug}/") as kernel,
            client.kernel("/notebooks/lab/demo/") as unaffected,
        ):
            await kernel.read_until_completed()
            await unaffected.read_until_completed()
            run_in_other_process(redis_server.db_path, redis_server.env, change)
            await closed_within(kernel, CLOSE_WITHIN)
            if username != "bob":
                # Notebooks the user may still open stay open.
                with pytest.raises(TimeoutError):
                    await asyncio.wait_for(unaffected.websocket.recv(), 1.0)
        response = await client.post_kernel(
            f"/notebooks/{slug}/",
            "set_ui_element_value",
            kernel.session_id,
            {"objectIds": [], "values": []},
        )
        assert response.status_code in (401, 403)
