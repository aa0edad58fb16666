"""Attack: exhausting the server with sessions or oversized messages."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from pathlib import Path

import pytest
import websockets

from tests.live import LiveServer, NotebookClient, database_of_its_own, square_output

pytestmark = pytest.mark.asyncio(loop_scope="function")

PER_ADDRESS = 3
PER_SERVER = 5


@pytest.fixture(params=["daphne", "uvicorn"])
def capped_server(request, live_db, tmp_path):
    """A server that holds PER_SERVER sessions, PER_ADDRESS of them
    anonymous ones from one address (and one more from any address). A
    database of its own: the caps are the machine's, counted by the kernel
    host of the project, which another server on the shared database
    (tests/conftest.py's) would share."""
    server = LiveServer(
        request.param,
        database_of_its_own(live_db, tmp_path, superuser=False),
        tmp_path / "server.log",
        DJANGO_NOTEBOOKS_TEST_LIMIT_MAX_SESSIONS=str(PER_SERVER),
        DJANGO_NOTEBOOKS_TEST_LIMIT_MAX_SESSIONS_PER_ADDRESS=str(PER_ADDRESS),
        # Above the address's cap, so that it is the one reached.
        DJANGO_NOTEBOOKS_TEST_LIMIT_MAX_ANONYMOUS_SESSIONS=str(PER_ADDRESS + 1),
    )
    yield server
    server.stop()


async def refusal(kernel) -> tuple[dict, int]:
    """The notice a refused websocket got, and its close code."""
    notice = json.loads(await asyncio.wait_for(kernel.websocket.recv(), 10))
    with pytest.raises(websockets.ConnectionClosed) as closed:
        await asyncio.wait_for(kernel.websocket.recv(), 10)
    return notice, closed.value.rcvd.code


async def test_anonymous_sessions_per_address_and_sessions_per_server_are_capped(
    capped_server,
):
    """Clients that drop the visitor cookie are new visitors each time:
    only their address counts them; and the server as a whole holds at most
    PER_SERVER sessions. Past a cap the page is told to try again, and the
    sessions already open go on."""
    async with contextlib.AsyncExitStack() as stack:
        open_sessions = []

        async def open_session(client, page):
            kernel = await stack.enter_async_context(client.kernel(page))
            open_sessions.append(kernel)
            return kernel

        for _ in range(PER_ADDRESS):
            client = await stack.enter_async_context(NotebookClient(capped_server.url))
            await client.http.get("/notebooks/hello/")  # its visitor cookie
            await (
                await open_session(client, "/notebooks/hello/")
            ).read_until_completed()
        cookieless = await stack.enter_async_context(NotebookClient(capped_server.url))
        await cookieless.http.get("/notebooks/hello/")
        notice, code = await refusal(
            await open_session(cookieless, "/notebooks/hello/")
        )
        assert notice["data"]["title"] == "Too many notebook sessions from your network"
        assert f"{PER_ADDRESS} notebooks are already open" in notice["data"]["text"]
        assert code == 4429

        # Logged-in users are not counted by address, but by the server.
        for username in ("alice", "bob"):
            client = await stack.enter_async_context(NotebookClient(capped_server.url))
            await client.login(username)
            await (
                await open_session(client, "/notebooks/square/")
            ).read_until_completed()
        carol = await stack.enter_async_context(NotebookClient(capped_server.url))
        await carol.login("carol")
        notice, code = await refusal(await open_session(carol, "/notebooks/square/"))
        assert notice["data"]["title"] == "The notebook server is busy"
        assert "Try again in a few minutes" in notice["data"]["text"]
        assert code == 4429

        # The sessions already open go on: the anonymous ones stay connected,
        # the logged-in ones answer a widget change.
        anonymous, logged_in = open_sessions[:PER_ADDRESS], open_sessions[-3:-1]
        for kernel in anonymous:
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(kernel.websocket.recv(), 0.2)
        for kernel in logged_in:
            [slider] = kernel.ui_element_ids()
            answer = await kernel.set_ui_value(slider, 4)
            assert answer.status_code == 200, answer.text
            await kernel.read_until_completed()
            assert square_output(kernel.outputs)[-1].startswith("square=16")


async def test_sessions_per_user_are_capped_with_a_clear_reason(notebook_server):
    async with (
        NotebookClient(notebook_server.url) as client,
        contextlib.AsyncExitStack() as stack,
    ):
        await client.login("bob")
        for _ in range(5):  # MAX_SESSIONS_PER_USER in the test settings
            kernel = await stack.enter_async_context(
                client.kernel("/notebooks/lab/demo/")
            )
            await kernel.read_until_completed()
        async with client.kernel("/notebooks/lab/demo/") as extra:
            notice = json.loads(await asyncio.wait_for(extra.websocket.recv(), 10))
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await asyncio.wait_for(extra.websocket.recv(), 10)
        assert notice["op"] == "django-notebooks-notice"
        assert notice["data"]["title"] == "Too many open notebook sessions"
        assert closed.value.rcvd.code == 4429
    # Closing sessions frees places again.
    async with NotebookClient(notebook_server.url) as client:
        await client.login("bob")
        async with client.kernel("/notebooks/lab/demo/") as kernel:
            await kernel.read_until_completed()


async def test_oversized_websocket_message_closes_only_that_socket(notebook_server):
    async with NotebookClient(notebook_server.url) as client:
        await client.login("alice")
        async with client.kernel("/notebooks/square/") as kernel:
            await kernel.read_until_completed()
            await kernel.websocket.send("x" * 200_000)
            with pytest.raises(websockets.ConnectionClosed) as closed:
                while True:
                    await asyncio.wait_for(kernel.websocket.recv(), 10)
            assert closed.value.rcvd.code == 4413
        async with client.kernel("/notebooks/square/") as kernel:
            await kernel.read_until_completed()
            assert square_output(kernel.outputs) == ["square=9 user=alice"]


async def test_request_body_over_djangos_limit_is_413(notebook_server):
    async with NotebookClient(notebook_server.url) as client:
        await client.login("alice")
        async with client.kernel("/notebooks/square/") as kernel:
            await kernel.read_until_completed()
            too_big = (
                b'{"objectIds": [], "values": [], "pad": "' + b"x" * 3_000_000 + b'"}'
            )
            response = await client.http.post(
                "/notebooks/square/api/kernel/set_ui_element_value",
                content=too_big,
                headers={
                    "Marimo-Session-Id": kernel.session_id,
                    "Origin": notebook_server.url,
                    "Content-Type": "application/json",
                },
            )
            assert response.status_code == 413
            # The session is unharmed.
            [slider] = kernel.ui_element_ids()
            assert (await kernel.set_ui_value(slider, 2)).status_code == 200


# Caps count kernels, not open pages: a closed tab keeps its kernel for
# session_ttl, so a client that opens and closes sessions in a loop would
# otherwise fill the server. These servers keep closed tabs' kernels for a
# minute, longer than each test, and the tests count the kernel processes
# themselves (the children of the server's fork server).

KEPT_SECONDS = 60
LOOPS = 8
PUBLIC_PAGE = "/notebooks/hello/"
LOGIN_PAGE = "/notebooks/square/"


def _processes() -> dict[int, tuple[int, str]]:
    """Every process of the machine: pid -> (parent pid, state)."""
    found = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue  # it ended meanwhile
        state, parent = stat.rsplit(")", 1)[1].split()[:2]
        found[int(entry.name)] = (int(parent), state)
    return found


def kernels_of(server: LiveServer) -> set[int]:
    """The live kernel processes of ``server``: its kernel host's children;
    zombies have ended."""
    processes = _processes()
    hosts = set(server.kernel_hosts())
    return {
        pid
        for pid, (parent, state) in processes.items()
        if parent in hosts and state != "Z"
    }


@pytest.fixture(params=["daphne", "uvicorn"])
def kernel_capped_server(request, live_db, tmp_path):
    """Start a server, kernels in processes, with the caps a test names:
    ``kernel_capped_server(MAX_SESSIONS=4, ...)``; closed tabs keep their
    kernel KEPT_SECONDS."""
    started = []

    def start(**caps: int) -> LiveServer:
        per_user = caps.pop("MAX_SESSIONS_PER_USER", 20)
        server = LiveServer(
            request.param,
            database_of_its_own(live_db, tmp_path, superuser=False),
            tmp_path / "server.log",
            DJANGO_NOTEBOOKS_TEST_ISOLATION="process",
            DJANGO_NOTEBOOKS_TEST_SESSION_TTL=str(KEPT_SECONDS),
            DJANGO_NOTEBOOKS_TEST_MAX_SESSIONS=str(per_user),
            **{
                f"DJANGO_NOTEBOOKS_TEST_LIMIT_{name}": str(value)
                for name, value in caps.items()
            },
        )
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


async def open_and_close(client: NotebookClient, page: str) -> None:
    """A page that loads, runs its notebook and closes (its tab closed)."""
    async with client.kernel(page) as kernel:
        await kernel.read_until_completed()


async def runs(client: NotebookClient, page: str) -> None:
    """Fails unless a new session of ``page`` opens and runs."""
    async with client.kernel(page) as kernel:
        frames = await kernel.read_until_completed()
    assert not [frame for frame in frames if frame.get("op") == NOTICE], frames


NOTICE = "django-notebooks-notice"


async def test_an_anonymous_visitor_looping_on_sessions_holds_at_most_its_cap_of_kernels(
    kernel_capped_server,
):
    """One client, one visitor cookie, one address: each session it opens
    and closes keeps its kernel, until the visitor's cap ends the oldest."""
    cap = 3
    server = kernel_capped_server(MAX_SESSIONS_PER_USER=cap, MAX_SESSIONS=10)
    held = []
    async with NotebookClient(server.url) as visitor:
        await visitor.http.get(PUBLIC_PAGE)  # its visitor cookie
        for _ in range(LOOPS):
            await open_and_close(visitor, PUBLIC_PAGE)
            held.append(len(kernels_of(server)))
    assert held[:cap] == [1, 2, 3]  # a closed tab's kernel lives on...
    assert max(held) == cap  # ...but never more than the visitor's cap
    async with NotebookClient(server.url) as alice:
        await alice.login("alice")
        await runs(alice, LOGIN_PAGE)


async def test_cookieless_clients_of_one_address_hold_at_most_its_cap_of_kernels(
    kernel_capped_server,
):
    """A client that drops its cookie is a new visitor each time: the oldest
    closed tab of its address makes room."""
    cap = 3
    server = kernel_capped_server(MAX_SESSIONS_PER_ADDRESS=cap, MAX_SESSIONS=10)
    held = []
    for _ in range(LOOPS):
        async with NotebookClient(server.url) as visitor:
            await visitor.http.get(PUBLIC_PAGE)
            await open_and_close(visitor, PUBLIC_PAGE)
        held.append(len(kernels_of(server)))
    assert held[:cap] == [1, 2, 3]
    assert max(held) == cap
    async with NotebookClient(server.url) as alice:
        await alice.login("alice")
        await runs(alice, LOGIN_PAGE)


async def test_anonymous_visitors_together_leave_logged_in_users_their_share(
    kernel_capped_server,
):
    """Anonymous visitors hold at most MAX_ANONYMOUS_SESSIONS kernels; past
    it a visitor is told the notebook is busy for visitors, and logged-in
    users still get in up to MAX_SESSIONS."""
    share, server_cap = 2, 4
    server = kernel_capped_server(
        MAX_ANONYMOUS_SESSIONS=share,
        MAX_SESSIONS=server_cap,
        MAX_SESSIONS_PER_ADDRESS=20,
    )
    held = []
    for _ in range(LOOPS):  # cookie-less, in a loop
        async with NotebookClient(server.url) as visitor:
            await visitor.http.get(PUBLIC_PAGE)
            await open_and_close(visitor, PUBLIC_PAGE)
        held.append(len(kernels_of(server)))
    assert max(held) == share
    async with contextlib.AsyncExitStack() as stack:
        # Visitors whose pages stay open fill the share...
        for _ in range(share):
            visitor = await stack.enter_async_context(NotebookClient(server.url))
            await visitor.http.get(PUBLIC_PAGE)
            kernel = await stack.enter_async_context(visitor.kernel(PUBLIC_PAGE))
            await kernel.read_until_completed()
        late = await stack.enter_async_context(NotebookClient(server.url))
        await late.http.get(PUBLIC_PAGE)
        notice, code = await refusal(
            await stack.enter_async_context(late.kernel(PUBLIC_PAGE))
        )
        assert code == 4429
        assert notice["data"]["title"] == "The notebook is busy"
        assert "logging in may let you in" in notice["data"]["text"]
        # ...and logged-in users have the rest of the server.
        for username in ("alice", "bob"):
            user = await stack.enter_async_context(NotebookClient(server.url))
            await user.login(username)
            kernel = await stack.enter_async_context(user.kernel(LOGIN_PAGE))
            await kernel.read_until_completed()
        assert len(kernels_of(server)) == server_cap


async def test_a_logged_in_user_looping_on_a_login_only_notebook_holds_at_most_their_cap(
    kernel_capped_server,
):
    cap = 3
    server = kernel_capped_server(MAX_SESSIONS_PER_USER=cap, MAX_SESSIONS=cap + 1)
    held = []
    async with NotebookClient(server.url) as bob:
        await bob.login("bob")
        for _ in range(LOOPS):
            await open_and_close(bob, LOGIN_PAGE)
            held.append(len(kernels_of(server)))
    assert held[:cap] == [1, 2, 3]
    assert max(held) == cap
    # The server holds cap + 1: the last place is someone else's.
    async with NotebookClient(server.url) as alice:
        await alice.login("alice")
        await runs(alice, LOGIN_PAGE)


async def test_a_reload_of_an_open_page_is_never_refused(kernel_capped_server):
    """At the user's cap and on a full server, a page reloaded (its socket
    closed, a new session opened at once) replaces its closed session; a
    page opened besides is refused."""
    cap = 2
    server = kernel_capped_server(MAX_SESSIONS_PER_USER=cap, MAX_SESSIONS=cap)
    async with NotebookClient(server.url) as alice:
        await alice.login("alice")
        async with contextlib.AsyncExitStack() as stack:
            other = await stack.enter_async_context(alice.kernel(LOGIN_PAGE))
            await other.read_until_completed()
            page = await stack.enter_async_context(contextlib.AsyncExitStack())
            kernel = await page.enter_async_context(alice.kernel(LOGIN_PAGE))
            await kernel.read_until_completed()
            for _ in range(LOOPS):
                await page.aclose()  # the reload closes the page's socket...
                kernel = await page.enter_async_context(alice.kernel(LOGIN_PAGE))
                frames = await kernel.read_until_completed()  # ...and opens anew
                assert not [f for f in frames if f.get("op") == NOTICE], frames
                assert len(kernels_of(server)) == cap
            notice, code = await refusal(
                await stack.enter_async_context(alice.kernel(LOGIN_PAGE))
            )
            assert notice["data"]["title"] == "Too many open notebook sessions"
            assert code == 4429
            await page.aclose()
