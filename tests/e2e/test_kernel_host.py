"""The machine's kernel host, with real servers (daphne and uvicorn): it
outlives a restart of the web server, and the page that was open goes on
with its own kernel, as it was; it ends its kernels after its grace period
with no web server; web servers of one project on one machine share it; a
change of code starts a new host for new sessions while the old sessions go
on; and it takes connections from its own user only; and any web server of the
machine answers any kernel call of it, straight to the kernel."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from django_notebooks import notices
from django_notebooks.kernels import wire
from tests.e2e.test_isolation import is_alive, wait_for
from tests.live import (
    ROOT,
    KernelSession,
    LiveServer,
    NotebookClient,
    database_of_its_own,
    end_kernel_host,
    process_title,
    server_env,
    square_output,
)

pytestmark = pytest.mark.e2e

PAGE = "/notebooks/kept/"
SQUARE = "/notebooks/square/"
NOTICE = notices.OP
GRACE = 30
# A file of an installed app (the test project's): changing its modification
# time is a deploy of new code, as far as the kernel host can tell.
APP_FILE = ROOT / "tests" / "access_rules.py"


def start(kind: str, db_path: Path, log_path: Path, **env: str) -> LiveServer:
    port = env.pop("port", None)
    return LiveServer(
        kind,
        db_path,
        log_path,
        port=int(port) if port else None,
        DJANGO_NOTEBOOKS_TEST_KEPT="1",
        DJANGO_NOTEBOOKS_TEST_ISOLATION="process",
        DJANGO_NOTEBOOKS_TEST_SESSION_TTL="600",
        **{"DJANGO_NOTEBOOKS_TEST_HOST_GRACE": str(GRACE), **env},
    )


def kernel_codes(db_path: Path) -> dict[str, str]:
    """The code each recorded session's kernel runs, by session id."""
    with sqlite3.connect(db_path) as db:
        rows = db.execute(
            "SELECT session_id, kernel_code FROM django_notebooks_notebooksession"
        ).fetchall()
    return {session_id: code for session_id, code in rows if code}


def parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


@pytest.fixture
def hosts():
    """The kernel hosts a test found (they outlive their web servers): ended
    at its end."""
    found: set[int] = set()
    yield found
    for pid in found:
        end_kernel_host(pid)


async def opened(session: KernelSession) -> tuple[str, str, int]:
    """Run the notebook: its two sliders' ids and its kernel's pid."""
    await session.read_until_completed()
    kept, moved = session.ui_element_ids()
    (pid,) = re.findall(r"pid=(\d+)", output_of(session))
    return kept, moved, int(pid)


def output_of(session: KernelSession) -> str:
    return next(text for text in reversed(session.outputs) if "kept=" in text)


async def output_with(session: KernelSession, words: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while words not in "".join(session.outputs[-3:]):
        left = deadline - time.monotonic()
        assert left > 0, f"no output with {words!r}: {session.outputs[-3:]}"
        frame = await session.recv(left)
        if frame.get("op") == "cell-op":
            data = ((frame.get("data") or {}).get("output") or {}).get("data")
            if isinstance(data, str) and data:
                session.outputs.append(data)


async def move(session: KernelSession, widget: str, value: int) -> None:
    response = await session.set_ui_value(widget, value)
    assert response.status_code == 200, response.text


async def reconnected(session: KernelSession) -> list[str]:
    """The ops marimo sends a page that reconnects, up to ``reconnected``
    (a new kernel would say ``kernel-ready`` instead)."""
    ops = []
    while "reconnected" not in ops:
        frame = await session.recv(30)
        ops.append(frame.get("op"))
        assert frame.get("op") != "kernel-ready", f"a new kernel: {ops}"
    return ops


@pytest.mark.parametrize("kind", ["daphne", "uvicorn"])
async def test_a_restart_keeps_the_page_on_its_own_kernel_as_it_was(
    kind, live_db, tmp_path, hosts
):
    db_path = database_of_its_own(live_db, tmp_path, superuser=False)
    server = start(kind, db_path, tmp_path / "first.log")
    again = None
    try:
        async with (
            NotebookClient(server.url) as alice,
            NotebookClient(server.url) as bob,
        ):
            await alice.login("alice")
            await bob.login("bob")
            async with alice.kernel(PAGE) as session:
                kept, moved, pid = await opened(session)
                await move(session, kept, 7)
                await output_with(session, "kept=7 moved=1")
                hosts.update(server.kernel_hosts())
                assert parent_of(pid) in hosts
                server.stop()
            again = start(kind, db_path, tmp_path / "again.log", port=str(server.port))
            # Another login naming the session gets nothing of it, and
            # does not end it.
            async with bob.kernel(PAGE, session.session_id) as stranger:
                with pytest.raises(Exception):  # noqa: B017 (closed either way)
                    while True:
                        frame = await stranger.recv(30)
                        assert frame.get("op") != "kernel-ready"
            assert is_alive(pid)
            async with alice.kernel(PAGE, session.session_id) as back:
                await reconnected(back)
                await move(back, moved, 5)
                # The same process, with the value chosen before the restart.
                await output_with(back, f"kept=7 moved=5 pid={pid}")
    finally:
        server.stop()
        if again is not None:
            again.stop()


async def test_the_host_ends_its_kernels_after_its_grace_period(
    live_db, tmp_path, hosts
):
    server = start(
        "uvicorn",
        live_db,
        tmp_path / "server.log",
        DJANGO_NOTEBOOKS_TEST_HOST_GRACE="2",
    )
    try:
        async with NotebookClient(server.url) as alice:
            await alice.login("alice")
            async with alice.kernel(PAGE) as session:
                *_, pid = await opened(session)
                hosts.update(server.kernel_hosts())
                server.stop()
        assert is_alive(pid)  # kept, for the grace period
        await wait_for(
            lambda: not any(is_alive(p) for p in [pid, *hosts]),
            2 + 10,
            "the host and its kernel outlived the grace period",
        )
    finally:
        server.stop()


async def test_servers_of_one_project_share_one_host(live_db, tmp_path, hosts):
    first = start("daphne", live_db, tmp_path / "first.log")
    second = start("uvicorn", live_db, tmp_path / "second.log")
    try:
        async with NotebookClient(first.url) as one, NotebookClient(second.url) as two:
            await one.login("alice")
            await two.login("bob")
            async with one.kernel(PAGE) as on_first, two.kernel(PAGE) as on_second:
                *_, first_pid = await opened(on_first)
                *_, second_pid = await opened(on_second)
                hosts.update(first.kernel_hosts(), second.kernel_hosts())
                assert len(hosts) == 1
                assert parent_of(first_pid) == parent_of(second_pid) in hosts
                # One server stopping ends none of the other's sessions,
                # whatever the grace period.
                first.stop()
                moved = on_second.ui_element_ids()[1]
                await move(on_second, moved, 4)
                await output_with(on_second, f"moved=4 pid={second_pid}")
    finally:
        first.stop()
        second.stop()


async def test_new_code_runs_in_a_new_host_while_old_sessions_go_on(
    live_db, tmp_path, hosts
):
    db_path = database_of_its_own(live_db, tmp_path, superuser=False)
    server = start("uvicorn", db_path, tmp_path / "first.log")
    again = None
    modified = APP_FILE.stat()
    try:
        async with NotebookClient(server.url) as alice:
            await alice.login("alice")
            async with alice.kernel(PAGE) as old:
                kept, moved, old_pid = await opened(old)
                await move(old, kept, 8)
                await output_with(old, "kept=8")
                hosts.update(server.kernel_hosts())
                server.stop()
            os.utime(APP_FILE, ns=(modified.st_atime_ns, modified.st_mtime_ns + 10**9))
            again = start(
                "uvicorn", db_path, tmp_path / "again.log", port=str(server.port)
            )
            async with alice.kernel(PAGE) as new:
                *_, new_pid = await opened(new)
                hosts.update(again.kernel_hosts())
                assert parent_of(new_pid) != parent_of(old_pid)
                assert len(hosts) == 2
                async with alice.kernel(PAGE, old.session_id) as back:
                    await reconnected(back)
                    await move(back, moved, 2)
                    await output_with(back, f"kept=8 moved=2 pid={old_pid}")
                    # The admin tells the old code from the new.
                    await wait_for(
                        lambda: len(set(kernel_codes(db_path).values())) == 2,
                        10,
                        "the records do not say which code each kernel runs",
                    )
    finally:
        os.utime(APP_FILE, ns=(modified.st_atime_ns, modified.st_mtime_ns))
        server.stop()
        if again is not None:
            again.stop()


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to connect as another user")
def test_the_host_takes_connections_from_its_own_user_only():
    # A folder every user may reach (pytest's are private to root).
    folder = Path(tempfile.mkdtemp(prefix="django-notebooks-test-"))
    folder.chmod(0o755)
    path = folder / "host.sock"
    host = subprocess.Popen(
        [sys.executable, "-m", "django_notebooks.kernels.forkserver", str(path)],
        cwd=ROOT,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings"},
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not path.exists():
            assert time.monotonic() < deadline and host.poll() is None
            time.sleep(0.05)
        path.chmod(0o777)  # only the host's own check stands in the way
        other_user = subprocess.run(
            [sys.executable, "-c", CONNECT_AS_NOBODY, str(path)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert other_user.stdout.strip() == "closed", other_user
        with socket.socket(socket.AF_UNIX) as own:
            own.connect(str(path))
            own.settimeout(60)
            (ready,) = wire.receiver(own)() or [None]
            assert isinstance(ready, wire.Ready) and ready.pid == host.pid
    finally:
        host.send_signal(signal.SIGTERM)
        _, errors = host.communicate(timeout=30)
        shutil.rmtree(folder, ignore_errors=True)
    assert "refused a connection from process" in errors


CONNECT_AS_NOBODY = """
import os, socket, sys
os.setgid(65534)
os.setuid(65534)
sock = socket.socket(socket.AF_UNIX)
sock.connect(sys.argv[1])
sock.settimeout(60)
print("closed" if sock.recv(1024) == b"" else "answered")
"""


async def test_any_server_of_the_machine_answers_any_kernel_call_directly(
    live_db, tmp_path, hosts
):
    """No sticky sessions, and no channel layer between the two servers
    (each has its own in-memory one): a kernel call that lands on the server
    not holding the session reaches the session's kernel all the same, for
    its owner only, and notebook code sees the owner as the request's user."""
    holder = start("daphne", live_db, tmp_path / "holder.log")
    other = start("uvicorn", live_db, tmp_path / "other.log")
    try:
        async with (
            NotebookClient(holder.url) as alice,
            NotebookClient(other.url) as alice_elsewhere,
            NotebookClient(other.url) as bob,
        ):
            await alice.login("alice")
            alice_elsewhere.http.cookies.update(alice.http.cookies)
            await bob.login("bob")
            async with alice.kernel(SQUARE) as session:
                await session.read_until_completed()
                [slider] = session.ui_element_ids()
                hosts.update(holder.kernel_hosts())
                for value in (5, 6):
                    response = await alice_elsewhere.post_kernel(
                        SQUARE,
                        "set_ui_element_value",
                        session.session_id,
                        {"objectIds": [slider], "values": [value]},
                    )
                    assert response.status_code == 200, response.text
                    session.outputs.clear()
                    await session.read_until_completed()
                    assert square_output(session.outputs) == [
                        f"square={value**2} user=alice"
                    ]
                stranger = await bob.post_kernel(
                    SQUARE,
                    "set_ui_element_value",
                    session.session_id,
                    {"objectIds": [slider], "values": [9]},
                )
                assert stranger.status_code in (403, 410), stranger.text
                # The session goes on, untouched by the stranger.
                response = await session.set_ui_value(slider, 2)
                assert response.status_code == 200
                session.outputs.clear()
                await session.read_until_completed()
                assert square_output(session.outputs) == ["square=4 user=alice"]
    finally:
        holder.stop()
        other.stop()
    assert "Traceback" not in other.log()


async def notice_of(session: KernelSession) -> dict:
    """The notice the page is sent before its websocket closes."""
    while True:
        frame = await session.recv(30)
        if frame.get("op") == NOTICE:
            return frame["data"]
        assert frame.get("op") != "completed-run", "the session ran"


async def test_the_caps_count_the_machines_kernels_whichever_server_asked(
    live_db, tmp_path, hosts
):
    """Two servers of one project, MAX_SESSIONS = 2 and two sessions a user:
    each server alone is under its caps, the machine is not. A person's
    closed tab on one server makes room for their new session on the other;
    a third open session is refused, on either server."""
    caps = {
        "DJANGO_NOTEBOOKS_TEST_LIMIT_MAX_SESSIONS": "2",
        "DJANGO_NOTEBOOKS_TEST_MAX_SESSIONS": "2",
    }
    # A database of its own: a project of its own, whose kernels are only
    # this test's.
    db_path = database_of_its_own(live_db, tmp_path, superuser=False)
    first = start("daphne", db_path, tmp_path / "first.log", **caps)
    second = start("uvicorn", db_path, tmp_path / "second.log", **caps)
    try:
        async with (
            NotebookClient(first.url) as alice,
            NotebookClient(second.url) as alice_elsewhere,
            NotebookClient(first.url) as bob,
        ):
            await alice.login("alice")
            alice_elsewhere.http.cookies.update(alice.http.cookies)
            await bob.login("bob")
            async with alice.kernel(PAGE) as closed_tab:
                *_, closed_pid = await opened(closed_tab)
            hosts.update(first.kernel_hosts())
            async with alice_elsewhere.kernel(PAGE) as one:
                await opened(one)
                # alice holds two kernels: the closed tab's makes room.
                async with alice_elsewhere.kernel(PAGE) as two:
                    await opened(two)
                    await wait_for(
                        lambda: not is_alive(closed_pid), 10, "no room was made"
                    )
                    # The machine holds MAX_SESSIONS open pages: bob is refused.
                    async with bob.kernel(PAGE) as refused:
                        notice = await notice_of(refused)
                        assert notice["title"] == notices.SERVER_BUSY.title
                        await refused.websocket.wait_closed()
                        assert refused.websocket.close_code == 4429
    finally:
        first.stop()
        second.stop()


async def test_a_new_session_takes_a_spare_kernel_and_a_new_spare_is_made(
    live_db, tmp_path, hosts
):
    # (Spares are the host's: one server kind says it.)
    server = start(
        "uvicorn", live_db, tmp_path / "server.log", DJANGO_NOTEBOOKS_TEST_SPARES="1"
    )
    try:
        async with NotebookClient(server.url) as alice:
            await alice.login("alice")
            async with alice.kernel(PAGE) as first:
                await opened(first)
                hosts.update(server.kernel_hosts())
            # The notebook is in use: one spare waits for its next session,
            # not counted as a session's kernel.
            await wait_for(lambda: len(server.spare_pids("kept")) == 1, 30, "no spare")
            (spare,) = server.spare_pids("kept")
            assert spare not in server.kernel_pids()
            async with alice.kernel(PAGE) as second:
                kept, moved, pid = await opened(second)
                assert pid == spare  # the spare, with its title now a kernel's
                assert process_title(pid).startswith(
                    f"django-notebooks kernel kept {second.session_id}"
                )
                await move(second, kept, 4)
                await output_with(second, f"kept=4 moved=1 pid={pid}")
                # ...and a new spare for the session after.
                await wait_for(
                    lambda: server.spare_pids("kept") not in ([], [spare]),
                    30,
                    "no new spare",
                )
    finally:
        server.stop()


async def test_the_host_as_a_service_of_its_own(live_db, tmp_path):
    """``manage.py notebooks kernel-host`` (a systemd unit, a container):
    the server uses it instead of starting a host, its kernels outlive the
    server however long, and SIGTERM ends it with them."""
    env = server_env(
        live_db,
        DJANGO_NOTEBOOKS_TEST_KEPT="1",
        DJANGO_NOTEBOOKS_TEST_ISOLATION="process",
        DJANGO_NOTEBOOKS_TEST_SESSION_TTL="600",
    )
    service = subprocess.Popen(
        [sys.executable, "-m", "django", "notebooks", "kernel-host"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    server = None
    try:
        assert service.stdout is not None
        said = service.stdout.readline()
        assert said.startswith("Kernel host of this project: "), said
        path = Path(said.split(": ", 1)[1].strip())
        await wait_for(path.exists, 30, "the service does not listen")
        # A second one for the same project and code is refused.
        again = subprocess.run(
            [sys.executable, "-m", "django", "notebooks", "kernel-host"],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert again.returncode == 1
        assert "already runs" in again.stderr
        server = start("uvicorn", live_db, tmp_path / "server.log")
        async with NotebookClient(server.url) as alice:
            await alice.login("alice")
            async with alice.kernel(PAGE) as session:
                *_, pid = await opened(session)
        assert parent_of(pid) == service.pid  # the service, not a host of its own
        assert server.kernel_hosts() == []
        server.stop()
        assert is_alive(pid)
    finally:
        if server is not None:
            server.stop()
        service.send_signal(signal.SIGTERM)
        service.wait(timeout=30)
    await wait_for(lambda: not is_alive(pid), 10, "its kernel outlived the service")
