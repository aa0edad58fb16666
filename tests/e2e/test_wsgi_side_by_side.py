"""A WSGI project with notebooks beside it: gunicorn serves the project's
pages (login, logout, a page embedding a notebook), uvicorn serves everything
under the notebooks' prefix, and a proxy routes by path as the nginx example
of docs/topics/deployment.md does. Both processes share the database and a
Redis channel layer, so logging out on the WSGI side closes the notebook
sessions on the ASGI side."""

from __future__ import annotations

import re
import uuid

import pytest
import websockets

from tests.live import LiveServer, NotebookClient, square_output, terminate_in_admin
from tests.proxy import Proxy
from tests.security.test_revocation import (
    closed_within,
    logout,
    require_redis,
    run_in_other_process,
)

PREFIX = "/notebooks/"


@pytest.fixture(scope="module")
def side_by_side(live_db, tmp_path_factory):
    """The proxy, the WSGI server and the ASGI server (for the whole module:
    each test logs in users of its own)."""
    require_redis()
    env = {
        "DJANGO_NOTEBOOKS_TEST_CHANNEL_LAYER": "redis",
        "DJANGO_NOTEBOOKS_TEST_REDIS_PREFIX": f"dn-test-{uuid.uuid4().hex[:8]}",
    }
    tmp_path = tmp_path_factory.mktemp("side-by-side")
    db_path = tmp_path / "db.sqlite3"
    db_path.write_bytes(live_db.read_bytes())
    asgi = LiveServer("uvicorn", db_path, tmp_path / "uvicorn.log", **env)
    try:
        wsgi = LiveServer("gunicorn", db_path, tmp_path / "gunicorn.log", **env)
    except Exception:
        asgi.stop()
        raise
    run_in_other_process(
        db_path, env, "User.objects.create_superuser('root', password='root-pw')"
    )
    try:
        with Proxy.by_prefix({PREFIX: asgi.url}, default=wsgi.url) as proxy:
            yield proxy, wsgi, asgi
    finally:
        wsgi.stop()
        asgi.stop()
    for server in (wsgi, asgi):
        assert "Traceback" not in server.log(), server.log()


def served_by(proxy: Proxy, server: LiveServer) -> list[str]:
    return [
        f"{method} {path}" for method, path, url in proxy.routed if url == server.url
    ]


async def test_pages_on_wsgi_notebooks_on_asgi_logout_across(side_by_side):
    proxy, wsgi, asgi = side_by_side
    async with NotebookClient(proxy.url) as client:
        await client.login("alice")
        # A page of the project embeds a notebook: the iframe's URL is under
        # the prefix, so the notebook comes from the ASGI server.
        embed = await client.http.get("/embed/")
        assert embed.status_code == 200
        [src] = re.findall(r'<iframe[^>]* src="([^"]+)"', embed.text)
        assert src.startswith(f"{PREFIX}sales/")
        assert (await client.http.get(src)).status_code == 200

        page = f"{PREFIX}square/"
        assert (await client.http.get(page)).status_code == 200
        async with client.kernel(page) as kernel:
            await kernel.read_until_completed()
            [slider] = kernel.ui_element_ids()
            for value in (3, 7):
                kernel.outputs.clear()
                assert (await kernel.set_ui_value(slider, value)).status_code == 200
                await kernel.read_until_completed()
                assert square_output(kernel.outputs) == [
                    f"square={value * value} user=alice"
                ]

            # Logging out on the WSGI side closes the session on the ASGI
            # side, through Redis.
            await logout(client)
            await closed_within(kernel, 5)
        assert (await kernel.set_ui_value(slider, 4)).status_code in (401, 403)

    on_wsgi, on_asgi = served_by(proxy, wsgi), served_by(proxy, asgi)
    assert "POST /accounts/login/" in on_wsgi
    assert "POST /accounts/logout/" in on_wsgi
    assert "GET /embed/" in on_wsgi
    assert all(PREFIX not in request for request in on_wsgi), on_wsgi
    assert all(request.split()[1].startswith(PREFIX) for request in on_asgi)
    assert any(request.startswith(f"GET {page}ws?") for request in on_asgi)


async def test_the_access_decision_on_the_asgi_side(side_by_side):
    proxy, wsgi, asgi = side_by_side
    async with NotebookClient(proxy.url) as bob:
        await bob.login("bob")  # not in the "sales" group
        assert (await bob.http.get(f"{PREFIX}sales/")).status_code == 403
        with pytest.raises(websockets.InvalidStatus) as refused:
            async with bob.kernel(f"{PREFIX}sales/"):
                pass
        assert refused.value.response.status_code == 403
        # The page of the project that embeds "sales" shows bob a placeholder.
        embed = (await bob.http.get("/embed/")).text
        assert f'src="{PREFIX}sales/' not in embed
    page, websocket = served_by(proxy, asgi)[-2:]
    assert page == f"GET {PREFIX}sales/"
    assert websocket.startswith(f"GET {PREFIX}sales/ws?session_id=")


async def test_a_websocket_sent_to_the_wsgi_server_gets_an_explanation(side_by_side):
    """The mistake the routing avoids: the handshake reaches gunicorn."""
    proxy, wsgi, asgi = side_by_side
    async with NotebookClient(wsgi.url) as client:
        await client.login("alice")
        with pytest.raises(websockets.InvalidStatus) as refused:
            async with client.kernel(f"{PREFIX}square/"):
                pass
    response = refused.value.response
    assert response.status_code == 501
    assert b"reached a server without websocket support" in response.body
    assert f"serve {PREFIX} with Daphne or uvicorn".encode() in response.body


async def test_the_admin_on_the_wsgi_side_ends_a_session_on_the_asgi_side(
    side_by_side,
):
    proxy, wsgi, asgi = side_by_side
    sessions = "/admin/django_notebooks/notebooksession/"
    async with NotebookClient(proxy.url) as carol, NotebookClient(proxy.url) as root:
        await carol.login("carol")
        await root.login("root", "root-pw")
        async with carol.kernel(f"{PREFIX}square/") as kernel:
            await kernel.read_until_completed()
            # The sessions table, written by the ASGI process, read by WSGI.
            listing = await root.http.get(sessions)
            [row] = re.findall(r'name="_selected_action" value="(\d+)"', listing.text)
            response = await terminate_in_admin(root, sessions, row)
            assert response.status_code == 302, response.text
            await closed_within(kernel, 5)
        after = await root.http.get(sessions)
        assert "Asked 1 notebook session to close" in after.text
    assert f"POST {sessions}" in served_by(proxy, wsgi)
