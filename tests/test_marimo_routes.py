"""Which of marimo's routes reach marimo (django_notebooks/marimo/routes.py),
in process: the rules themselves, the view's answers for everything else,
and downloads kept to the login whose session made them."""

from __future__ import annotations

import re

import pytest
from channels.testing import WebsocketCommunicator
from django.test import AsyncClient

from django_notebooks import calls, consumers
from django_notebooks.marimo import routes
from django_notebooks.marimo.apps import notebook_apps
from django_notebooks.marimo.routes import Route
from django_notebooks.sessions import owners
from tests.asgi import application
from tests.compat import force_login, session_key
from tests.test_views import bound_session, kernel_headers, logged_in

FILE_NAME = "500000-1234-AbCdEfGh.txt"


@pytest.mark.parametrize(
    ("subpath", "route"),
    [
        ("", Route.PAGE),
        ("ws", Route.WEBSOCKET),
        ("health", Route.FILE),
        ("favicon.ico", Route.FILE),
        ("public-files-sw.js", Route.FILE),
        ("assets/index-abc.js", Route.FILE),
        ("public/data/hello.txt", Route.FILE),
        (f"@file/{FILE_NAME}", Route.FILE),
        ("@file/0-empty.txt", Route.FILE),
        ("api/kernel/set_ui_element_value", Route.KERNEL_CALL),
        ("api/kernel/set_model_value", Route.KERNEL_CALL),
        ("api/kernel/function_call", Route.KERNEL_CALL),
        ("api/kernel/read_code", Route.KERNEL_CALL),
        # Not listed: marimo is never asked.
        ("sse", None),
        ("ws_sync", None),
        ("terminal/ws", None),
        ("auth/login", None),
        ("healthz", None),
        ("api/status/connections", None),
        ("api/home/workspace_files", None),
        ("api/kernel/run", None),
        ("api/kernel/instantiate", None),
        ("api/version", None),
        ("og/thumbnail", None),
        ("health/", None),
        ("favicon.ico/x", None),
        ("@file/", None),
        ("@file/x", None),
        ("@file/12-../../etc/passwd", None),
        ("@file/12-name/more", None),
        ("public/a\x00b", None),
        ("index.html", None),
    ],
)
def test_route_of(subpath, route):
    assert routes.route_of(subpath) is route


def test_virtual_files_are_read_from_what_the_kernel_sends():
    text = (
        '<a href="./@file/12-3456-AbCdEfGh.csv" download>x</a>'
        '<img src=\\"./@file/7-1-zz.png\\">'
        "&quot;./@file/0-empty.txt&quot; @file/ alone, @file/x"
    )
    assert routes.virtual_files_in(text) == {
        "12-3456-AbCdEfGh.csv",
        "7-1-zz.png",
        "0-empty.txt",
    }
    assert routes.virtual_files_in("no files here") == set()
    assert routes.virtual_file_name(f"@file/{FILE_NAME}") == FILE_NAME
    assert routes.virtual_file_name("public/x") is None
    assert routes.virtual_file_name("@file/no-length") is None


@pytest.mark.parametrize(
    ("code", "sent"),
    [
        (1000, 1000),
        (1003, 4003),
        (1008, 4008),
        (1011, 4011),
        (3000, 3000),
        (4401, 4401),
    ],
)
def test_close_codes_go_out_as_every_server_can_send_them(code, sent):
    import enum

    class Codes(enum.IntEnum):
        CODE = code

    assert consumers.sendable_close_code(Codes.CODE) == sent
    assert type(consumers.sendable_close_code(Codes.CODE)) is int


# The view: everything not listed answers 404 (405 for another method),
# after the same access decision as the page.

in_database = pytest.mark.django_db(transaction=True)


@in_database
@pytest.mark.parametrize(
    "path",
    [
        "/notebooks/square/sse?session_id=s_abcdef",
        "/notebooks/square/auth/login",
        "/notebooks/square/api/status/connections",
        "/notebooks/square/api/home/workspace_files",
        "/notebooks/lab/demo/healthz",
        "/notebooks/square/ws",  # the websocket, asked for over plain HTTP
    ],
)
async def test_unlisted_routes_are_not_found(path):
    alice = await logged_in("alice")
    for method in ("get", "post", "put"):
        response = await getattr(alice, method)(path, headers=kernel_headers())
        assert response.status_code == 404, (method, path)
        assert response.json() == {"error": "Not found."}


@in_database
async def test_listed_routes_refuse_other_methods():
    alice = await logged_in("alice")
    wrong = await alice.get("/notebooks/square/api/kernel/set_ui_element_value")
    assert wrong.status_code == 405
    assert wrong["Allow"] == "POST"
    page = await alice.post("/notebooks/square/", headers=kernel_headers())
    assert page.status_code == 405
    assert page["Allow"] == "GET, HEAD"
    health = await alice.delete("/notebooks/square/health")
    assert health.status_code == 405


@in_database
async def test_the_access_decision_comes_first():
    anonymous = AsyncClient()
    assert (await anonymous.get("/notebooks/square/sse")).status_code == 401
    bob = await logged_in("bob")
    assert (await bob.get("/notebooks/sales/auth/login")).status_code == 403
    assert (
        await bob.post(
            "/notebooks/sales/api/kernel/run",
            {},
            content_type="application/json",
            headers=kernel_headers(await bound_session(bob, "sales")),
        )
    ).status_code == 403


@in_database
async def test_the_fast_path_leaves_unlisted_kernel_calls_to_the_view():
    import httpx

    from django_notebooks.asgi import FastPathMiddleware
    from tests.asgi import django_asgi_app

    alice = await logged_in("alice")
    session_id = await bound_session(alice)
    transport = httpx.ASGITransport(app=FastPathMiddleware(django_asgi_app))
    async with httpx.AsyncClient(
        transport=transport, base_url="http://testserver"
    ) as http:
        response = await http.post(
            "/notebooks/square/api/kernel/instantiate",
            json={},
            headers={
                "Cookie": f"sessionid={session_key(alice)}",
                **kernel_headers(session_id),
            },
        )
    assert response.status_code == 404


# Downloads.


@in_database
async def test_a_download_needs_a_session_of_this_login_that_made_it():
    alice = await logged_in("alice")
    path = f"/notebooks/files/@file/{FILE_NAME}"
    # No session at all, and a session that never sent this file.
    assert (await alice.get(path)).status_code == 404
    session_id = await bound_session(alice, "files")
    assert (await alice.get(path)).status_code == 404
    # Recorded for another notebook's session of the same login.
    other = await bound_session(alice, "square")
    owners.bindings.add_files(other, {FILE_NAME})
    assert (await alice.get(path)).status_code == 404
    # An anonymous visitor of a public notebook owns nothing without a cookie.
    assert (
        await AsyncClient().get(f"/notebooks/hello/@file/{FILE_NAME}")
    ).status_code == 404
    owners.bindings.forget(session_id)
    owners.bindings.forget(other)


@in_database
async def test_a_download_is_served_to_its_sessions_login_only():
    alice = await logged_in("alice")
    bob = await logged_in("bob")
    alice_elsewhere = AsyncClient()  # another browser of the same user
    await force_login(alice_elsewhere, alice.user)
    cookie = f"sessionid={session_key(alice)}"
    session_id = "s_files1"
    ws = WebsocketCommunicator(
        application,
        f"/notebooks/files/ws?session_id={session_id}",
        headers=[
            (b"host", b"testserver"),
            (b"origin", b"http://testserver"),
            (b"cookie", cookie.encode()),
        ],
    )
    connected, _ = await ws.connect(timeout=30)
    assert connected
    try:
        names: set[str] = set()
        text = ""
        while '"completed-run"' not in text:
            text = await ws.receive_from(timeout=60)
            names.update(re.findall(r"\./@file/([^\"'\\&]+)", text))
        [name] = names
        assert name in owners.bindings._bindings[session_id].files
        own = await alice.get(f"/notebooks/files/@file/{name}")
        assert own.status_code == 200
        assert (
            b"".join([chunk async for chunk in own.streaming_content])
            == b"0123456789" * 50_000
        )
        for other in (bob, alice_elsewhere):
            response = await other.get(f"/notebooks/files/@file/{name}")
            assert response.status_code == 404

        # Forwarded from another process, the holder checks the same.
        message = {
            "notebook": "files",
            "session_id": session_id,
            "session_key": session_key(alice_elsewhere),
            "visitor": None,
            "kind": "file",
            "path": f"/notebooks/files/@file/{name}",
            "mount": "/notebooks/files/",
        }
        assert (await calls.forwarded(message)).status == 404
    finally:
        await ws.disconnect()
        notebook_apps.close_all_sessions()


@pytest.mark.parametrize(
    ("frame", "change"),
    [
        ('{"op": "cell-op", "data": {"op":"cell-op","status":"running"}}', True),
        ('{"op": "cell-op", "data": {"op":"cell-op","status":"idle"}}', None),
        ('{"op": "completed-run", "data": {"op":"completed-run"}}', False),
        ('{"op": "kernel-ready", "data": {"status":"running"}}', None),
    ],
)
def test_runs_starting_and_ending_are_read_off_kernel_messages(frame, change):
    assert routes.run_change_in(frame) is change
