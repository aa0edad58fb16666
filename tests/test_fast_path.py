"""FastPathMiddleware, in process: what it answers itself (owner kernel calls,
frontend files) and what it leaves to Django (everything else)."""

from __future__ import annotations

import httpx
import marimo
import pytest
from django.test import AsyncClient, override_settings

from django_notebooks.asgi import FastPathMiddleware
from django_notebooks.marimo import internals
from django_notebooks.marimo.apps import notebook_apps
from tests.asgi import django_asgi_app
from tests.compat import create_user, force_login
from tests.helpers import (
    ORIGIN,
    communicator,
    connected_and_run,
    new_session_id,
    outputs,
)
from tests.live import UI_ELEMENT
from tests.live import communicator_outputs as read_until_completed
from tests.settings import DJANGO_NOTEBOOKS

pytestmark = pytest.mark.django_db(transaction=True)

CALL = "/notebooks/square/api/kernel/set_ui_element_value"


@pytest.fixture
async def kernel(django_user_model):
    """alice's cookie, an open square-notebook session, its slider id, and an
    HTTP client for the fast path (all on this test's event loop)."""
    user = await create_user(django_user_model, "alice", "pw")
    login = AsyncClient()
    await force_login(login, user)
    sessionid = login.cookies["sessionid"].value
    cookie = f"sessionid={sessionid}"
    session_id = new_session_id()

    from tests.asgi import application

    # The test project's websocket stack, as tests/asgi.py mounts it.
    ws = communicator(
        f"/notebooks/square/ws?session_id={session_id}",
        sessionid=sessionid,
        app=application.application_mapping["websocket"],
    )
    [slider] = UI_ELEMENT.findall(outputs(await connected_and_run(ws)))
    transport = httpx.ASGITransport(app=FastPathMiddleware(django_asgi_app))
    async with httpx.AsyncClient(transport=transport, base_url=ORIGIN) as http:
        http.headers.update({"Cookie": cookie, "Origin": ORIGIN})
        yield http, session_id, slider, ws
    await ws.disconnect()
    manager = notebook_apps.session_manager_for(DJANGO_NOTEBOOKS["NOTEBOOKS"]["square"])
    if manager is not None:
        manager.close_all_sessions()


async def test_owner_kernel_call_is_answered_before_django(kernel):
    http, session_id, slider, ws = kernel
    response = await http.post(
        CALL,
        json={"objectIds": [slider], "values": [7]},
        headers={"Marimo-Session-Id": session_id},
    )
    assert response.status_code == 200
    assert response.json() == {"success": True}
    assert "x-frame-options" not in response.headers  # no Django view ran
    assert "access-control-allow-origin" not in response.headers
    assert "square=49 user=alice" in " ".join(await read_until_completed(ws))


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({"Origin": "https://evil.example"}, 403),
        ({"Marimo-Session-Id": "s_notmine"}, 410),  # no process knows it
        ({"Host": "evil.example"}, 400),
        ({"Cookie": ""}, 401),
    ],
)
async def test_calls_it_cannot_admit_go_to_django(kernel, headers, status):
    http, session_id, slider, _ = kernel
    sent = {"Marimo-Session-Id": session_id, **headers}
    response = await http.post(
        CALL, json={"objectIds": [slider], "values": [2]}, headers=sent
    )
    assert response.status_code == status
    assert "x-content-type-options" in response.headers  # Django answered


@pytest.mark.parametrize(
    ("body", "status"),
    [(b"{not json", 400), (b"[1, 2]", 400), (b"{}" + b" " * 3_000_000, 413)],
    ids=["not-json", "not-an-object", "too-large"],
)
async def test_bad_bodies_are_refused_by_the_fast_path(kernel, body, status):
    http, session_id, _, _ = kernel
    response = await http.post(
        CALL,
        content=body,
        headers={"Marimo-Session-Id": session_id, "Content-Type": "application/json"},
    )
    assert response.status_code == status
    assert "error" in response.json()


async def test_frontend_files_come_compressed_from_the_fast_path():
    transport = httpx.ASGITransport(app=FastPathMiddleware(django_asgi_app))
    async with httpx.AsyncClient(transport=transport, base_url=ORIGIN) as http:
        version = marimo.__version__
        icon = await http.get(f"/notebooks/_marimo/{version}/favicon.ico")
        assert icon.status_code == 200
        name = next(internals.frontend_root().glob("assets/*.js")).name
        url = f"/notebooks/_marimo/{version}/assets/{name}"
        response = await http.get(url, headers={"Accept-Encoding": "gzip"})
        assert response.status_code == 200
        assert response.headers["content-encoding"] == "gzip"
        assert (
            response.headers["cache-control"] == "public, max-age=31536000, immutable"
        )
        assert "x-frame-options" not in response.headers  # no Django view ran
        head = await http.head(url, headers={"Accept-Encoding": "gzip"})
        assert head.status_code == 200 and head.content == b""
        again = await http.get(
            url,
            headers={
                "Accept-Encoding": "gzip",
                "If-None-Match": response.headers["etag"],
            },
        )
        assert again.status_code == 304
        missing = await http.get(f"/notebooks/_marimo/{version}/assets/nope.js")
        assert missing.status_code == 404  # Django's 404


@override_settings(DJANGO_NOTEBOOKS={**DJANGO_NOTEBOOKS, "FRONTEND": "marimo"})
async def test_everything_else_passes_through_untouched():
    transport = httpx.ASGITransport(app=FastPathMiddleware(django_asgi_app))
    async with httpx.AsyncClient(transport=transport, base_url=ORIGIN) as http:
        response = await http.get("/notebooks/square/")
    assert response.status_code == 302  # Django's login redirect
