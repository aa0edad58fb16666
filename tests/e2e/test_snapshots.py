"""Snapshots with real servers (daphne and uvicorn): the server's keeper
makes them in the background; a static notebook's page is its snapshot,
for any number of visitors and no kernel; it follows saves of its models
(debounced), edits of its file (a failed run keeping the old page) and
its schedule."""

from __future__ import annotations

import asyncio
import re
import shutil
import time
from pathlib import Path

import httpx
import pytest
import websockets

from tests.e2e.test_isolation import wait_for
from tests.live import (
    LiveServer,
    NotebookClient,
    database_of_its_own,
    end_kernel_host,
    run_in_other_process,
    whoami,
)

pytestmark = pytest.mark.e2e

NOTEBOOK = Path(__file__).parent.parent / "notebooks" / "snapshot.py"
VISITORS = 200
# The debounce interval the servers run with (SNAPSHOT_MIN_INTERVAL).
INTERVAL = 2


def start(
    kind: str, tmp_path: Path, live_db: Path, *, superuser: bool = False, **env: str
) -> LiveServer:
    """A server with the snapshot notebooks (tests/settings.py), on a
    database of its own (the tests add groups) and a notebook file the
    test may edit."""
    notebook = tmp_path / "kpis.py"
    shutil.copy(NOTEBOOK, notebook)
    db_path = database_of_its_own(live_db, tmp_path, superuser=superuser)
    server = LiveServer(
        kind,
        db_path,
        tmp_path / "server.log",
        DJANGO_NOTEBOOKS_TEST_ISOLATION="process",
        DJANGO_NOTEBOOKS_TEST_SNAPSHOTS=str(notebook),
        DJANGO_NOTEBOOKS_TEST_SNAPSHOT_INTERVAL=str(INTERVAL),
        DJANGO_NOTEBOOKS_TEST_MEDIA=str(tmp_path / "media"),
        **env,
    )
    server.db_path = db_path  # type: ignore[attr-defined]
    server.notebook = notebook  # type: ignore[attr-defined]
    return server


def stop(server: LiveServer) -> None:
    hosts = server.kernel_hosts()
    server.stop()
    for host in hosts:
        end_kernel_host(host)


def figure(html: str) -> str:
    found = re.search(r"groups=(\d+|none) square=(\d+)", html)
    assert found, "the page shows no figure"
    return found.group(0)


async def page_once_made(client: NotebookClient, path: str, timeout: float = 60):
    """The static page, once the server's keeper has made it (the first
    request starts the keeper; until it is made the page is a 503)."""
    deadline = time.monotonic() + timeout
    while True:
        response = await client.http.get(path)
        if response.status_code == 200:
            return response
        assert response.status_code == 503, response.text[:500]
        assert response.headers["Retry-After"]
        assert time.monotonic() < deadline, "the snapshot was never made"
        await asyncio.sleep(0.25)


async def figure_becomes(
    client: NotebookClient, expected: str, timeout: float
) -> tuple[float, str]:
    """Seconds until the page shows ``expected``, and its ETag."""
    started = time.monotonic()
    while True:
        response = await client.http.get("/notebooks/kpis/")
        if response.status_code == 200 and figure(response.text) == expected:
            return time.monotonic() - started, response.headers["ETag"]
        assert time.monotonic() - started < timeout, (
            f"the page still shows {figure(response.text)}, not {expected}"
        )
        await asyncio.sleep(0.1)


def makings(server: LiveServer, reason: str) -> int:
    return server.log().count(f"Making the snapshot of 'kpis' ({reason})")


@pytest.mark.parametrize("kind", ["daphne", "uvicorn"])
async def test_a_static_page_serves_a_crowd_with_no_kernel(kind, live_db, tmp_path):
    server = start(kind, tmp_path, live_db)
    try:
        async with NotebookClient(server.url) as client:
            first = await page_once_made(client, "/notebooks/kpis/")
            assert figure(first.text) == "groups=1 square=16"
            assert first.headers["Cache-Control"] == "public, no-cache"
            assert "set-cookie" not in first.headers
            # The runs that made the snapshots have ended with their kernels.
            await wait_for(lambda: not server.kernel_pids(), 30, "a run's kernel stays")

            limits = httpx.Limits(max_connections=VISITORS)
            async with httpx.AsyncClient(
                base_url=server.url, timeout=60, limits=limits
            ) as crowd:
                answers = await asyncio.gather(
                    *(crowd.get("/notebooks/kpis/") for _ in range(VISITORS))
                )
            assert [a.status_code for a in answers] == [200] * VISITORS
            assert {a.headers["ETag"] for a in answers} == {first.headers["ETag"]}
            assert not server.kernel_pids()

            again = await client.http.get(
                "/notebooks/kpis/", headers={"If-None-Match": first.headers["ETag"]}
            )
            assert again.status_code == 304 and not again.content

            # No kernel below it: no websocket, no kernel calls.
            with pytest.raises(websockets.InvalidStatus):
                async with client.kernel("/notebooks/kpis/"):
                    pass
            call = await client.post_kernel(
                "/notebooks/kpis/", "set_ui_element_value", "s_any", {}
            )
            assert call.status_code == 404
            assert not server.kernel_pids()
    finally:
        stop(server)


@pytest.mark.parametrize("kind", ["daphne", "uvicorn"])
async def test_a_group_notebook_snapshot_is_never_a_strangers(kind, live_db, tmp_path):
    server = start(kind, tmp_path, live_db)
    try:
        async with (
            NotebookClient(server.url) as alice,
            NotebookClient(server.url) as bob,
            NotebookClient(server.url) as anonymous,
        ):
            await alice.login("alice")  # in the group "sales"
            await bob.login("bob")
            member = await page_once_made(alice, "/notebooks/kpis_sales/")
            assert member.headers["Cache-Control"] == "private, no-cache"
            assert "Cookie" in member.headers["Vary"]
            refused = await bob.http.get("/notebooks/kpis_sales/")
            assert refused.status_code == 403 and "groups=" not in refused.text
            login = await anonymous.http.get("/notebooks/kpis_sales/")
            assert login.status_code == 302 and "/login/" in login.headers["Location"]
            # A shared cache's copy would not help a stranger either: the
            # answer depends on the login, and says so.
            etag = member.headers["ETag"]
            cached = await bob.http.get(
                "/notebooks/kpis_sales/", headers={"If-None-Match": etag}
            )
            assert cached.status_code == 403
    finally:
        stop(server)


@pytest.mark.parametrize("kind", ["daphne", "uvicorn"])
async def test_a_static_page_follows_its_data_its_file_and_its_schedule(
    kind, live_db, tmp_path
):
    server = start(kind, tmp_path, live_db, DJANGO_NOTEBOOKS_TEST_SNAPSHOT_REFRESH="4")
    db_path = server.db_path  # type: ignore[attr-defined]
    notebook: Path = server.notebook  # type: ignore[attr-defined]
    try:
        async with NotebookClient(server.url) as client:
            first = await page_once_made(client, "/notebooks/kpis/")
            assert first.headers["Cache-Control"] == "public, max-age=4"
            assert figure(first.text) == "groups=1 square=16"

            # Three saves at once, in another process: one page with all
            # three, and not three runs (debounced).
            before = makings(server, "asked")
            run_in_other_process(
                db_path,
                {"DJANGO_NOTEBOOKS_TEST_SNAPSHOTS": str(notebook)},
                "for name in ('north', 'south', 'west'):\n"
                "    Group.objects.create(name=name)",
            )
            seconds, _ = await figure_becomes(client, "groups=4 square=16", 60)
            print(f"{kind}: a save shown after {seconds:.1f} s")
            assert makings(server, "asked") - before <= 2

            # The file changed: made again. Changed to fail: the old page stays.
            notebook.write_text(notebook.read_text().replace("value=4", "value=5"))
            await figure_becomes(client, "groups=4 square=25", 60)
            source = notebook.read_text()
            notebook.write_text(source.replace("slider = mo", "slider = 1 / 0 or mo"))
            await wait_for(
                lambda: "The snapshot of 'kpis' could not be made" in server.log(),
                60,
                "the failure was not logged",
            )
            kept = await client.http.get("/notebooks/kpis/")
            assert figure(kept.text) == "groups=4 square=25"
            notebook.write_text(source.replace("value=5", "value=6"))

            # On schedule (refresh: 4 s), whether or not anything changed.
            scheduled = makings(server, "scheduled")
            await wait_for(
                lambda: makings(server, "scheduled") > scheduled,
                30,
                "no scheduled making",
            )
            await figure_becomes(client, "groups=4 square=36", 60)
    finally:
        stop(server)


@pytest.mark.parametrize("kind", ["daphne", "uvicorn"])
async def test_as_user_the_template_tag_and_the_admin(kind, live_db, tmp_path):
    server = start(kind, tmp_path, live_db, superuser=True)
    try:
        async with (
            NotebookClient(server.url) as anonymous,
            NotebookClient(server.url) as root,
        ):
            # Made as alice, shown to anyone who may open it (a public one).
            page = await page_once_made(anonymous, "/notebooks/kpis_alice/")
            # (The output is a JSON string in marimo's page: unescaped here.)
            seen = whoami([page.text.replace('\\"', '"').replace("\\u003C", "<")])
            assert seen["user"]["username"] == "alice"
            assert seen["cookies"] == [] and "cookie" not in seen["headers"]

            # {% notebook %} embeds the static page like any other.
            await page_once_made(anonymous, "/notebooks/kpis/")
            embedding = await anonymous.http.get("/embed-snapshot/")
            assert 'src="/notebooks/kpis/"' in embedding.text
            framed = await anonymous.http.get("/notebooks/kpis/")
            assert framed.status_code == 200
            assert framed.headers["X-Frame-Options"] == "SAMEORIGIN"

            # The admin lists it and makes it again.
            await root.login("root", "root-pw")
            url = "/admin/django_notebooks/notebooksnapshot/"
            listing = await root.http.get(url)
            for column in ("Age", "Size", "Took (seconds)", "Last error"):
                assert column.lower() in listing.text.lower(), column
            row = re.search(
                r'name="_selected_action" value="(\d+)"[^>]*>\s*</td>\s*'
                r'<th class="field-notebook"><a [^>]*>kpis</a>',
                listing.text,
            )
            assert row, "no row for kpis"
            before = makings(server, "asked")
            answer = await root.http.post(
                url,
                data={
                    "action": "make_again",
                    "_selected_action": row.group(1),
                    "index": "0",
                    "csrfmiddlewaretoken": root.http.cookies["csrftoken"],
                },
                headers={"Referer": server.url + url},
            )
            assert answer.status_code == 302
            await wait_for(
                lambda: makings(server, "asked") > before, 30, "not made again"
            )
    finally:
        stop(server)
