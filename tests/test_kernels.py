"""The kernels package's parts, without a server: the tunnel and its
deadline, the running cell's reports and interrupt, the web process's
record of its kernels and fork servers, the router's rule that only an
admitted call reaches a kernel, cgroups, process titles, the output log.
(tests/e2e/test_isolation.py runs real kernel processes.)"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import datetime
import errno
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.core.checks import Warning as CheckWarning

from django_notebooks import checks, conf, context, notices
from django_notebooks.kernels import (
    cells,
    cgroups,
    location,
    processes,
    router,
    titles,
    tunnel,
    wire,
)
from django_notebooks.kernels.forking import ForkRefused, ForkServerFailed
from django_notebooks.kernels.processes import KernelProcesses, KernelStart
from django_notebooks.limits import Limits, call_deadline
from tests.helpers import START_FORK, async_wait_until, wait_until

# The tunnel.


async def _paired(app, watch=None):
    """An ASGI call to ``app`` through a socket pair, as to a kernel process."""
    ours, theirs = socket.socketpair()
    watch = watch or (lambda scope: contextlib.nullcontext())
    reader, writer = await asyncio.open_connection(sock=theirs)
    server = asyncio.create_task(tunnel.serve_call(app, reader, writer, watch))

    async def connect():
        return await asyncio.open_connection(sock=ours)

    return connect, server


async def _never():
    await asyncio.sleep(3600)


@pytest.mark.asyncio
async def test_an_app_that_fails_ends_its_call_not_its_kernel(caplog):
    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 500, "headers": []})
        await send({"type": "http.response.body", "body": b""})
        raise RuntimeError("as Starlette re-raises after its 500")

    connect, server = await _paired(app)
    sent = []

    async def send(message):
        sent.append(message)

    await tunnel.call(connect, {"type": "http"}, _never, send, deadline=5)
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
        return body.pop() if body else await _never()

    async def send(message):
        sent.append(message)

    scope = {
        "type": "http",
        "path": "/n/",
        "headers": [(b"a", b"b")],
        "meta": {"since": datetime.date(2024, 5, 1)},
    }
    await tunnel.call(connect, scope, receive, send, deadline=5)
    await server
    assert seen["scope"]["meta"] == {"since": datetime.date(2024, 5, 1)}
    assert seen["scope"]["headers"] == [(b"a", b"b")]
    assert seen["request"]["body"] == b"x=1"
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    assert sent[1]["body"] == b"made"


def test_what_cannot_be_pickled_stays_behind():
    import pickle

    lock = threading.Lock()  # cannot be pickled
    data = tunnel.encode_scope(
        {"type": "http", "state": {"lock": lock}, "meta": {"lock": lock, "n": 1}}
    )
    assert pickle.loads(data) == {"type": "http", "meta": {"n": 1}}


@pytest.mark.asyncio
async def test_a_kernel_process_that_goes_mid_call_raises_tunnel_closed():
    accepted = asyncio.Event()

    async def app(scope, receive, send):
        await send({"type": "websocket.accept"})
        accepted.set()
        await _never()

    connect, server = await _paired(app)
    sent = []

    async def send(message):
        sent.append(message)
        # The process goes (its event loop cancels what runs): its end
        # closes without the call's end.
        server.cancel()

    with pytest.raises(tunnel.TunnelClosed):
        await tunnel.call(connect, {"type": "websocket"}, _never, send, deadline=5)
    with contextlib.suppress(asyncio.CancelledError):
        await server
    assert sent == [{"type": "websocket.accept"}]


@pytest.mark.asyncio
async def test_an_app_cancelled_by_itself_ends_its_call_not_its_kernel():
    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        # As Starlette's middleware may let its own cancellation escape
        # once the client has gone.
        raise asyncio.CancelledError

    connect, server = await _paired(app)
    sent = []

    async def send(message):
        sent.append(message)

    await tunnel.call(connect, {"type": "http"}, _never, send, deadline=5)
    await server  # ended, not cancelled
    assert [m["type"] for m in sent] == ["http.response.start"]


@pytest.mark.asyncio
async def test_a_whole_answer_is_kept_when_the_kernel_closes_without_the_calls_end():
    ours, theirs = socket.socketpair()

    async def kernel_end():
        reader, writer = await asyncio.open_connection(sock=theirs)
        await wire.read(reader)  # the call
        for message in (
            {"type": "http.response.start", "status": 200, "headers": []},
            {"type": "http.response.body", "body": b"{}", "more_body": False},
        ):
            writer.write(wire.encode(wire.Asgi(message)))
        await writer.drain()
        writer.close()  # without CallEnded

    async def connect():
        return await asyncio.open_connection(sock=ours)

    kernel = asyncio.create_task(kernel_end())
    sent = []

    async def send(message):
        sent.append(message)

    await tunnel.call(connect, {"type": "http"}, _never, send, deadline=5)
    await kernel
    assert sent[-1] == {"type": "http.response.body", "body": b"{}", "more_body": False}


@pytest.mark.asyncio
async def test_a_kernel_that_does_not_answer_in_time_is_left_holding_nothing():
    answered = asyncio.Event()

    async def app(scope, receive, send):
        await answered.wait()  # stopped: never answers

    connect, server = await _paired(app)
    opened = len(os.listdir("/proc/self/fd"))
    started = time.monotonic()
    with pytest.raises(tunnel.NotAnswering):
        await tunnel.call(
            connect, {"type": "http"}, _never, lambda m: None, deadline=0.3
        )
    assert 0.3 <= time.monotonic() - started < 3
    # The caller's end of the connection is closed.
    assert len(os.listdir("/proc/self/fd")) < opened
    answered.set()
    await server


@pytest.mark.asyncio
async def test_an_accepted_websocket_may_stay_quiet_past_the_deadline():
    async def app(scope, receive, send):
        await send({"type": "websocket.accept"})
        await asyncio.sleep(0.5)  # longer than the deadline
        await send({"type": "websocket.send", "text": "late"})

    connect, server = await _paired(app)
    sent = []

    async def send(message):
        sent.append(message)

    await tunnel.call(connect, {"type": "websocket"}, _never, send, deadline=0.2)
    await server
    assert [m["type"] for m in sent] == ["websocket.accept", "websocket.send"]


@pytest.mark.asyncio
async def test_the_app_sees_a_disconnect_when_the_web_process_leaves():
    got = asyncio.get_running_loop().create_future()

    async def app(scope, receive, send):
        got.set_result(await receive())

    ours, theirs = socket.socketpair()
    reader, writer = await asyncio.open_connection(sock=theirs)
    server = asyncio.create_task(
        tunnel.serve_call(app, reader, writer, lambda scope: contextlib.nullcontext())
    )
    _, our_writer = await asyncio.open_connection(sock=ours)
    our_writer.write(wire.encode(wire.Call(tunnel.encode_scope({"type": "websocket"}))))
    await our_writer.drain()
    our_writer.close()
    assert await asyncio.wait_for(got, 5) == {
        "type": "websocket.disconnect",
        "code": 1006,
    }
    await server


@pytest.mark.asyncio
async def test_a_call_that_does_not_open_with_its_scope_runs_nothing():
    ran = []

    async def app(scope, receive, send):
        ran.append(scope)

    ours, theirs = socket.socketpair()
    reader, writer = await asyncio.open_connection(sock=theirs)
    server = asyncio.create_task(
        tunnel.serve_call(app, reader, writer, lambda scope: contextlib.nullcontext())
    )
    _, our_writer = await asyncio.open_connection(sock=ours)
    our_writer.write(wire.encode(wire.Asgi({"type": "http.request"})))
    await our_writer.drain()
    await asyncio.wait_for(server, 5)
    assert ran == []
    our_writer.close()


# One kernel's calls: HTTP calls reuse a kept connection.


@contextlib.asynccontextmanager
async def _serving(server, line):
    """``server`` serving while the test uses ``line``; the line's kept
    connections closed before the server is (since Python 3.12 a server's
    end waits for its connections)."""
    async with server:
        try:
            yield
        finally:
            line.close()


async def _listening(app, folder: Path):
    """A kernel process's socket serving ``app``; how to connect to it, and
    the count of connections made."""
    path = str(folder / "k.sock")
    made = []
    kernel_ends = []

    async def serve(reader, writer):
        kernel_ends.append(writer)
        await tunnel.serve_call(
            app, reader, writer, lambda scope: contextlib.nullcontext()
        )

    server = await asyncio.start_unix_server(serve, path=path)

    async def connect():
        made.append(path)
        return await asyncio.open_unix_connection(path)

    return server, connect, made, kernel_ends


async def _kernel_app(scope, receive, send):
    """A kernel app: reads the request, answers with its path."""
    if scope["type"] == "websocket":
        await receive()
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.close", "code": 1000})
        return
    if scope["path"] == "/slow":
        await asyncio.sleep(1)  # past the caller's deadline
    request = await receive()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send(
        {"type": "http.response.body", "body": scope["path"].encode() + request["body"]}
    )


async def _http_call(line, path="/n", body=b"", deadline=5.0):
    """One HTTP call as a server makes it: the request, then (the answer
    sent) the disconnect a server reports; the answer's status and body."""
    said = [{"type": "http.request", "body": body}]
    answered = asyncio.Event()
    sent = []

    async def receive():
        if said:
            return said.pop()
        await answered.wait()
        return {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)
        if message["type"] == "http.response.body":
            answered.set()

    await line.call({"type": "http", "path": path}, receive, send, deadline=deadline)
    return sent[0]["status"], sent[1]["body"]


@pytest.mark.asyncio
async def test_a_kernels_http_calls_reuse_one_connection(tmp_path):
    server, connect, made, _ = await _listening(_kernel_app, tmp_path)
    line = tunnel.Line(connect)
    async with _serving(server, line):
        for number in range(5):
            body = str(number).encode()
            assert await _http_call(line, body=body) == (200, b"/n" + body)
        assert len(made) == 1
        # Calls at once take connections of their own; two are kept after.
        answers = await asyncio.gather(*(_http_call(line, f"/{n}") for n in range(4)))
        assert answers == [(200, f"/{n}".encode()) for n in range(4)]
        assert len(made) == 4
        assert len(line._idle) == tunnel.KEPT_IDLE
    assert line._idle == []


@pytest.mark.asyncio
async def test_a_websocket_has_a_connection_of_its_own(tmp_path):
    server, connect, made, _ = await _listening(_kernel_app, tmp_path)
    line = tunnel.Line(connect)
    said = [{"type": "websocket.connect"}]
    sent = []

    async def receive():
        return said.pop() if said else await _never()

    async def send(message):
        sent.append(message["type"])

    async with _serving(server, line):
        await _http_call(line)
        await line.call({"type": "websocket"}, receive, send, deadline=5)
        assert sent == ["websocket.accept", "websocket.close"]
        await _http_call(line)
        assert len(made) == 2  # the HTTP calls' one, the websocket's


@pytest.mark.asyncio
async def test_a_call_cut_short_leaves_no_connection_to_reuse(tmp_path):
    server, connect, made, _ = await _listening(_kernel_app, tmp_path)
    line = tunnel.Line(connect)
    async with _serving(server, line):
        with pytest.raises(tunnel.NotAnswering):
            await _http_call(line, "/slow", deadline=0.2)
        assert line._idle == []
        assert await _http_call(line) == (200, b"/n")
        assert len(made) == 2


@pytest.mark.asyncio
async def test_a_kept_connection_the_kernel_closed_is_not_used(tmp_path):
    server, connect, made, kernel_ends = await _listening(_kernel_app, tmp_path)
    line = tunnel.Line(connect)
    async with _serving(server, line):
        await _http_call(line)
        kernel_ends[0].close()
        await async_wait_until(lambda: line._idle[0][1][0].at_eof(), 5)
        assert await _http_call(line) == (200, b"/n")
        assert len(made) == 2


@pytest.mark.asyncio
async def test_a_call_on_a_connection_closed_under_it_is_made_again(tmp_path):
    """A kernel of the code deployed before connections were kept ends
    each connection after its call: a call sent on one it has just
    closed is made again on a new one, with its request."""
    path = str(tmp_path / "old.sock")
    made = []

    async def one_call_then_close(reader, writer):
        await wire.read(reader)  # the call
        request = await wire.read(reader)
        for message in (
            {"type": "http.response.start", "status": 200, "headers": []},
            {"type": "http.response.body", "body": request.message["body"]},
        ):
            writer.write(wire.encode(wire.Asgi(message)))
        writer.write(wire.encode(wire.CallEnded()))
        await writer.drain()
        writer.close()

    async def connect():
        made.append(path)
        return await asyncio.open_unix_connection(path)

    line = tunnel.Line(connect)
    server = await asyncio.start_unix_server(one_call_then_close, path=path)
    async with _serving(server, line):
        assert await _http_call(line, body=b"first") == (200, b"first")
        ((kept_reader, _),) = [connection for _, connection in line._idle]
        await async_wait_until(kept_reader.at_eof, 5)
        kept_reader.at_eof = lambda: False  # as if its end had not come yet
        assert await _http_call(line, body=b"second") == (200, b"second")
        assert len(made) == 2


def _stream(*messages) -> asyncio.StreamReader:
    reader = asyncio.StreamReader()
    for message in messages:
        reader.feed_data(wire.encode(message))
    return reader


@pytest.mark.asyncio
async def test_a_call_whose_app_does_not_read_holds_its_connection_back():
    """What the kernel process reads ahead of a call's app is bounded."""
    body = [wire.Asgi({"type": "http.request", "body": b"x", "more_body": True})]
    reader = _stream(wire.Call(tunnel.encode_scope({"type": "http"})), *body * 100)
    calls = tunnel._Calls(reader)
    reading = asyncio.create_task(calls.read())
    scope, inbox = await asyncio.wait_for(calls.next(), 5)
    await asyncio.sleep(0.05)
    assert inbox.qsize() == tunnel.CALL_INBOX  # and the rest waits, unread
    assert not reading.done()
    # The call ends: the rest is dropped, the next call is read.
    calls.ended(inbox)
    reader.feed_data(
        wire.encode(wire.Call(tunnel.encode_scope({"type": "http", "n": 2})))
    )
    scope, second = await asyncio.wait_for(calls.next(), 5)
    assert scope["n"] == 2 and second.qsize() == 0
    reader.feed_eof()
    assert await asyncio.wait_for(second.get(), 5) is None  # its caller has gone
    assert await asyncio.wait_for(calls.next(), 5) is None
    await reading


# The running cell.


class _Reports:
    def __init__(self) -> None:
        self.said: list[tuple] = []

    def started(self) -> None:
        self.said.append(("started",))

    def ended(self, *, interrupted: bool, out_of_memory: bool) -> None:
        self.said.append(("ended", interrupted, out_of_memory))


def test_interrupt_without_a_running_cell_does_nothing():
    assert cells.interrupt() is False


@pytest.mark.parametrize(
    "error, out_of_memory",
    [
        (ValueError("no"), False),
        (MemoryError(), True),
        (OSError(errno.ENOMEM, "Cannot allocate memory"), True),  # mmap, shm
        (OSError(errno.ENOENT, "No such file"), False),
    ],
)
def test_a_cell_reports_its_start_and_end_and_a_lack_of_memory(
    monkeypatch, error, out_of_memory
):
    reports = _Reports()
    monkeypatch.setattr(cells, "reporter", reports)
    with pytest.raises(type(error)), cells.running():
        raise error
    assert reports.said == [("started",), ("ended", False, out_of_memory)]


def test_marimos_own_error_from_a_memory_error_is_a_lack_of_memory(monkeypatch):
    reports = _Reports()
    monkeypatch.setattr(cells, "reporter", reports)

    class MarimoError(Exception):
        pass

    with pytest.raises(MarimoError), cells.running():
        try:
            raise MemoryError
        except MemoryError as error:
            raise MarimoError from error  # as marimo's executor does
    assert reports.said[-1] == ("ended", False, True)


def test_a_cell_run_inside_a_cell_is_reported_once(monkeypatch):
    reports = _Reports()
    monkeypatch.setattr(cells, "reporter", reports)
    with cells.running(), cells.running():
        pass
    assert reports.said == [("started",), ("ended", False, False)]


# A cell interrupted, run in a Python of its own: it is how a kernel process
# runs it. (A tracer, such as the coverage this suite may run under, takes
# the pending exception in its own callback and the thread spins on.)
INTERRUPTED_CELL = """
import threading, time
from django_notebooks.kernels import cells
outcome = []
running = threading.Event()

class Reports:
    said = []
    def started(self): self.said.append("started")
    def ended(self, *, interrupted, out_of_memory): self.said.append(interrupted)

cells.reporter = Reports()

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
print(sent, outcome, thread.is_alive(), cells.interrupt(), Reports.said)
"""


def test_a_running_cell_is_interrupted_at_its_next_instruction():
    env = {k: v for k, v in os.environ.items() if not k.startswith("COV")}
    result = subprocess.run(
        [sys.executable, "-c", INTERRUPTED_CELL],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
    )
    # Sent, raised in the cell, the thread ended, nothing left to stop, and
    # the cell's end reported as interrupted.
    assert result.stdout.split("\n")[0] == (
        "True ['interrupted'] False False ['started', True]"
    ), result.stdout + result.stderr
    assert issubclass(cells.CellInterrupted, KeyboardInterrupt)


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


@pytest.mark.parametrize("value", ["yes", 1, None])
def test_log_notebook_output_is_true_or_false(settings, value):
    settings.DJANGO_NOTEBOOKS = {
        **settings.DJANGO_NOTEBOOKS,
        "LOG_NOTEBOOK_OUTPUT": value,
    }
    (error,) = [e for e in checks.check_settings() if "LOG_NOTEBOOK_OUTPUT" in e.msg]
    assert error.id == "django_notebooks.E015"


def test_the_deadline_of_a_call_covers_what_a_cell_may_hold_its_kernel_up():
    assert call_deadline(Limits(CELL_TIMEOUT=2)) == 2 + 5 + 5
    assert call_deadline(Limits(CELL_TIMEOUT=None)) == 600 + 5 + 5


# The web process's kernels and fork servers, with a fork server of the
# test's own.


class FakeForkServer:
    """Stands in for forking.ForkServer: records what it is asked; the test
    answers."""

    made: list[FakeForkServer] = []
    fail_start: list[bool] = []

    def __init__(self, *, on_exit, on_notice, on_stopped) -> None:
        self.on_exit, self.on_notice, self.on_stopped = on_exit, on_notice, on_stopped
        self.forks: dict[int, tuple[wire.Fork, concurrent.futures.Future]] = {}
        self.ends: list[tuple[int, bool]] = []
        self.running = False
        self.ready = wire.Ready("/none", cgroups.PROCESS_GROUPS, cgroups.RLIMITS)
        self.stopping = False
        self.pid = 4_000_000 + len(self.made)
        self.answer_with: object = "forked"
        FakeForkServer.made.append(self)

    def start(self) -> None:
        if self.fail_start and self.fail_start.pop(0):
            raise ForkServerFailed("The kernel fork server did not start: test")
        self.running = True

    def fork(self, fork, answer) -> None:
        self.forks[fork.id] = (fork, answer)
        if self.answer_with == "forked":
            answer.set_result(wire.Forked(fork.id, 5_000_000 + fork.id, "/none"))
        elif isinstance(self.answer_with, Exception):
            answer.set_exception(self.answer_with)

    def end(self, kernel_id, *, now=False) -> None:
        self.ends.append((kernel_id, now))

    def stop_now(self) -> None:
        """It died: what its reader thread does."""
        self.running = False
        for _fork, answer in self.forks.values():
            if not answer.done():
                answer.set_exception(ForkServerFailed("The kernel fork server stopped"))
        self.on_stopped(self)


@pytest.fixture
def fork_servers(monkeypatch):
    FakeForkServer.made = []
    FakeForkServer.fail_start = []
    monkeypatch.setattr(processes, "ForkServer", FakeForkServer)
    return FakeForkServer


START = KernelStart(
    notebook_file="/n.py",
    slug="n",
    user="alice",
    options={},
    memory_mb=256,
    cell_timeout=2,
    deadline=12.0,
    session_ttl=5,
    log_output=False,
)


@pytest.mark.asyncio
async def test_a_kernel_starts_on_the_fork_server_with_the_sessions_limits(
    fork_servers,
):
    table = KernelProcesses()
    process = await table.start("s-1", START)
    (server,) = fork_servers.made
    (fork, _answer) = server.forks[process.kernel_id]
    assert (fork.slug, fork.session_id, fork.user) == ("n", "s-1", "alice")
    assert (fork.memory_mb, fork.cell_timeout, fork.unresponsive_after) == (
        256,
        2,
        12.0,
    )
    assert process.pid == 5_000_000 + process.kernel_id
    assert table.get("s-1") is process and table.all() == [process]
    # The same session's second websocket shares it.
    assert await table.start("s-1", START) is process
    assert len(server.forks) == 1


@pytest.mark.asyncio
async def test_a_fork_server_that_stopped_is_replaced(fork_servers):
    table = KernelProcesses()
    first = await table.start("s-1", START)
    fork_servers.made[0].stop_now()
    assert first.has_exited and first.ending == notices.SESSION_LOST
    second = await table.start("s-2", START)
    assert len(fork_servers.made) == 2 and second.server is fork_servers.made[1]


@pytest.mark.asyncio
async def test_a_fork_server_that_dies_with_the_request_is_replaced_once(fork_servers):
    table = KernelProcesses()
    await table.start("s-0", START)  # one runs
    dying = fork_servers.made[0]
    dying.answer_with = None

    async def die_soon():
        await asyncio.sleep(0.05)
        dying.stop_now()

    asyncio.create_task(die_soon())
    process = await table.start("s-1", START)
    assert process.server is fork_servers.made[1]


@pytest.mark.asyncio
async def test_no_kernel_at_all_when_the_fork_server_will_not_start(fork_servers):
    table = KernelProcesses()
    fork_servers.fail_start = [True, True]
    with pytest.raises(processes.KernelUnavailable):
        await table.start("s-1", START)
    assert table.get("s-1") is None


@pytest.mark.asyncio
async def test_a_refused_fork_is_not_tried_again(fork_servers):
    table = KernelProcesses()
    await table.start("s-0", START)
    fork_servers.made[0].answer_with = ForkRefused(
        "OSError(11, 'Resource temporarily unavailable')"
    )
    with pytest.raises(processes.KernelUnavailable):
        await table.start("s-1", START)
    assert len(fork_servers.made) == 1 and len(fork_servers.made[0].forks) == 2


@pytest.mark.asyncio
async def test_a_start_given_up_ends_its_kernel(fork_servers):
    table = KernelProcesses()
    running = await table.start("s-0", START)
    server = fork_servers.made[0]
    server.answer_with = None  # the pid never comes
    starting = asyncio.create_task(table.start("s-1", START))
    await asyncio.sleep(0.1)
    starting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await starting
    (kernel_id,) = [i for i in server.forks if i != running.kernel_id]
    assert server.ends == [(kernel_id, True)]
    assert table.get("s-1") is None


def test_a_start_given_up_before_its_request_went_out_is_ended_when_it_does():
    server = FakeForkServer(on_exit=None, on_notice=None, on_stopped=None)
    process = processes.KernelProcess("s-1", 77, START)
    process.end(notices.SESSION_LOST)  # nothing to ask yet
    assert server.ends == []
    process.requested_from(server)
    assert server.ends == [(77, True)]


@pytest.mark.asyncio
async def test_an_end_goes_to_the_fork_server_by_kernel_id(fork_servers):
    table = KernelProcesses()
    process = await table.start("s-1", START)
    process.end(notices.ACCESS_ENDED)
    process.end(notices.KERNEL_CRASHED, now=True)
    assert fork_servers.made[0].ends == [
        (process.kernel_id, False),
        (process.kernel_id, True),
    ]
    assert process.ending == notices.ACCESS_ENDED  # the first reason stays


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "cause, status, notice, level",
    [
        ("crashed", 9, notices.KERNEL_CRASHED, logging.WARNING),
        ("timeout", 9, notices.kernel_stopped(2), logging.WARNING),
        ("unresponsive", 9, notices.KERNEL_UNRESPONSIVE, logging.WARNING),
        ("memory", 9, notices.KERNEL_OUT_OF_MEMORY, logging.WARNING),
        ("closed", 0, notices.KERNEL_CRASHED, logging.INFO),
    ],
)
async def test_a_kernels_end_is_logged_once_and_its_page_told_why(
    fork_servers, caplog, cause, status, notice, level
):
    caplog.set_level(logging.INFO, "django_notebooks")
    table = KernelProcesses()
    process = await table.start("s-1", START)
    server = fork_servers.made[0]
    exited = wire.Exited(process.kernel_id, "s-1", process.pid, status, cause)
    server.on_exit(server, exited)
    server.on_exit(server, exited)
    assert process.has_exited and process.cause == cause
    assert await process.why_ended() == notice
    assert table.get("s-1") is None
    (record,) = [r for r in caplog.records if "ended:" in r.getMessage()]
    assert record.levelno == level
    said = record.getMessage()
    assert "notebook n" in said and "session s-1" in said and "user alice" in said
    assert f"pid {process.pid}" in said


def test_an_end_asked_for_keeps_the_reason_the_bridge_gave():
    process = processes.KernelProcess("s-1", 1, START)
    process.ending = notices.ACCESS_ENDED
    assert processes.notice_for_end(process, "asked") == notices.ACCESS_ENDED
    assert "signal SIGKILL" in processes.describe_status(9)
    assert processes.describe_status(1 << 8) == "exit status 1"


@pytest.mark.asyncio
async def test_a_stopped_fork_server_ends_its_own_kernels_only(fork_servers):
    table = KernelProcesses()
    old = await table.start("s-1", START)
    fork_servers.made[0].running = False  # stopped; its reader not done yet
    new = await table.start("s-2", START)
    fork_servers.made[0].stop_now()
    assert old.has_exited and not new.has_exited
    assert table.all() == [new]


@pytest.mark.asyncio
async def test_what_the_fork_server_says_of_a_kernel_reaches_its_page(fork_servers):
    table = KernelProcesses()
    process = await table.start("s-1", START)
    heard = []
    stop = process.listen(heard.append)
    server = fork_servers.made[0]
    for what in ("stopping", "stopped", "out_of_memory"):
        server.on_notice(server, wire.KernelNotice(process.kernel_id, what, 2.0))
    stop()
    server.on_notice(server, wire.KernelNotice(process.kernel_id, "stopped", 2.0))
    assert heard == [
        notices.cell_stopping(2),
        notices.cell_stopped(2),
        notices.OUT_OF_MEMORY,
    ]


def test_the_words_for_a_long_cell_are_for_visitors():
    for notice in (notices.cell_stopping(120), notices.cell_stopped(120)):
        assert "2 minutes" in notice.text and not notice.final
        assert "cell" not in notice.text.lower() and "kernel" not in notice.text.lower()
    assert notices.kernel_stopped(120).final


# The router: only an admitted call reaches a kernel.


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


class _Notebook:
    path = Path("n.py")
    slug = "n"
    pre_run = True


@pytest.fixture
def web_process_app(monkeypatch):
    from django_notebooks.marimo import apps

    here = _Recorder()
    monkeypatch.setattr(apps.notebook_apps, "app_for", lambda path: here)
    return here


@pytest.fixture
def table(monkeypatch):
    found = KernelProcesses()
    monkeypatch.setattr(processes, "kernel_processes", found)
    monkeypatch.setattr(router, "kernel_processes", found)
    return found


def _live(table, session_id):
    process = processes.KernelProcess(session_id, 9, START)
    process.forked.set_result(wire.Forked(9, 1, "/nowhere.sock"))
    table._by_session[session_id] = process
    table._by_id[9] = process
    return process


@pytest.mark.asyncio
@pytest.mark.parametrize("path", ["/n/", "/n/health", "/n/favicon.ico"])
async def test_a_session_id_in_a_header_alone_reaches_no_kernel(
    web_process_app, table, path
):
    process = _live(table, "s-7")
    called = []
    process.call = lambda *args: called.append(args)  # type: ignore[method-assign]
    scope = context.marimo_scope(
        {"type": "http", "headers": [(b"marimo-session-id", b"s-7")]},
        path=path,
        root_path="/n",
        user={},
        meta={},
        notebook_file="n.py",
    )
    sent = await _answer(router.SessionRouter(_Notebook()), scope)
    assert sent[0]["status"] == 200 and called == []
    (seen,) = web_process_app.scopes
    # marimo here does not see the id either.
    assert b"marimo-session-id" not in dict(seen["headers"])


@pytest.mark.asyncio
async def test_an_admitted_call_for_an_ended_kernel_is_answered_410(
    web_process_app, table
):
    scope = context.marimo_scope(
        {"type": "http", "headers": [(b"marimo-session-id", b"s-8")]},
        path="/n/api/kernel/set_ui_element_value",
        root_path="/n",
        user={},
        meta={},
        notebook_file="n.py",
        session_id="s-8",
    )
    assert dict(scope["headers"])[b"marimo-session-id"] == b"s-8"
    sent = await _answer(router.SessionRouter(_Notebook()), scope)
    assert sent[0]["status"] == 410
    assert b"has ended" in sent[1]["body"]
    assert web_process_app.scopes == []


@pytest.mark.asyncio
async def test_an_admitted_call_its_kernel_does_not_answer_is_504_and_the_page_is_told(
    web_process_app, table
):
    process = _live(table, "s-9")
    heard = []
    process.listen(heard.append)

    async def not_answering(scope, receive, send):
        raise processes.KernelNotAnswering

    process.call = not_answering  # type: ignore[method-assign]
    scope = {"type": "http", "headers": [], context.ADMITTED_SESSION: "s-9"}
    sent = await _answer(router.SessionRouter(_Notebook()), scope)
    assert sent[0]["status"] == 504
    assert b"not responding" in sent[1]["body"]
    assert heard == [notices.NOT_ANSWERING]


@pytest.mark.asyncio
async def test_a_websocket_whose_kernel_cannot_start_runs_nowhere(
    web_process_app, table, monkeypatch
):
    async def refused(*args, **kwargs):
        raise processes.KernelUnavailable("no more processes")

    monkeypatch.setattr(table, "start", refused)
    monkeypatch.setattr(router.registry, "limits_of", lambda notebook: Limits())
    scope = {"type": "websocket", "headers": [], context.ADMITTED_SESSION: "s-9"}
    with pytest.raises(processes.KernelUnavailable):
        await router.SessionRouter(_Notebook())(scope, None, None)
    assert web_process_app.scopes == []  # never in the web process


# The fork server, for real.


def test_the_fork_server_starts_says_what_keeps_kernels_in_bounds_and_stops(
    monkeypatch,
):
    from django_notebooks.kernels.forking import ForkServer

    # A host of its own (the suite's sessions use another), in a short
    # folder: a Unix socket's path has a length limit.
    runtime = tempfile.mkdtemp()
    monkeypatch.setenv("XDG_RUNTIME_DIR", runtime)
    stopped = []
    server = ForkServer(
        on_exit=lambda *a: None,
        on_notice=lambda *a: None,
        on_stopped=stopped.append,
    )
    server.start()
    assert server.running and server.ready is not None
    directory = Path(server.ready.directory)
    assert directory.is_dir() and oct(directory.stat().st_mode)[-3:] == "700"
    assert server.ready.containment in (cgroups.CGROUPS, cgroups.PROCESS_GROUPS)
    assert server.ready.memory in (cgroups.MEMORY_MAX, cgroups.RLIMITS)
    title = Path(f"/proc/{server.pid}/cmdline").read_bytes()
    assert title.startswith(b"django-notebooks kernel-host")
    process = server._process
    server.stop()
    assert not server.running
    assert process is not None and process.returncode == 0  # it exited, not killed
    assert not directory.exists()  # it removed its sockets' folder
    wait_until(lambda: stopped == [server], 5, "its end was not reported")
    shutil.rmtree(runtime)


def test_a_fork_server_removes_the_sockets_folder_a_killed_one_left(
    tmp_path, monkeypatch
):
    from django_notebooks.kernels import forkserver

    monkeypatch.setattr(forkserver.tempfile, "gettempdir", lambda: str(tmp_path))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    left = tmp_path / "django-notebooks-left"
    left.mkdir()
    (left / forkserver.OWNER_FILE).write_text(str(dead.pid))
    (left / "1.sock").touch()
    alive = tmp_path / "django-notebooks-alive"
    alive.mkdir()
    (alive / forkserver.OWNER_FILE).write_text(str(os.getpid()))
    made = forkserver.sockets_directory()
    assert not left.exists() and alive.exists()
    assert (made / forkserver.OWNER_FILE).read_text() == str(os.getpid())


def test_the_output_log_is_bounded(caplog):
    from django_notebooks.kernels import forkserver

    caplog.set_level(logging.INFO, "django_notebooks.notebook_output")
    log = forkserver.OutputLog(START_FORK)
    log.feed(b"".join(b"line %d\n" % n for n in range(200)) + b"x" * 5000, 1000.2)
    log.feed(b"\n" + b"y" * 10, 1001.5)
    log.close()
    lines = [r.getMessage() for r in caplog.records]
    assert len([m for m in lines if "line " in m]) == forkserver.OUTPUT_LINES_PER_SECOND
    assert any("180 lines of output left out" in m for m in lines)
    assert all(len(m) < forkserver.OUTPUT_LINE_CHARS + 50 for m in lines)
    assert lines[0].startswith("[n s-1] line 0")
    assert lines[-1].startswith("[n s-1] yyyy") or "left out" in lines[-1]


# cgroups, on a folder of the test's own shaped like cgroupfs.


@pytest.fixture
def cgroup_parent(tmp_path):
    parent = tmp_path / "service"
    parent.mkdir()
    return parent


def _as_cgroupfs(folder: Path, controllers: str = "") -> None:
    (folder / "cgroup.controllers").write_text(controllers)
    (folder / "cgroup.subtree_control").write_text("")


def test_no_cgroups_where_the_folder_cannot_be_made(tmp_path):
    assert cgroups.KernelCgroups.create(tmp_path / "missing") is None
    assert cgroups.mechanisms(tmp_path / "missing") == cgroups.Mechanisms(
        cgroups.PROCESS_GROUPS, cgroups.RLIMITS
    )


def test_each_kernel_gets_a_cgroup_with_its_memory_limit(cgroup_parent):
    _as_cgroupfs(cgroup_parent, "cpu memory")
    with_memory = cgroups.KernelCgroups(cgroup_parent, memory=True)
    assert with_memory.mechanisms == cgroups.Mechanisms(
        cgroups.CGROUPS, cgroups.MEMORY_MAX
    )
    kernel = with_memory.for_kernel(5, 256)
    assert kernel is not None and kernel.name == "kernel-5"
    limit = (256 + cgroups.KERNEL_BASE_MB) * 1024 * 1024
    assert (kernel / "memory.max").read_text() == str(limit)
    assert (kernel / "memory.oom.group").read_text() == "1"
    (kernel / "memory.events").write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n")
    assert cgroups.ran_out_of_memory(kernel)
    (kernel / "memory.events").write_text("oom_kill 0\n")
    assert not cgroups.ran_out_of_memory(kernel)


def test_killing_a_cgroup_uses_cgroup_kill(cgroup_parent):
    (cgroup_parent / "cgroup.kill").write_text("0")
    cgroups.kill(cgroup_parent)
    assert (cgroup_parent / "cgroup.kill").read_text() == "1"


@pytest.fixture
def real_cgroup():
    """A cgroup of the test's own in this machine's cgroup v2 hierarchy
    (this machine's kind lets root make them: see docs/topics/isolation)."""
    own = cgroups.own_cgroup()
    folder = None if own is None else own / f"django-notebooks-tests-{os.getpid()}"
    try:
        folder.mkdir()  # type: ignore[union-attr]
    except (AttributeError, OSError) as error:
        if os.environ.get("CI"):
            pytest.fail(f"no cgroup v2 folder can be made here: {error!r}")
        pytest.skip(f"no cgroup v2 folder can be made here: {error!r}")
    yield folder
    cgroups.remove(folder)


def test_the_folders_of_fork_servers_gone_are_removed_with_their_processes(
    real_cgroup,
):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = real_cgroup / f"django-notebooks-{dead.pid}"
    (stale / "kernel-1").mkdir(parents=True)
    # What a cell started and moved out of its process group is still in it.
    escaped = subprocess.Popen(["sleep", "60"], start_new_session=True)
    (stale / "kernel-1" / "cgroup.procs").write_text(str(escaped.pid))
    mine = real_cgroup / f"django-notebooks-{os.getpid()}"
    mine.mkdir()
    cgroups.remove_stale(real_cgroup)
    assert escaped.wait(10) == -9
    assert not stale.exists() and mine.exists()


def test_a_kernel_cgroup_ends_everything_in_it_even_what_left_its_group(real_cgroup):
    made = cgroups.KernelCgroups.create(real_cgroup)
    assert made is not None
    kernel = made.for_kernel(1, None)
    assert kernel is not None
    escaped = subprocess.Popen(["sleep", "60"], start_new_session=True)
    (kernel / "cgroup.procs").write_text(str(escaped.pid))
    made.close()
    assert escaped.wait(10) == -9
    assert not made.base.exists()


def test_the_own_cgroup_is_read_from_proc(tmp_path):
    proc = tmp_path / "proc"
    (proc / "self").mkdir(parents=True)
    (proc / "self" / "mountinfo").write_text(
        "30 1 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw\n"
    )
    (proc / "self" / "cgroup").write_text("0::/system.slice/site.service\n")
    assert cgroups.own_cgroup(proc) == Path("/sys/fs/cgroup/system.slice/site.service")
    (proc / "self" / "mountinfo").write_text(
        "30 1 0:26 /system.slice /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n"
    )
    assert cgroups.own_cgroup(proc) == Path("/sys/fs/cgroup/site.service")
    (proc / "self" / "mountinfo").write_text("no cgroup2 here\n")
    assert cgroups.own_cgroup(proc) is None


# What a kernel process uses, for the admin.


def lookalike(title: str, is_one) -> Iterator[int]:
    """A process with the title of a kernel process, or a spare's."""
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import setproctitle, time; "
            f"setproctitle.setproctitle({title!r}); "
            "sum(range(10**6)); time.sleep(30)",
        ]
    )

    def titled() -> bool:
        return is_one(Path(f"/proc/{process.pid}/cmdline").read_bytes())

    deadline = time.monotonic() + 10
    while not titled() and time.monotonic() < deadline:
        time.sleep(0.05)
    yield process.pid
    process.kill()
    process.wait()


@pytest.fixture
def lookalike_kernel():
    """A process with a kernel process's title."""
    yield from lookalike(titles.kernel("n", "s_x"), titles.is_kernel)


@pytest.fixture
def lookalike_spare():
    """A process with a spare kernel's title."""
    yield from lookalike(titles.spare("n"), titles.is_spare)


@pytest.mark.django_db
def test_the_admin_says_how_many_spare_kernels_wait(
    lookalike_spare, admin_client, settings
):
    from django_notebooks.kernels import usage

    # (Kernels in processes, whatever the pass: spares are theirs.)
    settings.DJANGO_NOTEBOOKS = {**settings.DJANGO_NOTEBOOKS, "ISOLATION": "process"}
    assert not titles.is_kernel(titles.spare("n").encode())  # not a session's
    spares = usage.spares()  # (another test run's may wait too)
    assert spares[lookalike_spare].private_bytes > 0
    page = admin_client.get("/admin/django_notebooks/notebooksession/")
    assert page.status_code == 200
    assert re.search(r"\d+ spare kernels? \(\d+ MB\) waits? for", page.content.decode())


def test_usage_is_read_for_kernel_processes_only(lookalike_kernel):
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
    # A kernel forked from the code deployed before this one says so.
    current = NotebookSession(
        process=records.PROCESS,
        kernel_pid=lookalike_kernel,
        kernel_code=location.code_key(),
    )
    assert str(show(None, current)).endswith(" MB")
    older = NotebookSession(
        process=records.PROCESS, kernel_pid=lookalike_kernel, kernel_code="0123456789ab"
    )
    assert str(show(None, older)).endswith(" MB · older code")


def test_titles_tell_the_fork_server_a_kernel_and_what_a_cell_started_apart():
    kernel = titles.kernel("sales", "s_abc123")
    assert kernel == "django-notebooks kernel sales s_abc123"
    assert titles.is_kernel(kernel.encode() + b"\x00")
    assert not titles.is_kernel(titles.kernel_host("/tmp/h.sock").encode())
    assert not titles.is_kernel(titles.started_by_cell("sales", "s_abc123").encode())


@pytest.mark.django_db
def test_the_sessions_list_says_what_keeps_kernels_in_bounds(admin_client, settings):
    from django_notebooks.kernels.processes import kernel_processes

    settings.DJANGO_NOTEBOOKS = {**settings.DJANGO_NOTEBOOKS, "ISOLATION": "process"}
    found = kernel_processes.mechanisms()
    page = admin_client.get("/admin/django_notebooks/notebooksession/")
    said = page.content.decode()
    assert f"Each kernel process runs in {found.containment}" in said
    assert f"limited by {found.memory}" in said


@pytest.fixture
def bindings(monkeypatch):
    from django_notebooks.sessions import owners

    found = owners.SessionBindings()
    monkeypatch.setattr(owners, "bindings", found)
    return found


def _closed_tab(bindings, session_id):
    bindings.claim(
        session_id,
        owner="user:1:k",
        notebook="n",
        user_context={},
        kernel_end_reported=True,
    )
    bindings.release(session_id, "user:1:k")


@pytest.mark.asyncio
async def test_a_kernels_end_frees_its_sessions_place_under_the_caps(
    fork_servers, bindings
):
    table = KernelProcesses()
    started = {}
    for session_id in ("s-1", "s-2", "s-3"):
        _closed_tab(bindings, session_id)
        started[session_id] = await table.start(session_id, START)
    assert bindings.count() == 3
    server = fork_servers.made[0]
    one = started["s-1"]
    server.on_exit(server, wire.Exited(one.kernel_id, "s-1", one.pid, 0, "closed"))
    assert not bindings.knows("s-1") and bindings.count() == 2
    server.stop_now()
    assert bindings.count() == 0


@pytest.mark.asyncio
async def test_a_given_up_start_frees_its_place_once_its_kernel_has_ended(
    fork_servers, bindings
):
    table = KernelProcesses()
    await table.start("s-0", START)
    server = fork_servers.made[0]
    server.answer_with = None
    _closed_tab(bindings, "s-1")
    starting = asyncio.create_task(table.start("s-1", START))
    await asyncio.sleep(0.1)
    starting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await starting
    (kernel_id,) = [i for i, _now in server.ends]
    assert bindings.knows("s-1")  # its kernel may still run
    server.on_exit(server, wire.Exited(kernel_id, "s-1", 5_000_001, 9, "asked"))
    assert not bindings.knows("s-1")


@pytest.mark.asyncio
async def test_an_old_kernels_end_does_not_free_a_newer_kernels_place(
    fork_servers, bindings
):
    table = KernelProcesses()
    _closed_tab(bindings, "s-1")
    newer = await table.start("s-1", START)
    server = fork_servers.made[0]
    server.on_exit(server, wire.Exited(newer.kernel_id - 1, "s-1", 1, 9, "asked"))
    assert bindings.knows("s-1") and not newer.has_exited


# Where a web process finds its kernel host.


def test_the_hosts_folder_is_private_or_refused(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    folder = location.host_folder()
    assert folder.parent == tmp_path
    assert oct(folder.stat().st_mode)[-3:] == "700"
    assert location.host_folder() == folder  # made once, then found
    folder.chmod(0o770)  # another user of the group could reach the host
    with pytest.raises(location.UnsafeFolder):
        location.host_folder()


def test_a_host_is_named_for_the_project_and_for_its_code(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    project, code = location.host_socket().stem.split("-")
    assert location.lock_file().name == f"{project}.lock"
    app_file = Path(__file__).parent / "access_rules.py"
    modified = app_file.stat()
    location.code_key.cache_clear()
    try:
        # A deploy: a file of an installed app changed.
        os.utime(app_file, ns=(modified.st_atime_ns, modified.st_mtime_ns + 10**9))
        assert location.code_key() != code
        # A notebook the project serves is not the kernels' code.
        location.code_key.cache_clear()
        os.utime(app_file, ns=(modified.st_atime_ns, modified.st_mtime_ns))
        notebook = Path(__file__).parent / "notebooks" / "square.py"
        touched = notebook.stat()
        os.utime(notebook, ns=(touched.st_atime_ns, touched.st_mtime_ns + 10**9))
        try:
            assert location.code_key() == code
        finally:
            os.utime(notebook, ns=(touched.st_atime_ns, touched.st_mtime_ns))
    finally:
        os.utime(app_file, ns=(modified.st_atime_ns, modified.st_mtime_ns))
        location.code_key.cache_clear()
    # Another project (here: another database) has hosts of its own; the
    # older hosts of this one are found beside the current one.
    older = location.host_socket().with_name(f"{project}-0123456789ab.sock")
    older.touch()
    other = location.host_socket().with_name("0123456789ab-0123456789ab.sock")
    other.touch()
    assert location.older_hosts() == [older]


# Kernel hosts found, and left, by a web process.


def test_a_socket_a_killed_host_left_is_removed_a_live_ones_kept(monkeypatch):
    from django_notebooks.kernels import forking

    runtime = tempfile.mkdtemp()
    monkeypatch.setenv("XDG_RUNTIME_DIR", runtime)
    try:
        folder = location.host_folder()
        dead = folder / "dead.sock"
        left = socket.socket(socket.AF_UNIX)
        left.bind(str(dead))
        left.close()  # bound, never listened: what a killed host leaves
        forking.remove_if_dead(dead)
        assert not dead.exists()
        live = folder / "live.sock"
        listening = socket.socket(socket.AF_UNIX)
        listening.bind(str(live))
        listening.listen(1)
        forking.remove_if_dead(live)
        assert live.exists()
        listening.close()
        # Nobody listens: no connection to attach to.
        server = forking.ForkServer(
            on_exit=lambda *a: None,
            on_notice=lambda *a: None,
            on_stopped=lambda s: None,
        )
        with pytest.raises(ForkServerFailed):
            server.attach(dead)
        assert server.stopped.is_set() and not server.running
    finally:
        shutil.rmtree(runtime)


async def test_a_session_no_host_of_the_machine_runs_is_not_reached(monkeypatch):
    """(kernel_processes.reach(): a kernel call for a session another web
    process holds, which no host here runs: another machine's.) A socket
    left by a killed host of older code is asked nothing, and removed."""
    runtime = tempfile.mkdtemp()
    monkeypatch.setenv("XDG_RUNTIME_DIR", runtime)
    processes_here = KernelProcesses()
    try:
        older = location.host_socket().with_name(
            f"{location.project_key()}-0123456789ab.sock"
        )
        left = socket.socket(socket.AF_UNIX)
        left.bind(str(older))
        left.close()
        start = KernelStart(
            notebook_file=str(_Notebook.path),
            slug="square",
            user="",
            options={},
            memory_mb=None,
            cell_timeout=None,
            deadline=5.0,
            session_ttl=0,
            log_output=False,
            owner="someone",
        )
        assert await processes_here.reach("s_elsewhere", start) is None
        assert not older.exists()
    finally:
        server = processes_here.fork_server
        if server is not None:
            await asyncio.to_thread(server.stop)
        shutil.rmtree(runtime, ignore_errors=True)


def test_a_hosts_code_is_the_code_key_in_its_socket_name():
    from django_notebooks.kernels import forking

    assert location.code_of(Path("/run/h/3f2a9c1e7b4d-8e1f0a2b3c4d.sock")) == (
        "8e1f0a2b3c4d"
    )
    server = forking.ForkServer(
        on_exit=lambda *a: None, on_notice=lambda *a: None, on_stopped=lambda s: None
    )
    assert server.code == ""  # not connected yet
    server.path = Path("/run/h/3f2a9c1e7b4d-8e1f0a2b3c4d.sock")
    assert server.code == "8e1f0a2b3c4d"
