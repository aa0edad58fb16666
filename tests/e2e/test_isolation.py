"""Kernels in processes of their own (ISOLATION = "process"), end to end on
real servers: each session's kernel is a process; a runaway cell is
stopped, a memory hog fails alone, a crash ends one session only, and no
kernel process outlives its session or its server.

The notebook (tests/notebooks/misbehave.py) shows its kernel's pid and
loops, blocks, allocates or crashes when its dropdown says so.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sqlite3
import time
from pathlib import Path

import pytest

from tests.live import (
    KernelSession,
    LiveServer,
    NotebookClient,
    database_of_its_own,
    terminate_in_admin,
)

pytestmark = pytest.mark.asyncio(loop_scope="function")

PAGE = "/notebooks/misbehave/"
CELL_TIMEOUT = 2
MEMORY_MB = 256
SESSION_TTL = 3
PID = re.compile(r"kernel pid=(\d+)")
SESSIONS = "/admin/django_notebooks/notebooksession/"
ROW = re.compile(r'name="_selected_action" value="(\d+)"')
NOTICE = "django-notebooks-notice"


def is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie has ended; only its exit status is left for its parent.
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] == "Z")


def priorities(pid: int) -> set[int]:
    """The CPU priorities (nice) of every thread of ``pid``."""
    return {
        os.getpriority(os.PRIO_PROCESS, int(thread))
        for thread in os.listdir(f"/proc/{pid}/task")
    }


def resident_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


async def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.1)


def misbehaving_server(
    kind: str, live_db: Path, folder: Path, **env: str
) -> LiveServer:
    """A server with the misbehaving notebook, kernels in processes, low
    limits, and a database of its own with a superuser (root) for the admin."""
    return LiveServer(
        kind,
        database_of_its_own(live_db, folder, superuser=True),
        folder / "server.log",
        DJANGO_NOTEBOOKS_TEST_MISBEHAVE="1",
        DJANGO_NOTEBOOKS_TEST_ISOLATION="process",
        DJANGO_NOTEBOOKS_TEST_LIMIT_CELL_TIMEOUT=str(CELL_TIMEOUT),
        DJANGO_NOTEBOOKS_TEST_LIMIT_MEMORY_MB=str(MEMORY_MB),
        **env,
    )


@pytest.fixture(scope="module", params=["daphne", "uvicorn"])
def isolated_server(request, live_db, tmp_path_factory):
    folder = tmp_path_factory.mktemp(f"isolation-{request.param}")
    server = misbehaving_server(
        request.param,
        live_db,
        folder,
        DJANGO_NOTEBOOKS_TEST_SESSION_TTL=str(SESSION_TTL),
        DJANGO_NOTEBOOKS_TEST_FAST_PATH="1",
    )
    yield server
    server.stop()


async def frames_until(
    session: KernelSession, wanted, timeout: float = 30
) -> list[dict]:
    """Frames up to the first that ``wanted(frame)`` accepts."""
    frames = []
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        assert left > 0, f"not seen in {timeout}s: {frames[-5:]}"
        frame = json.loads(await asyncio.wait_for(session.websocket.recv(), left))
        frames.append(frame)
        if frame.get("op") == "cell-op":
            data = ((frame.get("data") or {}).get("output") or {}).get("data")
            if isinstance(data, str) and data:
                session.outputs.append(data)
        if wanted(frame):
            return frames


def notice_of(frame: dict) -> dict | None:
    return frame["data"] if frame.get("op") == NOTICE else None


async def started(session: KernelSession) -> int:
    """Run the notebook; its kernel's pid."""
    await session.read_until_completed()
    (pid,) = {int(m) for text in session.outputs for m in PID.findall(text)}
    return pid


async def choose(session: KernelSession, action: str) -> None:
    (dropdown,) = session.ui_element_ids()[-1:]
    response = await session.set_ui_value(dropdown, [action])
    assert response.status_code == 200, response.text


async def test_each_session_has_a_kernel_process_of_its_own(isolated_server):
    async with NotebookClient(isolated_server.url) as client:
        await client.login("alice")
        async with client.kernel(PAGE) as one, client.kernel(PAGE) as two:
            first, second = await started(one), await started(two)
            # Below the server's CPU priority, every thread of it.
            assert priorities(first) == {10}
    assert len({first, second, isolated_server.process.pid}) == 3


async def test_a_runaway_cell_is_interrupted_and_the_session_lives_on(
    isolated_server,
):
    async with NotebookClient(isolated_server.url) as client:
        await client.login("alice")
        async with client.kernel(PAGE) as session:
            pid = await started(session)
            await choose(session, "loop")
            await asyncio.sleep(1.5)
            # Running for a while: at the lowest priority, for good (on
            # Linux a thread's; the cell runs on marimo's kernel thread).
            assert priorities(pid) == {19}
            frames = await frames_until(session, notice_of)
            notice = notice_of(frames[-1])
            assert notice["text"] == (
                f"This cell ran longer than {CELL_TIMEOUT} seconds and was stopped."
            )
            assert notice["final"] is False
            await frames_until(session, lambda f: f.get("op") == "completed-run")
            # The same kernel runs the next change.
            await choose(session, "nothing")
            await frames_until(
                session, lambda f: "done nothing" in json.dumps(f), timeout=10
            )
            assert is_alive(pid)


async def test_a_cell_that_ignores_the_interrupt_ends_its_kernel(isolated_server):
    async with NotebookClient(isolated_server.url) as client:
        await client.login("alice")
        async with client.kernel(PAGE) as session:
            pid = await started(session)
            await choose(session, "sleep")  # time.sleep() ends before Python runs
            frames = await frames_until(
                session, lambda f: (notice_of(f) or {}).get("final") is True
            )
            notice = notice_of(frames[-1])
            assert notice["title"] == "Notebook stopped"
            assert f"ran longer than {CELL_TIMEOUT} seconds" in notice["text"]
            assert "Reload the page" in notice["text"]
            await wait_for(lambda: not is_alive(pid), 5, "the kernel lives on")


async def test_a_memory_hog_fails_alone(isolated_server):
    server_before = resident_mb(isolated_server.process.pid)
    async with NotebookClient(isolated_server.url) as client:
        await client.login("alice")
        async with client.kernel(PAGE) as session:
            pid = await started(session)
            await choose(session, "allocate")  # 4 GB, over MEMORY_MB
            frames = await frames_until(session, notice_of)
            notice = notice_of(frames[-1])
            assert notice["title"] == "Out of memory"
            assert notice["final"] is False
            await frames_until(session, lambda f: f.get("op") == "completed-run")
            assert is_alive(pid)
            assert resident_mb(pid) < MEMORY_MB + 200
    assert resident_mb(isolated_server.process.pid) < server_before + 100


async def test_a_crash_ends_that_session_only(isolated_server):
    async with (
        NotebookClient(isolated_server.url) as alice,
        NotebookClient(isolated_server.url) as bob,
    ):
        await alice.login("alice")
        await bob.login("bob")
        async with alice.kernel(PAGE) as crashing, bob.kernel(PAGE) as other:
            crashed_pid = await started(crashing)
            await started(other)
            await choose(crashing, "crash")
            frames = await frames_until(crashing, notice_of)
            notice = notice_of(frames[-1])
            assert notice["title"] == "Notebook stopped"
            assert "stopped unexpectedly" in notice["text"]
            await wait_for(lambda: not is_alive(crashed_pid), 5, "crashed pid")
            # Bob's session of the same notebook, and Django's pages, go on.
            await choose(other, "nothing")
            await frames_until(
                other, lambda f: "done nothing" in json.dumps(f), timeout=10
            )
            assert (await bob.http.get("/notebooks/")).status_code == 200


async def test_the_admin_shows_each_kernel_process_and_terminate_ends_it(
    isolated_server,
):
    async with (
        NotebookClient(isolated_server.url) as root,
        NotebookClient(isolated_server.url) as alice,
    ):
        await root.login("root", "root-pw")
        await alice.login("alice")
        async with alice.kernel(PAGE) as session:
            pid = await started(session)
            await choose(session, "loop")  # something for the CPU figure
            await asyncio.sleep(1.5)
            listing = await root.http.get(f"{SESSIONS}?q={session.session_id}")
            assert listing.status_code == 200
            shown = re.search(rf"pid {pid} · ([\d.]+) s CPU · (\d+) MB", listing.text)
            assert shown, listing.text[-3000:]
            assert float(shown[1]) >= 0.5  # it has been looping
            assert 0 < int(shown[2]) < MEMORY_MB + 200
            (row,) = ROW.findall(listing.text)
            await terminate_in_admin(root, SESSIONS, row)
            frames = await frames_until(session, notice_of)
            assert (
                "An administrator ended this session" in notice_of(frames[-1])["text"]
            )
        await wait_for(lambda: not is_alive(pid), 5, "the kernel lives on")


async def test_a_closed_tab_ends_its_kernel_within_the_session_ttl(isolated_server):
    async with NotebookClient(isolated_server.url) as client:
        await client.login("alice")
        async with client.kernel(PAGE) as session:
            pid = await started(session)
        closed = time.monotonic()
        await wait_for(lambda: not is_alive(pid), SESSION_TTL + 5, "kernel lives on")
    assert time.monotonic() - closed >= SESSION_TTL - 0.5  # kept for a reconnect


@pytest.mark.parametrize("kind", ["daphne", "uvicorn"])
@pytest.mark.parametrize(
    "stop_signal", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"]
)
async def test_no_kernel_process_outlives_its_server(
    kind, stop_signal, live_db, tmp_path
):
    # A database of its own: a killed server leaves its session rows behind.
    db_path = database_of_its_own(live_db, tmp_path, superuser=False)
    server = LiveServer(
        kind,
        db_path,
        tmp_path / "server.log",
        DJANGO_NOTEBOOKS_TEST_MISBEHAVE="1",
        DJANGO_NOTEBOOKS_TEST_ISOLATION="process",
        DJANGO_NOTEBOOKS_TEST_SESSION_TTL="600",
    )
    try:
        async with NotebookClient(server.url) as client:
            await client.login("alice")
            async with client.kernel(PAGE) as busy, client.kernel(PAGE) as idle:
                busy_pid, idle_pid = await started(busy), await started(idle)
                await choose(busy, "loop")
                await asyncio.sleep(0.5)
                started_at = time.monotonic()
                server.process.send_signal(stop_signal)
                server.process.wait(timeout=10)
                seconds = time.monotonic() - started_at
    finally:
        server.stop()
    if stop_signal == signal.SIGTERM:
        assert seconds < 5, f"{kind} took {seconds:.1f}s:\n{server.log()[-2000:]}"
        # A server that stopped deleted its session records (it served no
        # page: only kernel websockets).
        with sqlite3.connect(db_path) as db:
            rows = db.execute("SELECT * FROM django_notebooks_notebooksession")
            assert rows.fetchall() == []
    await wait_for(
        lambda: not (is_alive(busy_pid) or is_alive(idle_pid)),
        5,
        f"kernel processes outlived {kind}",
    )
