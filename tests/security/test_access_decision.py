"""Attack: reaching a notebook (page, any sub-path, websocket) without the
right login, group, permission or rule. One decision guards every path."""

from __future__ import annotations

import pytest
import websockets

from tests.live import NotebookClient, new_session_id

pytestmark = pytest.mark.asyncio(loop_scope="function")


async def test_anonymous_is_sent_to_login_and_kept_out(notebook_server):
    async with NotebookClient(notebook_server.url) as client:
        page = await client.http.get("/notebooks/square/")
        assert page.status_code == 302
        assert page.headers["location"] == "/accounts/login/?next=/notebooks/square/"

        post = await client.post_kernel(
            "/notebooks/square/",
            "set_ui_element_value",
            new_session_id(),
            {"objectIds": [], "values": []},
        )
        assert post.status_code == 401
        assert post.headers["content-type"] == "application/json"

        asset = await client.http.get("/notebooks/square/health")
        assert asset.status_code == 401

        with pytest.raises(websockets.InvalidStatus) as refused:
            async with client.kernel("/notebooks/square/"):
                pass
        assert refused.value.response.status_code == 403


@pytest.mark.parametrize(
    ("username", "slug", "allowed"),
    [
        ("alice", "sales", True),
        ("bob", "sales", False),
        ("carol", "report", True),
        ("alice", "report", False),
        ("ops-dan", "ops", True),
        ("bob", "ops", False),
        ("bob", "lab/demo", True),
    ],
)
async def test_groups_permissions_and_rules_guard_every_path(
    notebook_server, username, slug, allowed
):
    async with NotebookClient(notebook_server.url) as client:
        await client.login(username)
        page = await client.http.get(f"/notebooks/{slug}/")
        health = await client.http.get(f"/notebooks/{slug}/health")
        index = (await client.http.get("/notebooks/")).text
        if allowed:
            assert page.status_code == 200
            assert health.status_code == 200
            assert f'href="/notebooks/{slug}/"' in index
            async with client.kernel(f"/notebooks/{slug}/") as kernel:
                await kernel.read_until_completed()
        else:
            assert page.status_code == 403
            assert health.status_code == 403
            assert f'href="/notebooks/{slug}/"' not in index
            post = await client.post_kernel(
                f"/notebooks/{slug}/",
                "set_ui_element_value",
                new_session_id(),
                {"objectIds": [], "values": []},
            )
            assert post.status_code == 403
            with pytest.raises(websockets.InvalidStatus):
                async with client.kernel(f"/notebooks/{slug}/"):
                    pass


async def test_unknown_notebook_is_404(notebook_server):
    async with NotebookClient(notebook_server.url) as client:
        await client.login("alice")
        assert (await client.http.get("/notebooks/nope/")).status_code == 404
        assert (await client.http.get("/notebooks/lab/nope/")).status_code == 404
        with pytest.raises(websockets.InvalidStatus):
            async with client.kernel("/notebooks/nope/"):
                pass
