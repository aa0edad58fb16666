"""The kernels package's parts, without a server: the tunnel, the running
cell's interrupt, the mode in force, which session a call is for.
(tests/e2e/test_isolation.py runs real kernel processes.)"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import socket
import threading
import time

import pytest
from django.core.checks import Warning as CheckWarning

from django_notebooks import checks, conf
from django_notebooks.kernels import cells, router, tunnel
from django_notebooks.kernels.processes import KernelProcesses
from django_notebooks.limits import Limits
from django_notebooks.sessions import owners

# The tunnel.


async def _paired(app, watch=None):
    """An ASGI call to ``app`` through a socket pair, as to a kernel process."""
    ours, theirs = socket.socketpair()
    watch = watch or (lambda scope, writer: _nothing())
    reader, writer = await asyncio.open_connection(sock=theirs)
    server = asyncio.create_task(tunnel.serve_call(app, reader, writer, watch))

    async def connect():
        return await asyncio.open_connection(sock=ours)

    return connect, server


class _nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


@pytest.mark.asyncio
async def test_an_app_that_fails_ends_its_call_not_its_kernel(caplog):
    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 500, "headers": []})
        await send({"type": "http.response.body", "body": b""})
        raise RuntimeError("as Starlette re-raises after its 500")

    connect, server = await _paired(app)
    sent = []

    async def receive():
        await asyncio.sleep(3600)

    async def send(message):
        sent.append(message)

    await tunnel.call(connect, {"type": "http"}, receive, send)  # no TunnelClosed
    await server
    assert sent[0]["status"] == 500
    assert "marimo's app failed in a kernel process" in caplog.text


@pytest.mark.asyncio
async def test_an_http_call_crosses_the_tunnel_with_its_scope_and_body():
    seen = {}

    async def app(scope, receive, send):
        seen["scope"] = scope
        seen["request"] = await receive()
        await send({"type": "http.response.start", "status": 201, "headers": []})
        await send({"type": "http.response.body", "body": b"made"})

    connect, server = await _paired(app)
    sent = []
    body = [{"type": "http.request", "body": b"x=1", "more_body": False}]

    async def receive():
        if body:
            return body.pop()
        await asyncio.sleep(3600)

    async def send(message):
        sent.append(message)

    scope = {
        "type": "http",
        "path": "/n/",
        "headers": [(b"a", b"b")],
        "meta": {"since": datetime.date(2024, 5, 1)},
    }
    await tunnel.call(connect, scope, receive, send)
    await server
    assert seen["scope"]["meta"] == {"since": datetime.date(2024, 5, 1)}
    assert seen["scope"]["headers"] == [(b"a", b"b")]
    assert seen["request"]["body"] == b"x=1"
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    assert sent[1]["body"] == b"made"


@pytest.mark.asyncio
async def test_what_cannot_be_pickled_stays_behind():
    lock = threading.Lock()  # cannot be pickled
    data = tunnel.encode_scope(
        {"type": "http", "state": {"lock": lock}, "meta": {"lock": lock, "n": 1}}
    )
    reader = asyncio.StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    scope = await tunnel.read_message(reader, pickled=True)
    assert scope == {"type": "http", "meta": {"n": 1}}


@pytest.mark.asyncio
async def test_a_kernel_process_that_goes_mid_call_raises_tunnel_closed():
    async def app(scope, receive, send):
        await send({"type": "websocket.accept"})
        # The process goes: its end closes without the end mark.
        raise asyncio.CancelledError

    connect, server = await _paired(app)
    sent = []

    async def receive():
        await asyncio.sleep(3600)

    async def send(message):
        sent.append(message)

    with pytest.raises(tunnel.TunnelClosed):
        await tunnel.call(connect, {"type": "websocket"}, receive, send)
    with contextlib.suppress(asyncio.CancelledError):
        await server
    assert sent == [{"type": "websocket.accept"}]


@pytest.mark.asyncio
async def test_the_app_sees_a_disconnect_when_the_web_process_leaves():
    got = asyncio.get_running_loop().create_future()

    async def app(scope, receive, send):
        got.set_result(await receive())

    ours, theirs = socket.socketpair()
    reader, writer = await asyncio.open_connection(sock=theirs)
    server = asyncio.create_task(
        tunnel.serve_call(app, reader, writer, lambda s, w: _nothing())
    )
    _, our_writer = await asyncio.open_connection(sock=ours)
    our_writer.write(tunnel.encode_scope({"type": "websocket"}))
    await our_writer.drain()
    our_writer.close()
    assert await asyncio.wait_for(got, 5) == {
        "type": "websocket.disconnect",
        "code": 1006,
    }
    await server


@pytest.mark.asyncio
async def test_what_comes_back_is_never_unpickled():
    reader = asyncio.StreamReader()
    import pickle

    reader.feed_data(tunnel.LENGTH.pack(3) + pickle.dumps(1)[:3])
    reader.feed_eof()
    with pytest.raises(ValueError):
        await tunnel.read_message(reader)  # marshal refuses a pickle


# The running cell.


def test_interrupt_without_a_running_cell_does_nothing():
    assert cells.interrupt() is False


# A cell interrupted, run in a Python of its own: it is how a kernel process
# runs it. (A tracer, such as the coverage this suite may run under, takes
# the pending exception in its own callback and the thread spins on.)
INTERRUPTED_CELL = """
import threading, time
from django_notebooks.kernels import cells
outcome = []
running = threading.Event()

def cell():
    try:
        with cells.running():
            running.set()
            while True:
                pass
    except cells.CellInterrupted:
        outcome.append("interrupted")

thread = threading.Thread(target=cell, daemon=True)
thread.start()
running.wait(5)
time.sleep(0.05)
sent = cells.interrupt()
thread.join(5)
print(sent, outcome, thread.is_alive(), cells.interrupt())
"""


def test_a_running_cell_is_interrupted_at_its_next_instruction():
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("COV")}
    result = subprocess.run(
        [sys.executable, "-c", INTERRUPTED_CELL],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
    )
    # Sent, raised in the cell, the thread ended, and nothing left to stop.
    assert result.stdout.split("\n")[0] == "True ['interrupted'] False False", (
        result.stdout + result.stderr
    )
    assert issubclass(cells.CellInterrupted, KeyboardInterrupt)


@pytest.mark.parametrize("wrapped", [False, True])
def test_a_memory_error_in_a_cell_is_reported(monkeypatch, wrapped):
    reported = []
    monkeypatch.setattr(cells, "on_memory_error", lambda: reported.append(1))

    class MarimoError(Exception):
        pass

    def fail():
        if not wrapped:
            raise MemoryError
        try:
            raise MemoryError
        except MemoryError as error:
            raise MarimoError from error  # as marimo's executor does

    with pytest.raises((MemoryError, MarimoError)), cells.running():
        fail()
    with pytest.raises(ValueError), cells.running():
        raise ValueError
    assert reported == [1]


# The mode in force.


def test_process_isolation_is_the_default(settings):
    without = {k: v for k, v in settings.DJANGO_NOTEBOOKS.items() if k != "ISOLATION"}
    settings.DJANGO_NOTEBOOKS = without
    assert conf.get_settings().ISOLATION == "process"
    assert router.isolation() == "process"


def test_thread_isolation_when_set(settings):
    settings.DJANGO_NOTEBOOKS = {**settings.DJANGO_NOTEBOOKS, "ISOLATION": "thread"}
    assert router.isolation() == "thread"


def test_without_fork_it_runs_in_threads_and_a_check_says_so(settings, monkeypatch):
    settings.DJANGO_NOTEBOOKS = {**settings.DJANGO_NOTEBOOKS, "ISOLATION": "process"}
    monkeypatch.setattr(router, "can_fork", lambda: False)
    assert router.isolation() == "thread"
    (warning,) = [w for w in checks.check_isolation() if w.id.endswith("W008")]
    assert isinstance(warning, CheckWarning)
    assert "cannot fork" in warning.msg


def test_no_warning_where_it_can_fork_or_thread_is_chosen(settings, monkeypatch):
    settings.DJANGO_NOTEBOOKS = {**settings.DJANGO_NOTEBOOKS, "ISOLATION": "process"}
    assert checks.check_isolation() == []
    monkeypatch.setattr(router, "can_fork", lambda: False)
    settings.DJANGO_NOTEBOOKS = {**settings.DJANGO_NOTEBOOKS, "ISOLATION": "thread"}
    assert checks.check_isolation() == []


@pytest.mark.parametrize("value", ["processes", None, True])
def test_a_wrong_isolation_is_e018(settings, value):
    settings.DJANGO_NOTEBOOKS = {**settings.DJANGO_NOTEBOOKS, "ISOLATION": value}
    (error,) = [e for e in checks.check_settings() if e.id.endswith("E018")]
    assert "ISOLATION" in error.msg


# Which session a call is for.


def test_the_session_of_a_websocket_is_its_query_parameter():
    scope = {"type": "websocket", "query_string": b"a=1&session_id=s-1"}
    assert router.session_of(scope) == "s-1"
    assert router.session_of({"type": "websocket", "query_string": b""}) is None


def test_the_session_of_a_kernel_call_is_its_header():
    scope = {"type": "http", "headers": [(b"marimo-session-id", b"s-2")], "path": "/"}
    assert router.session_of(scope) == "s-2"


def test_the_session_of_a_download_is_the_one_whose_kernel_made_it(monkeypatch):
    bindings = owners.SessionBindings()
    monkeypatch.setattr(owners, "bindings", bindings)
    bindings.claim("s-3", owner="user:1:k", notebook="n", user_context={})
    bindings.add_files("s-3", {"123-data.csv"})
    scope = {
        "type": "http",
        "headers": [],
        "root_path": "/notebooks/n",
        "path": "/notebooks/n/@file/123-data.csv",
    }
    assert router.session_of(scope) == "s-3"
    scope["path"] = "/notebooks/n/@file/999-other.csv"
    assert router.session_of(scope) is None


def test_an_unknown_or_ended_session_has_no_process():
    processes = KernelProcesses()
    assert processes.get(None) is None
    assert processes.get("nobody") is None


# The fork server.


def test_the_fork_server_starts_once_and_stops_with_its_handle():
    from django_notebooks.kernels.forking import ForkServer

    exits = []
    server = ForkServer(on_exit=lambda pid, status: exits.append(pid))
    server.ensure_running()
    pid = server.pid
    server.ensure_running()
    assert server.pid == pid and server.running
    process = server._process
    server.stop()
    assert not server.running
    assert process is not None and process.returncode == 0  # it exited, not killed


# The router.


class _Recorder:
    """An ASGI app that answers 200 and remembers the scopes it got."""

    def __init__(self) -> None:
        self.scopes: list[dict] = []

    async def __call__(self, scope, receive, send):
        self.scopes.append(scope)
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"here"})


async def _answer(app, scope):
    sent = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    await app(scope, receive, send)
    return sent


@pytest.mark.asyncio
async def test_a_session_whose_kernel_cannot_start_runs_in_the_server(monkeypatch):
    from django_notebooks.kernels import processes
    from django_notebooks.kernels.forking import ForkServerFailed
    from django_notebooks.marimo import apps

    here = _Recorder()
    monkeypatch.setattr(apps.notebook_apps, "app_for", lambda path: here)

    async def refused(*args, **kwargs):
        raise ForkServerFailed("no more processes")

    monkeypatch.setattr(processes.kernel_processes, "start", refused)
    monkeypatch.setattr(router.registry, "limits_of", lambda notebook: Limits())
    notebook = type("Notebook", (), {"path": "n.py"})()
    scope = {"type": "websocket", "query_string": b"session_id=s-9", "headers": []}
    await router.SessionRouter(notebook)(scope, None, None)
    assert here.scopes == [scope]


@pytest.mark.asyncio
async def test_a_kernel_call_to_an_ended_kernel_is_answered_410(monkeypatch, tmp_path):
    from django_notebooks import notices
    from django_notebooks.kernels import processes

    ended = processes.KernelProcess(session_id="s-8", socket_path=tmp_path / "gone")
    ended.pid_answer.set_result(999_999)
    ended.ending = notices.KERNEL_CRASHED
    table = processes.KernelProcesses()
    table._by_session["s-8"] = ended
    monkeypatch.setattr(processes, "kernel_processes", table)
    monkeypatch.setattr(router, "kernel_processes", table)
    notebook = type("Notebook", (), {"path": "n.py"})()
    scope = {"type": "http", "headers": [(b"marimo-session-id", b"s-8")], "path": "/"}
    sent = await _answer(router.SessionRouter(notebook), scope)
    assert sent[0]["status"] == 410
    assert b"has ended" in sent[1]["body"]


# What a kernel process uses, for the admin.


@pytest.fixture
def lookalike_kernel():
    """A process whose command line is a kernel process's (they keep the
    fork server's)."""
    import subprocess
    import sys

    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import time; sum(range(10**6)); time.sleep(30)",
            "django_notebooks.kernels.forkserver",
        ]
    )
    time.sleep(0.3)
    yield process.pid
    process.kill()
    process.wait()


def test_usage_is_read_for_kernel_processes_only(lookalike_kernel):
    import os

    from django_notebooks.kernels import usage

    assert usage.usage(os.getpid()) is None  # pytest is no kernel process
    used = usage.usage(lookalike_kernel)
    assert used is not None
    assert used.cpu_seconds >= 0
    assert used.private_bytes > 1024 * 1024


def test_the_admin_shows_a_kernel_process_where_it_can(lookalike_kernel):
    from django_notebooks.admin import NotebookSessionAdmin
    from django_notebooks.models import NotebookSession
    from django_notebooks.sessions import records

    show = NotebookSessionAdmin.kernel
    here = NotebookSession(process=records.PROCESS, kernel_pid=lookalike_kernel)
    assert str(show(None, here)).startswith(f"pid {lookalike_kernel} · ")
    assert str(show(None, here)).endswith(" MB")
    elsewhere = NotebookSession(process="other-host:1:x", kernel_pid=12)
    assert str(show(None, elsewhere)) == "pid 12 (another host)"
    gone = NotebookSession(process=records.PROCESS, kernel_pid=2**22 + 7)
    assert str(show(None, gone)) == f"pid {2**22 + 7}"
    threads = NotebookSession(process=records.PROCESS, kernel_pid=None)
    assert str(show(None, threads)) == "thread in the server process"


# The web process's record of its kernel processes.


def _process(table, session_id, pid, tmp_path):
    from django_notebooks.kernels import processes

    process = processes.KernelProcess(
        session_id=session_id, socket_path=tmp_path / f"{session_id}.sock"
    )
    process.socket_path.touch()
    process.pid = pid
    process.pid_answer.set_result(pid)
    table._by_session[session_id] = process
    table._by_pid[pid] = process
    return process


def test_an_exit_report_ends_its_process_and_removes_its_socket(tmp_path):
    table = KernelProcesses()
    process = _process(table, "s-1", 4_194_300, tmp_path)
    table._exited(4_194_300, 9)  # killed by SIGKILL, not by the bridge
    assert process.has_exited and process.exit_status == 9
    assert table.get("s-1") is None and not process.socket_path.exists()
    # Nothing is signalled any more: the pid may be another process's now.
    assert process.signal(0) is False and process.interrupt() is False


def test_an_exit_reported_before_its_pid_is_kept_for_its_start(tmp_path):
    from django_notebooks.kernels import processes

    table = KernelProcesses()
    for pid in range(processes.MAX_EARLY_EXITS + 5):
        table._exited(pid + 1, 0)
    assert len(table._early_exits) == processes.MAX_EARLY_EXITS


def test_a_stopped_fork_server_ends_every_kernel_process(tmp_path):
    table = KernelProcesses()
    one = _process(table, "s-1", 4_194_301, tmp_path)
    two = _process(table, "s-2", 4_194_302, tmp_path)
    table._fork_server_stopped()
    assert one.has_exited and two.has_exited and table.all() == []


def test_a_kernels_exit_frees_its_sessions_place_under_the_caps(tmp_path, monkeypatch):
    bindings = owners.SessionBindings()
    monkeypatch.setattr(owners, "bindings", bindings)
    for session_id in ("s-1", "s-2", "s-3"):
        bindings.claim(
            session_id,
            owner="user:1:k",
            notebook="n",
            user_context={},
            kernel_end_reported=True,
        )
        bindings.release(session_id, "user:1:k")
    table = KernelProcesses()
    _process(table, "s-1", 4_194_303, tmp_path)
    _process(table, "s-2", 4_194_304, tmp_path)
    _process(table, "s-3", 4_194_305, tmp_path)
    assert bindings.count() == 3
    table._exited(4_194_303, 0)
    assert not bindings.knows("s-1") and bindings.count() == 2
    table._fork_server_stopped()
    assert bindings.count() == 0


@pytest.mark.asyncio
async def test_why_a_kernel_ended(tmp_path):
    from django_notebooks import notices

    table = KernelProcesses()
    process = _process(table, "s-1", 4_194_303, tmp_path)
    process.exited.set()
    assert await process.why_ended() == notices.KERNEL_CRASHED
    process.ending = notices.OUT_OF_MEMORY
    assert await process.why_ended() == notices.OUT_OF_MEMORY


def test_ending_a_process_that_is_still_starting_waits_for_its_pid(tmp_path):
    from django_notebooks import notices
    from django_notebooks.kernels import processes

    starting = processes.KernelProcess(session_id="s-1", socket_path=tmp_path / "s")
    starting.terminate(notices.ACCESS_ENDED)  # no pid yet: nothing to signal
    starting.kill(notices.KERNEL_CRASHED)
    starting.demote()
    assert starting.ending == notices.ACCESS_ENDED  # the first reason stays


def test_demote_renices_every_thread_of_a_process():
    import os
    import subprocess
    import sys

    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import threading, time; threading.Thread(target=time.sleep, "
            "args=(30,), daemon=True).start(); time.sleep(30)",
        ]
    )
    try:
        time.sleep(0.5)
        from django_notebooks.kernels import processes

        process = processes.KernelProcess(session_id="s", socket_path=None)  # type: ignore[arg-type]
        process.pid = child.pid
        process.demote()
        threads = os.listdir(f"/proc/{child.pid}/task")
        assert len(threads) == 2
        assert {os.getpriority(os.PRIO_PROCESS, int(t)) for t in threads} == {19}
    finally:
        child.kill()
        child.wait()


# The fork server's wire.


def test_a_message_and_its_descriptor_cross_the_wire():
    from django_notebooks.kernels.forking import receive_message, send_message

    ours, theirs = socket.socketpair()
    readable, writable = socket.socketpair()
    send_message(ours, {"id": 1, "notebook": "n.py"}, [readable.fileno()])
    message, fds = receive_message(theirs)
    assert message == {"id": 1, "notebook": "n.py"} and len(fds) == 1
    writable.sendall(b"x")
    assert socket.socket(fileno=fds[0]).recv(1) == b"x"
    ours.close()
    assert receive_message(theirs) == (None, [])  # the other end closed
    for sock in (theirs, readable, writable):
        sock.close()


def test_a_fork_nobody_waits_for_any_more_is_ended():
    import concurrent.futures
    import subprocess
    import sys

    from django_notebooks.kernels.forking import _settle

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    answer: concurrent.futures.Future[int] = concurrent.futures.Future()
    answer.cancel()
    _settle(answer, child.pid)
    assert child.wait(10) == -15  # SIGTERM
    failed: concurrent.futures.Future[int] = concurrent.futures.Future()
    _settle(failed, RuntimeError("no"))
    assert isinstance(failed.exception(), RuntimeError)


@pytest.mark.asyncio
async def test_a_frame_too_large_or_not_a_message_closes_the_call():
    import marshal

    reader = asyncio.StreamReader()
    reader.feed_data(tunnel.LENGTH.pack(tunnel.MAX_FRAME + 1))
    with pytest.raises(tunnel.TunnelClosed):
        await tunnel.read_message(reader)
    reader = asyncio.StreamReader()
    data = marshal.dumps([1, 2])
    reader.feed_data(tunnel.LENGTH.pack(len(data)) + data)
    with pytest.raises(tunnel.TunnelClosed):
        await tunnel.read_message(reader)


@pytest.mark.asyncio
async def test_marimos_enum_close_codes_cross_the_tunnel_as_values():
    import enum

    class Code(enum.IntEnum):
        FORBIDDEN = 1008

    class Reason(enum.StrEnum):
        NO = "MARIMO_NO"

    reader = asyncio.StreamReader()
    message = {"type": "websocket.close", "code": Code.FORBIDDEN, "reason": Reason.NO}
    reader.feed_data(tunnel.encode(message))
    reader.feed_eof()
    got = await tunnel.read_message(reader)
    assert got == {"type": "websocket.close", "code": 1008, "reason": "MARIMO_NO"}
    assert type(got["code"]) is int
    assert await tunnel.read_message(reader) is None


def test_a_call_for_no_session_is_for_the_server():
    scope = {"type": "http", "headers": [], "root_path": "/n", "path": "/n/assets/x.js"}
    assert router.session_of(scope) is None
