"""Servers stop promptly on SIGTERM even while notebook sessions are open.

marimo's kernel threads are not daemons: without the bridge closing every
session at exit, the interpreter waits for them and the server hangs.
"""

from __future__ import annotations

import pytest

from tests.live import LiveServer, NotebookClient

pytestmark = pytest.mark.asyncio(loop_scope="function")


@pytest.mark.parametrize("kind", ["daphne", "uvicorn"])
async def test_server_exits_within_5s_of_sigterm_with_open_sessions(kind, live_db, tmp_path):
    # A long session TTL: the sessions would outlive the test by far.
    server = LiveServer(kind, live_db, tmp_path / "server.log", DJANGO_NOTEBOOKS_TEST_SESSION_TTL="600")
    try:
        async with NotebookClient(server.url) as client:
            await client.login("alice")
            async with client.kernel("/notebooks/square/") as first, client.kernel("/notebooks/whoami/") as second:
                await first.read_until_completed()
                await second.read_until_completed()
                seconds = server.stop()
    finally:
        server.stop()
    assert seconds < 5, f"{kind} took {seconds:.1f}s to exit:\n{server.log()[-2000:]}"
