"""The kernel websocket's flow control, end to end on real servers (daphne
and uvicorn, kernels in processes of their own): a client that floods is
closed, one that does not read is closed, and neither makes the web process
grow; a client that reads (and acknowledges, as the page does) gets every
output, however much the notebook sends.

The notebook (tests/notebooks/outputs.py) sends a number of outputs of a
given size when its inputs change.
"""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path

import pytest
import websockets

from django_notebooks import consumers
from tests.helpers import async_wait_until
from tests.live import KernelSession, LiveServer, NotebookClient

pytestmark = pytest.mark.asyncio(loop_scope="function")

PAGE = "/notebooks/outputs/"
READ_TIMEOUT = 3
SESSION_TTL = 5
WINDOW = 4 * 1024 * 1024  # the default MAX_UNREAD_WEBSOCKET_BYTES
# How much a session may make the web process grow: the window (4 MiB), a
# frame on its way (< 1 MiB), the sockets' buffers and the allocator's
# rounding. Measured: 1.4 to 2.3 MB; 10 MB for a busy machine.
GROWTH_BOUND_MB = 10
# A flood: what Daphne reads and queues before the consumer closes it.
# Measured: 0 to 4.2 MB.
FLOOD_GROWTH_MB = 10
NOT_READING_LOG = "the page read nothing for"
FLOODING_LOG = "sent more frames than a notebook's page does"


def resident_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.fixture(scope="module", params=["daphne", "uvicorn"])
def flow_server(request, live_db, tmp_path_factory):
    folder = tmp_path_factory.mktemp(f"flow-{request.param}")
    server = LiveServer(
        request.param,
        live_db,
        folder / "server.log",
        DJANGO_NOTEBOOKS_TEST_OUTPUTS="1",
        DJANGO_NOTEBOOKS_TEST_ISOLATION="process",
        DJANGO_NOTEBOOKS_TEST_SESSION_TTL=str(SESSION_TTL),
        DJANGO_NOTEBOOKS_TEST_WEBSOCKET_READ_TIMEOUT=str(READ_TIMEOUT),
    )
    yield server
    server.stop()


async def ask_for_outputs(session: KernelSession, count: int, size_kb: int) -> None:
    """Have the notebook send ``count`` outputs of ``size_kb`` KB each."""
    count_id, size_id = session.ui_element_ids()[:2]
    for widget, value in ((size_id, size_kb), (count_id, count)):
        response = await session.set_ui_value(widget, value)
        assert response.status_code == 200, response.text


async def test_a_page_that_reads_gets_every_output_however_many(flow_server):
    count, size_kb = 48, 256  # 12 MB: three times the window
    async with NotebookClient(flow_server.url) as client:
        await client.login("alice")
        async with client.kernel(PAGE) as session:
            await session.read_until_completed()
            await ask_for_outputs(session, count, size_kb)
            seen: set[int] = set()
            deadline = time.monotonic() + 60
            while f"sent {count} outputs" not in " ".join(session.outputs[-1:]):
                assert time.monotonic() < deadline, sorted(seen)[-3:]
                await session.read_until_completed()
                for text in session.outputs:
                    seen.update(
                        int(n) for n in re.findall(rf"output (\d+) of {count}\b", text)
                    )
    assert seen == set(range(1, count + 1))


@pytest.mark.parametrize("frame_size", [10, 60 * 1024])
async def test_a_flooding_client_is_closed_and_the_server_does_not_grow(
    flow_server, frame_size
):
    pid = flow_server.process.pid
    frame = b"x" * frame_size
    async with NotebookClient(flow_server.url) as client:
        await client.login("alice")
        async with client.kernel(PAGE) as session:
            await session.read_until_completed()
            before = resident_mb(pid)
            sent = 0
            deadline = time.monotonic() + 20
            with pytest.raises(websockets.ConnectionClosed) as closed:
                while time.monotonic() < deadline:
                    await session.websocket.send(frame)
                    sent += 1
                    await asyncio.sleep(0)  # let the client read the close
            after = resident_mb(pid)
    print(
        f"flood of {frame_size} B frames: sent {sent}, RSS {before:.1f} -> {after:.1f} MB"
    )
    assert closed.value.rcvd is not None, "closed without a close frame"
    assert closed.value.rcvd.code == consumers.CLOSE_FLOODED
    assert after - before < FLOOD_GROWTH_MB
    assert FLOODING_LOG in flow_server.log()


async def test_a_client_that_does_not_read_is_closed_and_the_server_does_not_grow(
    flow_server,
):
    pid = flow_server.process.pid
    count, size_kb = 300, 900  # 270 MB; Daphne sends no frame over 1 MiB
    async with NotebookClient(flow_server.url) as client:
        await client.login("alice")
        async with client.kernel(PAGE) as session:
            await session.read_until_completed()
            before = peak = resident_mb(pid)
            log_before = len(flow_server.log())
            await ask_for_outputs(session, count, size_kb)

            def closed_for_not_reading() -> bool:
                nonlocal peak
                peak = max(peak, resident_mb(pid))
                return NOT_READING_LOG in flow_server.log()[log_before:]

            started = time.monotonic()
            await async_wait_until(
                closed_for_not_reading,
                READ_TIMEOUT + 30,
                "the server did not close the websocket of a client that reads nothing",
                interval=0.1,
            )
            took = time.monotonic() - started
            # What reached this client before the close: the window and
            # what the sockets' buffers held, not the 270 MB.
            received = 0
            with pytest.raises(websockets.ConnectionClosed) as closed:
                while True:
                    received += len(
                        await asyncio.wait_for(session.websocket.recv(), 30)
                    )
            after = resident_mb(pid)
    print(
        f"not reading: closed after {took:.1f} s, RSS {before:.1f} -> peak "
        f"{peak:.1f} -> {after:.1f} MB, received {received / 2**20:.1f} MB"
    )
    assert peak - before < GROWTH_BOUND_MB
    assert received < WINDOW + 16 * 2**20
    # The close frame reaches a client that reads again in time (Daphne
    # gives up on the closing handshake after a second, then drops it).
    if closed.value.rcvd is not None:
        assert closed.value.rcvd.code == consumers.CLOSE_NOT_READING
