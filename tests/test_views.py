"""The index and the forwarding view, through Django's in-process ASGI client
(marimo's apps really answer: the notebooks are tiny)."""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import marimo
import pytest
from django.conf import settings
from django.test import AsyncClient, override_settings
from django.urls import reverse

from django_notebooks import notices, views
from django_notebooks.marimo import pages
from django_notebooks.sessions import owners
from tests.compat import session_key
from tests.helpers import (
    ORIGIN,
    communicator,
    connected_and_run,
    frames_until_completed,
    new_session_id,
    notebooks_with,
    outputs,
)
from tests.helpers import logged_in_client as logged_in
from tests.live import UI_ELEMENT
from tests.settings import NOTEBOOKS_DIR

pytestmark = pytest.mark.django_db(transaction=True)

KERNEL_CALL = "/notebooks/square/api/kernel/set_ui_element_value"
PREFIX = "/deep/under/here/"


async def bound_session(client: AsyncClient, notebook: str = "square") -> str:
    """A marimo session id this client's login owns, as if its kernel
    websocket had opened it."""
    session_id = new_session_id()
    owner = owners.owner_of(client.user, session_key(client), None)
    claim = owners.bindings.claim(
        session_id,
        owner=owner,
        notebook=notebook,
        user_context={},
        user_id=client.user.pk,
    )
    assert claim.outcome is owners.Claim.CLAIMED
    return session_id


def kernel_headers(session_id: str | None = None, **extra: str) -> dict[str, str]:
    headers = {"Origin": ORIGIN, **extra}
    if session_id is not None:
        headers["Marimo-Session-Id"] = session_id
    return headers


async def kernel_call(
    client: AsyncClient, session_id: str | None, body: Any, path: str = KERNEL_CALL
) -> Any:
    """POST ``body`` (JSON, or bytes as they are) to a kernel endpoint as the
    frontend does, for ``session_id``."""
    return await client.post(
        path,
        body,
        content_type="application/json",
        headers=kernel_headers(session_id),
    )


def hrefs(html: str) -> list[str]:
    return re.findall(r'href="([^"]+)"', html)


# Logged out, forbidden, unknown


async def test_anonymous_page_redirects_to_login():
    response = await AsyncClient().get("/notebooks/square/")
    assert response.status_code == 302
    assert response["Location"] == f"{settings.LOGIN_URL}?next=/notebooks/square/"


@override_settings(LOGIN_URL="/sign-in/")
async def test_login_redirect_follows_login_url_and_keeps_the_query():
    response = await AsyncClient().get("/notebooks/lab/demo/?n=3")
    assert response.status_code == 302
    assert response["Location"] == "/sign-in/?next=/notebooks/lab/demo/%3Fn%3D3"


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("get", "/notebooks/square/health"),
        ("get", "/notebooks/square/assets/index.js"),
        ("get", "/notebooks/lab/demo/health"),
        ("post", KERNEL_CALL),
    ],
)
async def test_anonymous_sub_paths_get_401_json(method, path):
    response = await getattr(AsyncClient(), method)(
        path, headers=kernel_headers(new_session_id())
    )
    assert response.status_code == 401
    assert response["Content-Type"] == "application/json"
    assert "Log in" in response.json()["error"]


async def test_forbidden_user_gets_403_everywhere():
    client = await logged_in("bob")
    assert (await client.get("/notebooks/sales/")).status_code == 403
    assert (await client.get("/notebooks/report/")).status_code == 403
    assert (await client.get("/notebooks/ops/")).status_code == 403
    health = await client.get("/notebooks/sales/health")
    assert health.status_code == 403
    assert health.json() == {"error": "You may not use this notebook."}
    post = await kernel_call(
        client,
        new_session_id(),
        {"objectIds": [], "values": []},
        "/notebooks/sales/api/kernel/set_ui_element_value",
    )
    assert post.status_code == 403


@pytest.mark.parametrize(
    "path",
    [
        "/notebooks/nope/",
        "/notebooks/nope/health",
        "/notebooks/lab/nope/",
        "/notebooks/lab/",
        "/notebooks/lab/helpers/",
        "/notebooks/lab/_private/",
        "/notebooks/lab/escape/",
        "/notebooks/lab/notes.txt/",
        "/notebooks/lab/../square/",
        "/notebooks/square/assets/../../whoami/",
    ],
)
async def test_unknown_notebooks_are_404(path):
    client = await logged_in("alice")
    assert (await client.get(path)).status_code == 404


async def test_unknown_notebook_is_404_for_anonymous_too():
    assert (await AsyncClient().get("/notebooks/nope/")).status_code == 404


# Pages and sub-paths


async def test_allowed_user_gets_the_marimo_page():
    client = await logged_in("alice", groups=("sales",))
    for path in ("/notebooks/square/", "/notebooks/sales/", "/notebooks/lab/demo/"):
        response = await client.get(path)
        assert response.status_code == 200, path
        assert response["Content-Type"].startswith("text/html")
        assert (
            "<marimo-" in response.content.decode()
            or "marimo" in response.content.decode()
        )
        assert response["X-Frame-Options"] == "SAMEORIGIN"
        assert "Cookie" in response["Vary"]
        assert "Access-Control-Allow-Origin" not in response


async def main_script(client: AsyncClient, page_url: str) -> bytes:
    """Load a notebook page and the main script it names, as a browser would."""
    page = await client.get(page_url)
    assert page.status_code == 200
    src = re.search(
        r'<script[^>]+src="([^"]+/index-[^"]+\.js)"', page.content.decode()
    ).group(1)
    response = await client.get(urljoin(page_url, src))
    assert response.status_code == 200, src
    assert "javascript" in response["Content-Type"]
    body = (
        b"".join([c async for c in response.streaming_content])
        if response.streaming
        else response.content
    )
    if response.get("Content-Length"):
        assert len(body) == int(response["Content-Length"])
    return body


@pytest.mark.parametrize("frontend", ["bridge", "marimo"])
async def test_the_pages_script_and_sub_paths_load(frontend):
    client = await logged_in("alice")
    with notebooks_with(FRONTEND=frontend):
        assert len(await main_script(client, "/notebooks/square/")) > 1000
        health = await client.get("/notebooks/square/health")
    assert health.status_code == 200
    assert "Access-Control-Allow-Origin" not in health


@notebooks_with(FRONTEND="marimo")
async def test_assets_below_a_notebook_are_streamed_whole():
    client = await logged_in("alice")
    page = (await client.get("/notebooks/square/")).content.decode()
    asset = re.search(r'src="\./(assets/[^"]+\.js)"', page).group(1)
    response = await client.get(f"/notebooks/square/{asset}")
    assert response.status_code == 200
    body = (
        b"".join([c async for c in response.streaming_content])
        if response.streaming
        else response.content
    )
    on_disk = (Path(marimo.__file__).parent / "_static" / asset).read_bytes()
    assert body == on_disk


async def test_public_notebook_is_open_to_anonymous_visitors():
    client = AsyncClient()
    response = await client.get("/notebooks/hello/")
    assert response.status_code == 200
    # Anonymous visitors get a signed id, so their kernel sessions are theirs.
    cookie = response.cookies[owners.VISITOR_COOKIE]
    assert owners.visitor_from_cookie(cookie.value)
    assert cookie["httponly"]
    assert (await client.get("/notebooks/hello/health")).status_code == 200


@pytest.mark.parametrize(
    ("path", "location"),
    [
        ("/notebooks/square?x=1&y=two", "/notebooks/square/?x=1&y=two"),
        ("/notebooks/square", "/notebooks/square/"),
        ("/notebooks/lab/demo?n=3", "/notebooks/lab/demo/?n=3"),
    ],
)
async def test_missing_slash_redirects_and_keeps_the_query(path, location):
    client = await logged_in("alice")
    response = await client.get(path)
    assert response.status_code in (301, 302)
    assert response["Location"] == location


def test_reverse_notebook_urls():
    assert reverse("django_notebooks:notebook", args=["square"]) == "/notebooks/square/"
    assert (
        reverse("django_notebooks:notebook", args=["lab/demo"])
        == "/notebooks/lab/demo/"
    )
    assert reverse("django_notebooks:index") == "/notebooks/"


# The index


async def test_index_lists_only_the_notebooks_the_user_may_open():
    client = await logged_in("alice", groups=("sales",))
    response = await client.get("/notebooks/")
    assert response.status_code == 200
    html = response.content.decode()
    listed = [href for href in hrefs(html) if href.startswith("/notebooks/")]
    assert listed == [
        "/notebooks/square/",
        "/notebooks/hello/",
        "/notebooks/sales/",
        "/notebooks/whoami/",
        "/notebooks/files/",
        "/notebooks/cpu/",
        "/notebooks/lab/demo/",
    ]
    for title in ("Square", "Hello", "Sales", "Whoami", "Files", "Cpu", "Demo"):
        assert f">{title}</a>" in html, title


async def test_index_for_other_users():
    bob = await logged_in("bob")
    listed = hrefs((await bob.get("/notebooks/")).content.decode())
    assert "/notebooks/sales/" not in listed
    assert "/notebooks/ops/" not in listed
    assert "/notebooks/square/" in listed
    ops = await logged_in("ops-dan")
    assert "/notebooks/ops/" in hrefs((await ops.get("/notebooks/")).content.decode())


async def test_index_for_anonymous_lists_public_notebooks():
    html = (await AsyncClient().get("/notebooks/")).content.decode()
    assert [h for h in hrefs(html) if h.startswith("/notebooks/")] == [
        "/notebooks/hello/"
    ]


# Another include prefix


@pytest.mark.parametrize("frontend", ["bridge", "marimo"])
@override_settings(ROOT_URLCONF="tests.urls_prefix")
async def test_a_different_include_prefix_serves_pages_and_assets(frontend):
    assert (
        reverse("django_notebooks:notebook", args=["lab/demo"]) == f"{PREFIX}lab/demo/"
    )
    client = await logged_in("alice")
    assert (await client.get("/notebooks/square/")).status_code == 404
    with notebooks_with(FRONTEND=frontend):
        assert len(await main_script(client, f"{PREFIX}square/")) > 1000
        assert (await client.get(f"{PREFIX}lab/demo/health")).status_code == 200
    redirect = await client.get(f"{PREFIX}lab/demo?n=1")
    assert redirect["Location"] == f"{PREFIX}lab/demo/?n=1"
    index = (await client.get(PREFIX)).content.decode()
    assert f"{PREFIX}square/" in hrefs(index)
    anonymous = await AsyncClient().get(f"{PREFIX}square/")
    assert anonymous["Location"] == f"/accounts/login/?next={PREFIX}square/"


# Kernel calls


@override_settings(DATA_UPLOAD_MAX_MEMORY_SIZE=100)
async def test_body_over_the_upload_limit_is_413():
    client = await logged_in("alice")
    session_id = await bound_session(client)
    body = json.dumps({"objectIds": ["x"], "values": ["y" * 500]})
    response = await kernel_call(client, session_id, body)
    assert response.status_code == 413
    assert "too large" in response.json()["error"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "JSON object"),
        (b"\xff\xfe", "not valid JSON"),
    ],
)
async def test_malformed_kernel_call_body_is_400(body, message):
    client = await logged_in("alice")
    session_id = await bound_session(client)
    response = await kernel_call(client, session_id, body)
    assert response.status_code == 400
    assert message in response.json()["error"]


async def test_kernel_call_without_marimo_session_id_is_400():
    client = await logged_in("alice")
    response = await kernel_call(client, None, {"objectIds": [], "values": []})
    assert response.status_code == 400
    assert "Marimo-Session-Id" in response.json()["error"]


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "https://evil.example"},
        {"Origin": "null"},
        {"Origin": "http://testserver.evil.example"},
        {"Referer": "https://evil.example/page"},
        {"Sec-Fetch-Site": "cross-site"},
    ],
)
async def test_cross_origin_kernel_call_is_403(headers):
    client = await logged_in("alice")
    session_id = await bound_session(client)
    response = await client.post(
        KERNEL_CALL,
        json.dumps({"objectIds": [], "values": []}),
        content_type="text/plain",
        headers={"Marimo-Session-Id": session_id, **headers},
    )
    assert response.status_code == 403
    assert "Cross-site" in response.json()["error"]


async def test_kernel_call_for_a_session_this_login_did_not_open_is_403():
    alice = await logged_in("alice")
    bob = await logged_in("bob")
    alices_session = await bound_session(alice)
    body = {"objectIds": [], "values": []}
    response = await kernel_call(bob, alices_session, body)
    assert response.status_code == 403
    assert "not yours" in response.json()["error"]
    # A session opened for one notebook does not drive another.
    other = await kernel_call(
        alice, alices_session, body, "/notebooks/whoami/api/kernel/set_ui_element_value"
    )
    assert other.status_code == 403


async def test_kernel_call_for_a_session_no_process_knows_is_410():
    # As after a clean restart of the process that held it: the owner is
    # told to reload, not that the session is someone else's.
    alice = await logged_in("alice")
    session_id = await bound_session(alice)
    owners.bindings.forget(session_id)
    body = {"objectIds": [], "values": []}
    for unknown in (session_id, new_session_id()):
        response = await kernel_call(alice, unknown, body)
        assert response.status_code == 410
        assert response.json() == {
            "error": "This notebook session has ended: reload the page."
        }


async def test_kernel_call_after_the_websocket_closed_is_410():
    client = await logged_in("alice")
    session_id = await bound_session(client)
    owners.bindings.release(
        session_id, owners.owner_of(client.user, session_key(client), None)
    )
    response = await kernel_call(client, session_id, {"objectIds": [], "values": []})
    assert response.status_code == 410
    assert "reload" in response.json()["error"]


async def test_widget_change_reaches_the_kernel_opened_over_the_websocket(
    close_marimo_sessions,
):
    """The whole in-process path: the websocket opens a kernel, a kernel
    call through the view changes a slider, the websocket streams the rerun."""
    client = await logged_in("alice")
    sessionid = client.cookies[settings.SESSION_COOKIE_NAME].value
    session_id = new_session_id()
    ws = communicator(
        f"/notebooks/square/ws?session_id={session_id}", sessionid=sessionid
    )
    try:
        first = outputs(await connected_and_run(ws))
        assert "square=9 user=alice" in first
        [slider] = UI_ELEMENT.findall(first)
        response = await kernel_call(
            client, session_id, {"objectIds": [slider], "values": [7]}
        )
        assert response.status_code == 200, response.content
        assert response.json() == {"success": True}
        assert "square=49 user=alice" in outputs(await frames_until_completed(ws))
    finally:
        await ws.disconnect()


# Settings that change what users see


@notebooks_with(CONCEAL_FORBIDDEN=True)
async def test_conceal_forbidden_answers_404_for_notebooks_the_user_may_not_open():
    bob = await logged_in("bob")
    assert (await bob.get("/notebooks/sales/")).status_code == 404
    health = await bob.get("/notebooks/sales/health")
    assert health.status_code == 404
    assert health["Content-Type"] == "application/json"
    assert (await bob.get("/notebooks/square/")).status_code == 200
    # Anonymous users cannot tell unknown notebooks from private ones.
    anonymous = AsyncClient()
    for path in ("/notebooks/square/", "/notebooks/nope/", "/notebooks/lab/nope/"):
        response = await anonymous.get(path)
        assert response.status_code == 302, path
        assert response["Location"] == f"{settings.LOGIN_URL}?next={path}"
    assert (await anonymous.get("/notebooks/nope/health")).status_code == 401
    assert (await anonymous.get("/notebooks/square/health")).status_code == 401


async def test_without_conceal_forbidden_users_see_403_and_404():
    bob = await logged_in("bob")
    assert (await bob.get("/notebooks/sales/")).status_code == 403
    assert (await AsyncClient().get("/notebooks/nope/")).status_code == 404


async def test_page_hides_server_file_paths():
    client = await logged_in("alice")
    page = (await client.get("/notebooks/square/")).content.decode()
    assert "square.py" in page
    assert str(NOTEBOOKS_DIR) not in page
    assert os.getcwd() not in page


@pytest.mark.parametrize("expose", [False, True])
async def test_the_page_carries_the_notices_script_once_in_its_head(expose):
    with override_settings(
        DJANGO_NOTEBOOKS={**settings.DJANGO_NOTEBOOKS, "EXPOSE_FILE_PATHS": expose}
    ):
        client = await logged_in("alice")
        response = await client.get("/notebooks/square/")
    page = response.content.decode()
    head = page.split("</head>", 1)[0]
    assert head.count("window.djangoNotebooksNotices = true") == 1
    assert page.count(notices.page_script()) == 1
    # The ETag is of the page as sent, script and all.
    digest = hashlib.blake2b(response.content, digest_size=16).hexdigest()
    assert response["ETag"] == f'"{digest}"'


@notebooks_with(EXPOSE_FILE_PATHS=True)
async def test_expose_file_paths_keeps_marimos_page():
    client = await logged_in("alice")
    page = (await client.get("/notebooks/square/")).content.decode()
    assert str(NOTEBOOKS_DIR / "square.py") in page


# The page, prepared once per version of its notebook file.


async def test_marimo_renders_a_page_the_same_for_every_visitor_and_query():
    """What lets the bridge keep a page it prepared: if marimo ever puts
    something of the request in it, this fails."""
    seen = set()
    for username, query in (("alice", ""), ("carol", "?x=1&region=North")):
        pages.forget_pages()
        client = await logged_in(username)
        seen.add((await client.get(f"/notebooks/square/{query}")).content)
    assert len(seen) == 1


async def test_a_page_is_prepared_once_per_version_of_its_file(tmp_path, monkeypatch):
    notebook = tmp_path / "kept_page.py"
    notebook.write_bytes((NOTEBOOKS_DIR / "square.py").read_bytes())
    calls = []
    real = views._to_marimo

    async def counted(*args, **kwargs):
        calls.append(args[1].subpath)
        return await real(*args, **kwargs)

    monkeypatch.setattr(views, "_to_marimo", counted)
    with notebooks_with(NOTEBOOKS={"kept_page": notebook}):
        client = await logged_in("alice")
        first = await client.get("/notebooks/kept_page/")
        second = await client.get("/notebooks/kept_page/?x=2")
        assert calls == [""]  # marimo rendered it once
        assert second.content == first.content and second["ETag"] == first["ETag"]
        assert second["Content-Type"] == first["Content-Type"]
        again = await client.get(
            "/notebooks/kept_page/", headers={"If-None-Match": first["ETag"]}
        )
        assert again.status_code == 304 and calls == [""]
        # An edit is a new version: rendered again, with what it says now.
        notebook.write_text(
            notebook.read_text().replace(
                "marimo.App()", 'marimo.App(app_title="Edited")'
            )
        )
        os.utime(notebook, ns=(1, 1))
        edited = await client.get("/notebooks/kept_page/")
        assert calls == ["", ""] and b"Edited" in edited.content


async def test_the_pages_kept_are_bounded(monkeypatch):
    monkeypatch.setattr(pages, "MAX_REMEMBERED_PAGES", 2)
    pages.forget_pages()
    client = await logged_in("alice")
    for slug in ("square", "whoami", "files"):
        assert (await client.get(f"/notebooks/{slug}/")).status_code == 200
    assert len(pages._remembered()) == 2
    # The least recently used went first.
    assert {key[0] for key in pages._remembered()} == {
        str(NOTEBOOKS_DIR / "whoami.py"),
        str(NOTEBOOKS_DIR / "files.py"),
    }
