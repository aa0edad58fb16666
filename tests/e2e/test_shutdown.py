"""Servers stop promptly on SIGTERM even while notebook sessions are open.

marimo's kernel threads are not daemons: without the bridge closing every
session at exit, the interpreter waits for them and the server hangs.
"""

from __future__ import annotations

import signal

import pytest

from tests.live import LiveServer, NotebookClient

pytestmark = pytest.mark.asyncio(loop_scope="function")


@pytest.mark.parametrize("attempt", range(3))
@pytest.mark.parametrize("kind", ["daphne", "uvicorn"])
async def test_server_exits_within_5s_of_sigterm_with_open_sessions(
    kind, attempt, live_db, tmp_path
):
    # A long session TTL: the sessions would outlive the test by far.
    server = LiveServer(
        kind, live_db, tmp_path / "server.log", DJANGO_NOTEBOOKS_TEST_SESSION_TTL="600"
    )
    try:
        async with NotebookClient(server.url) as client:
            await client.login("alice")
            async with (
                client.kernel("/notebooks/square/") as first,
                client.kernel("/notebooks/whoami/") as second,
            ):
                await first.read_until_completed()
                await second.read_until_completed()
                seconds = server.stop()
    finally:
        server.stop()
    assert seconds < 5, f"{kind} took {seconds:.1f}s to exit:\n{server.log()[-2000:]}"
    # A crash at exit (e.g. a segfault while tearing down kernel threads) is
    # not a clean stop.
    # uvicorn re-raises the SIGTERM it handled once it has shut down cleanly.
    clean = {0, -signal.SIGTERM} if kind == "uvicorn" else {0}
    assert server.returncode in clean, (
        f"{kind} exited with {server.returncode}:\n{server.log()[-3000:]}"
    )
    assert "Error" not in server.log(), server.log()[-3000:]
