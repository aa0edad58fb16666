"""Kernels in processes of their own (ISOLATION = "process"), end to end on
real servers: each session's kernel is a process group of its own; a
runaway cell is stopped, memory past MEMORY_MB fails alone however it is
taken, a crash ends one session only, a kernel that stops answering is
told and ended, and nothing a cell starts outlives its session, its kernel
or its server.

The notebook (tests/notebooks/misbehave.py) shows its kernel's pid and
loops, blocks, allocates, starts processes or a thread, prints or crashes
when its dropdown says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import sqlite3
import time
from pathlib import Path

import pytest
import websockets

from django_notebooks.kernels import cgroups
from tests.live import (
    KernelSession,
    LiveServer,
    NotebookClient,
    database_of_its_own,
    process_title,
    terminate_in_admin,
)

pytestmark = pytest.mark.asyncio(loop_scope="function")

PAGE = "/notebooks/misbehave/"
CELL_TIMEOUT = 2
MEMORY_MB = 256
SESSION_TTL = 10
# limits.call_deadline() for CELL_TIMEOUT: how long a call waits for a
# kernel that does not answer, and how long such a kernel lives on.
DEADLINE = CELL_TIMEOUT + 5 + 5
PID = re.compile(r"kernel pid=(\d+)")
STARTED = re.compile(r"children=([\d,]+) setsid=(\d+)")
SESSIONS = "/admin/django_notebooks/notebooksession/"
ROW = re.compile(r'name="_selected_action" value="(\d+)"')
NOTICE = "django-notebooks-notice"


def is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:  # gone, or going while it is read
        return False
    # A zombie has ended; only its exit status is left for its parent.
    return state != "Z"


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


def fork_server_of(server: LiveServer) -> int:
    (pid,) = server.kernel_hosts()
    return pid


def sockets_folder_of(fork_server: int) -> Path | None:
    """The folder of a fork server's kernels' sockets, once it is ready."""
    for folder in Path("/tmp").glob("django-notebooks-*"):
        owner = folder / "fork-server.pid"
        with contextlib.suppress(OSError):
            if owner.read_text() == str(fork_server):
                return folder
    return None


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


async def warmed(server: LiveServer) -> LiveServer:
    """``server`` once its kernel host is ready (its sockets' folder made),
    as after a first page view: daphne gives a websocket 5 s to be
    accepted, and a loaded machine may take longer to start the host.
    Stopped if it does not get there."""

    def ready() -> bool:
        hosts = server.kernel_hosts()
        return bool(hosts) and sockets_folder_of(hosts[0]) is not None

    try:
        async with NotebookClient(server.url) as client:
            assert (await client.http.get(PAGE)).status_code == 200
        await wait_for(ready, 60, "the kernel host did not get ready")
    except BaseException:
        server.stop()
        raise
    return server


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
    try:
        asyncio.run(warmed(server))
        yield server
    finally:
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
        frame = await session.recv(left)
        frames.append(frame)
        if frame.get("op") == "cell-op":
            data = ((frame.get("data") or {}).get("output") or {}).get("data")
            if isinstance(data, str) and data:
                session.outputs.append(data)
        if wanted(frame):
            return frames


def notice_of(frame: dict) -> dict | None:
    return frame["data"] if frame.get("op") == NOTICE else None


async def notice_and_run_end(session: KernelSession) -> dict:
    """The next notice, and the end of the run it came in (in either order:
    the notice comes from the fork server, the run's end from marimo)."""
    notice, ended = None, False

    def both(frame: dict) -> bool:
        nonlocal notice, ended
        notice = notice or notice_of(frame)
        ended = ended or frame.get("op") == "completed-run"
        return notice is not None and ended

    await frames_until(session, both)
    assert notice is not None
    return notice


async def next_notice(session: KernelSession, timeout: float = 30) -> dict:
    frames = await frames_until(session, notice_of, timeout)
    notice = notice_of(frames[-1])
    assert notice is not None
    return notice


async def started(session: KernelSession) -> int:
    """Run the notebook; its kernel's pid."""
    await session.read_until_completed()
    (pid,) = {int(m) for text in session.outputs for m in PID.findall(text)}
    return pid


async def choose(session: KernelSession, action: str) -> None:
    (dropdown,) = session.ui_element_ids()[-1:]
    response = await session.set_ui_value(dropdown, [action])
    assert response.status_code == 200, response.text


async def done(session: KernelSession, action: str, timeout: float = 30) -> None:
    await frames_until(
        session, lambda f: f"done {action}" in json.dumps(f), timeout=timeout
    )


async def spawned(session: KernelSession) -> tuple[list[int], int]:
    """Start the notebook's child processes: those in its group (a
    subprocess, a multiprocessing Process, a ProcessPoolExecutor worker),
    and one that left the group (setsid)."""
    await choose(session, "spawn")
    await done(session, "spawn")
    (found,) = {m for text in session.outputs for m in STARTED.findall(text)}
    return [int(pid) for pid in found[0].split(",")], int(found[1])


def log_lines(server: LiveServer, *words: str) -> list[str]:
    return [line for line in server.log().splitlines() if all(w in line for w in words)]


async def logged(server: LiveServer, *words: str) -> str:
    """The one line of the server's log with ``words`` (it may come a moment
    after what it tells of)."""
    await wait_for(lambda: log_lines(server, *words), 10, f"not logged: {words}")
    (line,) = log_lines(server, *words)
    return line


async def test_each_session_is_a_process_group_of_its_own_named_for_ps(
    isolated_server,
):
    async with NotebookClient(isolated_server.url) as client:
        await client.login("alice")
        async with client.kernel(PAGE) as one, client.kernel(PAGE) as two:
            first, second = await started(one), await started(two)
            assert os.getpgid(first) == first and os.getpgid(second) == second
            assert process_title(first).startswith(
                f"django-notebooks kernel misbehave {one.session_id}"
            )
            # Below the server's CPU priority, every thread of it.
            assert priorities(first) == {10}
    assert len({first, second, isolated_server.process.pid}) == 3


async def test_a_runaway_cell_is_stopped_and_the_session_lives_on(isolated_server):
    async with NotebookClient(isolated_server.url) as client:
        await client.login("alice")
        async with client.kernel(PAGE) as session:
            pid = await started(session)
            await choose(session, "loop")
            await asyncio.sleep(1.5)
            # Running for a while: at the lowest priority, for good (on
            # Linux a thread's; the cell runs on marimo's kernel thread).
            assert priorities(pid) == {19}
            stopping = await next_notice(session)
            assert stopping["title"] == "Stopping a long calculation"
            assert f"longer than {CELL_TIMEOUT} seconds" in stopping["text"]
            assert stopping["final"] is False
            stopped = await next_notice(session)
            assert stopped["title"] == "Calculation stopped"
            assert "The rest of the notebook still works." in stopped["text"]
            assert stopped["final"] is False
            # The same kernel runs the next change.
            await choose(session, "nothing")
            await done(session, "nothing", timeout=10)
            assert is_alive(pid)


async def test_a_cell_stuck_in_c_is_said_to_be_stopping_until_its_kernel_ends(
    isolated_server,
):
    async with NotebookClient(isolated_server.url) as client:
        await client.login("alice")
        async with client.kernel(PAGE) as session:
            pid = await started(session)
            await choose(session, "sleep")  # time.sleep() ends before Python runs
            stopping = await next_notice(session)
            assert stopping["title"] == "Stopping a long calculation"
            ended = await next_notice(session, timeout=CELL_TIMEOUT + 15)
            assert ended["title"] == "Notebook stopped" and ended["final"] is True
            assert "could not be stopped" in ended["text"]
            await wait_for(lambda: not is_alive(pid), 5, "the kernel lives on")
    line = await logged(isolated_server, f"pid {pid})", "ended")
    assert "notebook misbehave" in line and "user alice" in line
    assert "a cell ran past CELL_TIMEOUT" in line


@pytest.mark.parametrize("action", ["allocate", "mmap", "shm"])
async def test_memory_past_memory_mb_fails_alone_however_it_is_taken(
    isolated_server, action
):
    server_before = resident_mb(isolated_server.process.pid)
    async with NotebookClient(isolated_server.url) as client:
        await client.login("alice")
        async with client.kernel(PAGE) as session:
            pid = await started(session)
            await choose(session, action)  # 4 GB or 1 GB, over MEMORY_MB
            notice = await notice_and_run_end(session)
            assert notice["title"] == "Not enough memory"
            assert notice["final"] is False
            assert is_alive(pid)
            assert resident_mb(pid) < MEMORY_MB + 200
            await choose(session, "nothing")
            await done(session, "nothing", timeout=10)
    assert resident_mb(isolated_server.process.pid) < server_before + 100


async def test_a_crash_ends_that_session_only_and_is_logged(isolated_server):
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
            notice = await next_notice(crashing)
            assert notice["title"] == "Notebook stopped"
            assert "stopped unexpectedly" in notice["text"]
            await wait_for(lambda: not is_alive(crashed_pid), 5, "crashed pid")
            # Bob's session of the same notebook, and Django's pages, go on.
            await choose(other, "nothing")
            await done(other, "nothing", timeout=10)
            assert (await bob.http.get("/notebooks/")).status_code == 200
    line = await logged(isolated_server, f"pid {crashed_pid})", "ended")
    assert "it crashed (killed by signal SIGKILL)" in line
    assert "notebook misbehave" in line and "user alice" in line


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
            notice = await frames_until(
                session,
                lambda f: (
                    "An administrator ended" in (notice_of(f) or {}).get("text", "")
                ),
            )
            assert notice
        await wait_for(lambda: not is_alive(pid), 5, "the kernel lives on")


async def test_a_closed_tab_ends_its_kernel_within_the_session_ttl(isolated_server):
    async with NotebookClient(isolated_server.url) as client:
        await client.login("alice")
        async with client.kernel(PAGE) as session:
            pid = await started(session)
        closed = time.monotonic()
        await wait_for(lambda: not is_alive(pid), SESSION_TTL + 5, "kernel lives on")
    assert time.monotonic() - closed >= SESSION_TTL - 0.5  # kept for a reconnect


async def test_a_cell_is_timed_with_its_tab_closed(isolated_server):
    async with NotebookClient(isolated_server.url) as client:
        await client.login("alice")
        async with client.kernel(PAGE) as session:
            pid = await started(session)
            await choose(session, "sleep")
        # The kernel times its own cell: it is ended at CELL_TIMEOUT and
        # its grace, long before session_ttl would end it.
        closed = time.monotonic()
        await wait_for(lambda: not is_alive(pid), SESSION_TTL, "kernel lives on")
        assert time.monotonic() - closed < SESSION_TTL - 1
    line = await logged(isolated_server, f"pid {pid})", "ended")
    assert "a cell ran past CELL_TIMEOUT" in line


@pytest.mark.parametrize("ending", ["closed tab", "cell timeout"])
async def test_what_a_cell_starts_ends_with_its_session(isolated_server, ending):
    async with NotebookClient(isolated_server.url) as client:
        await client.login("alice")
        async with client.kernel(PAGE) as session:
            pid = await started(session)
            grouped, left_its_group = await spawned(session)
            assert len(grouped) == 3
            assert all(
                is_alive(child) and os.getpgid(child) == pid for child in grouped
            )
            assert os.getpgid(left_its_group) == left_its_group
            assert "started by a cell of misbehave" in process_title(grouped[1])
            if ending == "cell timeout":
                await choose(session, "sleep")  # ended at CELL_TIMEOUT + grace
                await next_notice(session)
                await next_notice(session, timeout=CELL_TIMEOUT + 15)
        await wait_for(lambda: not is_alive(pid), SESSION_TTL + 5, "kernel lives on")
        await wait_for(
            lambda: not any(is_alive(child) for child in grouped),
            5,
            "what a cell started outlived its kernel",
        )
        if cgroups.mechanisms().containment == cgroups.CGROUPS:
            # A cgroup holds even what left the kernel's process group.
            await wait_for(lambda: not is_alive(left_its_group), 5, "setsid child")
        else:  # docs/topics/isolation.md says it may escape
            os.kill(left_its_group, signal.SIGKILL)


async def test_a_thread_a_cell_left_running_is_demoted(isolated_server):
    async with NotebookClient(isolated_server.url) as client:
        await client.login("alice")
        async with client.kernel(PAGE) as session:
            pid = await started(session)
            assert priorities(pid) == {10}
            await choose(session, "thread")  # the cell ends, its thread spins
            await done(session, "thread")
            await wait_for(lambda: priorities(pid) == {19}, 20, "not demoted")


async def test_a_kernel_that_stops_answering_is_told_then_ended(isolated_server):
    async with (
        NotebookClient(isolated_server.url) as alice,
        NotebookClient(isolated_server.url) as bob,
    ):
        await alice.login("alice")
        await bob.login("bob")
        async with alice.kernel(PAGE) as session:
            pid = await started(session)
            (dropdown,) = session.ui_element_ids()[-1:]
            os.kill(pid, signal.SIGSTOP)
            try:
                # Someone else's session id alone reaches no kernel: the page,
                # health and marimo's files answer at once, stopped kernel or
                # not.
                for path in ("", "health", "favicon.ico"):
                    answer = await bob.http.get(
                        PAGE + path,
                        headers={"Marimo-Session-Id": session.session_id},
                        timeout=5,
                    )
                    assert answer.status_code in (200, 404), (path, answer.status_code)
                asked = time.monotonic()
                response = await session.set_ui_value(dropdown, ["nothing"])
                waited = time.monotonic() - asked
                assert response.status_code == 504
                assert "not responding" in response.json()["error"]
                assert DEADLINE - 1 <= waited < DEADLINE + 10
                told = await next_notice(session)
                assert told["title"] == "The notebook is not responding"
                assert told["final"] is False
                ended = await next_notice(session, timeout=DEADLINE + 10)
                assert ended["final"] is True
                assert "stopped responding" in ended["text"]
                await wait_for(lambda: not is_alive(pid), 5, "the kernel lives on")
            finally:
                if is_alive(pid):
                    os.kill(pid, signal.SIGKILL)
    line = await logged(isolated_server, f"pid {pid})", "ended")
    assert "it stopped answering" in line


async def test_notebook_output_stays_out_of_the_log(isolated_server):
    async with NotebookClient(isolated_server.url) as client:
        await client.login("alice")
        async with client.kernel(PAGE) as session:
            await started(session)
            await choose(session, "print")
            await done(session, "print")
    assert log_lines(isolated_server, "notebook output line") == []


# Servers of a test's own: they are killed, or lose their fork server.


@pytest.mark.parametrize("kind", ["daphne", "uvicorn"])
@pytest.mark.parametrize(
    "stop_signal", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"]
)
async def test_nothing_of_a_kernel_outlives_its_server(
    kind, stop_signal, live_db, tmp_path
):
    # A database of its own: a killed server leaves its session rows behind.
    db_path = database_of_its_own(live_db, tmp_path, superuser=False)
    server = await warmed(
        LiveServer(
            kind,
            db_path,
            tmp_path / "server.log",
            DJANGO_NOTEBOOKS_TEST_MISBEHAVE="1",
            DJANGO_NOTEBOOKS_TEST_ISOLATION="process",
            DJANGO_NOTEBOOKS_TEST_SESSION_TTL="600",
        )
    )
    sockets = sockets_folder_of(fork_server_of(server))
    assert sockets is not None
    try:
        async with NotebookClient(server.url) as client:
            await client.login("alice")
            async with client.kernel(PAGE) as busy, client.kernel(PAGE) as idle:
                busy_pid, idle_pid = await started(busy), await started(idle)
                grouped, left_its_group = await spawned(idle)
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
        lambda: not any(is_alive(pid) for pid in [busy_pid, idle_pid, *grouped]),
        5,
        f"kernel processes, or what they started, outlived {kind}",
    )
    await wait_for(lambda: not sockets.exists(), 5, "the sockets' folder stayed")
    if cgroups.mechanisms().containment == cgroups.CGROUPS:
        await wait_for(lambda: not is_alive(left_its_group), 5, "setsid child")
    elif is_alive(left_its_group):
        os.kill(left_its_group, signal.SIGKILL)


@pytest.mark.parametrize("kind", ["daphne", "uvicorn"])
async def test_a_fork_server_that_dies_is_replaced_and_its_pages_told(
    kind, live_db, tmp_path
):
    server = await warmed(
        misbehaving_server(
            kind,
            live_db,
            tmp_path,
            DJANGO_NOTEBOOKS_TEST_LOG_OUTPUT="1",
            DJANGO_NOTEBOOKS_TEST_FAST_PATH="1",
        )
    )
    try:
        async with NotebookClient(server.url) as client:
            await client.login("alice")
            async with client.kernel(PAGE) as session:
                pid = await started(session)
                # LOG_NOTEBOOK_OUTPUT: what it prints is in the log, bounded.
                await choose(session, "print")
                await done(session, "print")
                await wait_for(
                    lambda: log_lines(server, "left out of the log"), 10, "no count"
                )
                printed = log_lines(
                    server, f"[misbehave {session.session_id}]", "notebook output line"
                )
                # 200 lines printed at once: 20 a second (the burst may span
                # the turn of a second), the rest counted.
                assert 20 <= len(printed) <= 40
                first = fork_server_of(server)
                os.kill(first, signal.SIGKILL)
                try:
                    notice = await next_notice(session)
                except websockets.ConnectionClosed as closed:
                    pytest.fail(
                        f"closed without a notice ({closed}):\n{server.log()[-4000:]}"
                    )
                assert notice["final"] is True
                await wait_for(lambda: not is_alive(pid), 5, "kernel outlived it")
            # A new session gets a kernel of a new fork server, never a
            # thread of the web server.
            async with client.kernel(PAGE) as again:
                new_pid = await started(again)
                assert new_pid != server.process.pid
                assert fork_server_of(server) != first
                assert process_title(new_pid).startswith("django-notebooks kernel")
    finally:
        server.stop()
    assert log_lines(server, "kernel host", "stopped")
