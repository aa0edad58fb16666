"""The whole path, end to end: real daphne and uvicorn processes, real marimo
kernels, driven as marimo's frontend drives them."""

from __future__ import annotations

import re
from pathlib import Path

import marimo
import pytest
import websockets

from tests.live import NotebookClient, square_output, square_session, whoami
from tests.settings import NOTEBOOKS_DIR

pytestmark = pytest.mark.asyncio(loop_scope="function")


# The other supported versions run this one end-to-end test on each server.
@pytest.mark.compat
async def test_logged_in_user_drives_a_notebook(notebook_server):
    async with NotebookClient(notebook_server.url) as client:
        await client.login("alice")
        page = await client.http.get("/notebooks/square/")
        assert page.status_code == 200
        assert "<marimo-" in page.text or "marimo" in page.text

        async with client.kernel("/notebooks/square/") as kernel:
            await kernel.read_until_completed()
            assert square_output(kernel.outputs) == ["square=9 user=alice"]
            [slider] = kernel.ui_element_ids()

            response = await kernel.set_ui_value(slider, 7)
            assert response.status_code == 200, response.text
            assert response.json() == {"success": True}
            await kernel.read_until_completed()
            assert square_output(kernel.outputs)[-1] == "square=49 user=alice"


async def test_owner_kernel_calls_skip_djangos_request_machinery(notebook_server):
    async with square_session(notebook_server.url) as (_, kernel, slider):
        response = await kernel.set_ui_value(slider, 8)
        assert response.status_code == 200
        await kernel.read_until_completed()
        assert square_output(kernel.outputs)[-1] == "square=64 user=alice"
    # Django's views stamp X-Frame-Options on what they answer; the fast
    # path answers kernel calls before Django runs at all.
    assert ("x-frame-options" not in response.headers) is notebook_server.fast_path


async def test_page_sub_paths_reach_marimo(notebook_server):
    async with NotebookClient(notebook_server.url) as client:
        await client.login("alice")
        page = (await client.http.get("/notebooks/square/")).text
        # marimo's own copy of its frontend, below the notebook, still answers.
        asset = re.search(
            r'src="/notebooks/_marimo/[^/]+/(assets/[^"]+\.js)"', page
        ).group(1)
        response = await client.http.get(f"/notebooks/square/{asset}")
        assert response.status_code == 200
        assert "javascript" in response.headers["content-type"]
        assert len(response.content) == int(response.headers["content-length"])

        health = await client.http.get("/notebooks/square/health")
        assert health.status_code == 200
        favicon = await client.http.get("/notebooks/square/favicon.ico")
        assert favicon.status_code == 200


async def test_virtual_files_and_public_folder_stream_through(notebook_server):
    async with NotebookClient(notebook_server.url) as client:
        await client.login("alice")
        async with client.kernel("/notebooks/files/") as kernel:
            await kernel.read_until_completed()
            [virtual] = re.findall(r"\./(@file/[^\"'\\&]+)", " ".join(kernel.outputs))
            async with client.http.stream(
                "GET", f"/notebooks/files/{virtual}"
            ) as response:
                assert response.status_code == 200
                received = b"".join([chunk async for chunk in response.aiter_raw()])
            assert received == b"0123456789" * 50_000
        # marimo's service worker names the notebook in X-Notebook-Id; the
        # bridge sets it from the notebook's file, whatever the browser says.
        public = await client.http.get(
            "/notebooks/files/public/hello.txt", headers={"X-Notebook-Id": "whatever"}
        )
        assert public.status_code == 200
        assert public.text == "hello from the public folder\n"

    async with NotebookClient(notebook_server.url) as anonymous:
        assert (
            await anonymous.http.get(f"/notebooks/files/{virtual}")
        ).status_code == 401
        assert (
            await anonymous.http.get("/notebooks/files/public/hello.txt")
        ).status_code == 401


async def test_frontend_is_served_compressed_and_immutable(notebook_server):
    async with NotebookClient(notebook_server.url) as client:
        await client.login("alice")
        page = (await client.http.get("/notebooks/square/")).text
        scripts = re.findall(
            r'src="(/notebooks/_marimo/([^/]+)/(assets/[^"]+\.js))"', page
        )
        assert scripts, "the page does not load marimo's frontend through the bridge"
        url, version, name = scripts[0]
        assert version == marimo.__version__
        on_disk = (Path(marimo.__file__).parent / "_static" / name).read_bytes()
        for encoding in ("br", "gzip"):
            response = await client.http.get(url, headers={"Accept-Encoding": encoding})
            assert response.status_code == 200
            assert response.headers["content-encoding"] == encoding
            assert (
                response.headers["cache-control"]
                == "public, max-age=31536000, immutable"
            )
            assert int(response.headers["content-length"]) < len(on_disk) / 2
            assert response.content == on_disk  # httpx decodes it
            again = await client.http.get(
                url,
                headers={
                    "Accept-Encoding": encoding,
                    "If-None-Match": response.headers["etag"],
                },
            )
            assert again.status_code == 304
        assert (await client.http.get(url.replace(version, "0.0.1"))).status_code == 404
        assert (
            await client.raw_get(f"/notebooks/_marimo/{version}/../../../settings.py")
            == 404
        )
        assert (
            await client.http.get(f"/notebooks/_marimo/{version}/index.html")
        ).status_code == 404


async def test_missing_trailing_slash_redirects_with_query(notebook_server):
    async with NotebookClient(notebook_server.url) as client:
        await client.login("alice")
        response = await client.http.get("/notebooks/square?x=1&y=two")
        assert response.status_code in (301, 302)
        assert response.headers["location"] == "/notebooks/square/?x=1&y=two"
        response = await client.http.get("/notebooks/lab/demo")
        assert response.headers["location"] == "/notebooks/lab/demo/"


async def test_notebook_sees_django_user_and_meta_but_no_secrets(notebook_server):
    async with NotebookClient(notebook_server.url) as client:
        await client.login("alice")
        client.http.cookies.set("analytics", "x")
        async with client.kernel("/notebooks/whoami/") as kernel:
            # A client frame is read and dropped: marimo is never handed one.
            await kernel.websocket.send("{}")
            await kernel.read_until_completed()
            seen = whoami(kernel.outputs)
    user = seen["user"]
    assert user["username"] == "alice"
    assert user["is_authenticated"] is True
    assert user["groups"] == ["sales"]
    assert user["first_name"] == "Alice"
    assert {"id", "is_staff", "is_superuser", "email", "last_name"} <= set(user)
    assert seen["meta"] == {"site": "tests"}
    assert seen["cookies"] == []
    assert "cookie" not in seen["headers"]
    assert "authorization" not in seen["headers"]
    assert seen["path"] == "/notebooks/whoami/ws"


async def test_anonymous_on_public_notebook_is_not_marimos_fake_user(notebook_server):
    async with NotebookClient(notebook_server.url) as client:
        page = await client.http.get("/notebooks/hello/")
        assert page.status_code == 200
        async with client.kernel("/notebooks/hello/") as kernel:
            await kernel.read_until_completed()
            seen = whoami(kernel.outputs)
    assert seen["user"]["is_authenticated"] is False
    assert seen["user"]["username"] == ""


async def test_bad_input_gets_a_clear_4xx(notebook_server):
    async with NotebookClient(notebook_server.url) as client:
        await client.login("alice")
        async with client.kernel("/notebooks/square/") as kernel:
            await kernel.read_until_completed()
            url = "/notebooks/square/api/kernel/set_ui_element_value"
            origin = {"Origin": notebook_server.url}
            malformed = await client.http.post(
                url,
                content=b"{not json",
                headers={"Marimo-Session-Id": kernel.session_id, **origin},
            )
            assert malformed.status_code == 400
            assert "JSON" in malformed.json()["error"]
            no_session = await client.http.post(
                url, json={"objectIds": [], "values": []}, headers=origin
            )
            assert no_session.status_code == 400
            assert "Marimo-Session-Id" in no_session.json()["error"]
        ws_url = notebook_server.url.replace("http", "ws") + "/notebooks/square/ws"
        with pytest.raises(websockets.InvalidStatus) as refused:
            async with websockets.connect(
                ws_url,
                additional_headers={
                    "Cookie": client.cookie_header(),
                    "Origin": notebook_server.url,
                },
            ):
                pass
        assert 400 <= refused.value.response.status_code < 500


async def test_new_notebook_in_a_directory_appears_without_restart(notebook_server):
    source = (NOTEBOOKS_DIR / "lab" / "demo.py").read_text()
    async with NotebookClient(notebook_server.url) as client:
        await client.login("bob")
        assert (await client.http.get("/notebooks/dropbox/fresh/")).status_code == 404
        (notebook_server.dropbox / "fresh.py").write_text(source)
        try:
            assert (
                await client.http.get("/notebooks/dropbox/fresh/")
            ).status_code == 200
            assert (
                'href="/notebooks/dropbox/fresh/"'
                in (await client.http.get("/notebooks/")).text
            )
            async with client.kernel("/notebooks/dropbox/fresh/") as kernel:
                await kernel.read_until_completed()
                assert any("lab demo notebook" in text for text in kernel.outputs)
        finally:
            (notebook_server.dropbox / "fresh.py").unlink()
        assert (await client.http.get("/notebooks/dropbox/fresh/")).status_code == 404


async def test_repeat_visit_gets_the_page_as_not_modified(notebook_server):
    async with NotebookClient(notebook_server.url) as client:
        await client.login("alice")
        first = await client.http.get("/notebooks/square/")
        again = await client.http.get(
            "/notebooks/square/", headers={"If-None-Match": first.headers["etag"]}
        )
    assert first.status_code == 200
    assert again.status_code == 304
    assert again.content == b""
