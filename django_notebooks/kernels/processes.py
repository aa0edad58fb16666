"""The web process's kernel processes: one per notebook session.

A session's kernel process is forked when its websocket first connects, by
the machine's kernel host (``forking.py``, ``forkserver.py``), and serves
on a Unix socket in the host's private folder. A session whose kernel the
host runs already (its page reconnected after this web server restarted)
gets that kernel back, as it was. Every ASGI
call for the session (its websocket, its kernel calls, its downloads) is
relayed there (``tunnel.py``), with a deadline; calls that belong to no
session (the page, marimo's files) are answered by marimo in the web
process, as in thread mode.

The web process never signals a kernel: it asks the kernel host, by the
kernel's id, to end it, and hears from the kernel host when a kernel ended
and why, and what its page should be told (a cell being stopped, memory
that ran out). Whatever ends a kernel, the session's calls learn why
(:class:`KernelEnded`). If the kernel host has gone, a new one is started;
a session whose kernel still cannot start is refused
(:class:`KernelUnavailable`): a visitor's code never runs in the web
server in process mode.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import functools
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from django_notebooks import notices
from django_notebooks.kernels import cgroups, location, tunnel, wire
from django_notebooks.kernels.forking import (
    ForkRefused,
    ForkServer,
    ForkServerFailed,
    new_kernel_id,
    remove_if_dead,
)
from django_notebooks.notices import Notice
from django_notebooks.sessions import owners
from django_notebooks.sessions.owners import Caps, Claim

logger = logging.getLogger(__name__)

# Seconds a session waits for its kernel process to start (the first one
# waits for the kernel host too).
START_TIMEOUT = 90.0
# Seconds a call waits for the kernel host's word on how a process ended
# (it comes a moment after the kernel's socket closed).
EXIT_WAIT = 2.0
# Seconds a kernel host (this code's, or an older code's) may take to say
# whether it runs a session's kernel.
ASK_TIMEOUT = 5.0
# Ends nobody asked for, logged as warnings.
UNASKED = frozenset(
    {
        wire.Cause.TIMEOUT,
        wire.Cause.UNRESPONSIVE,
        wire.Cause.MEMORY,
        wire.Cause.CRASHED,
    }
)


class KernelEnded(Exception):
    """The session's kernel process has ended; ``notice`` says why, in the
    page's words."""

    def __init__(self, notice: Notice) -> None:
        super().__init__(notice.text)
        self.notice = notice


class KernelUnavailable(Exception):
    """No kernel process could be started for the session (the kernel host
    could not start, or could not fork, even after a restart)."""


class OverCap(Exception):
    """The machine's kernel host refused a new session's kernel: the
    sessions of the machine are at one of the caps (``claim``)."""

    def __init__(self, claim: Claim) -> None:
        super().__init__(claim.value)
        self.claim = claim


class KernelNotAnswering(Exception):
    """The kernel did not answer a call within its deadline; it may be busy
    or stopped, but it has not ended."""


@dataclass(frozen=True)
class KernelStart:
    """What a new session's kernel is, for its kernel host and the log."""

    notebook_file: str
    slug: str
    user: str
    options: dict[str, Any]
    memory_mb: int | None
    cell_timeout: int | None
    #: limits.call_deadline(): how long its calls may wait for an answer.
    deadline: float
    session_ttl: float
    log_output: bool
    #: Who opened the session (``records.owner_hash``): only they get its
    #: kernel back from the host (a page reconnecting after a deploy).
    owner: str = ""
    #: For the caps the host keeps over the machine's sessions: the person
    #: (``user:<id>``, ``visitor:<id>``), the client address, the caps.
    person: str = ""
    address: str | None = None
    caps: Caps | None = None
    #: The notebook file's version (``visitor.file_version``) if spare kernels
    #: may run it before a visitor comes (it does not read the visitor);
    #: empty if not.
    pre_run: str = ""


@dataclass(eq=False)
class KernelProcess:
    """One session's kernel process, seen from the web process."""

    session_id: str
    kernel_id: int
    start: KernelStart
    started_at: float = field(default_factory=time.time)
    server: ForkServer | None = None
    pid: int | None = None
    socket_path: str | None = None
    exit_status: int | None = None
    cause: str | None = None
    #: Why the web process ended it, when it did.
    ending: Notice | None = None
    exited: threading.Event = field(default_factory=threading.Event)
    #: Its kernel host's answer (any thread, any loop).
    forked: concurrent.futures.Future[wire.Forked] = field(
        default_factory=concurrent.futures.Future
    )
    #: Set once its fork request has gone to the kernel host.
    requested: bool = False
    #: Its start was given up before it was requested: end it when it is.
    abandoned: bool = False
    #: The host had the session's kernel running already (a page that
    #: reconnected after the web server restarted).
    resumed: bool = False
    #: Its calls' connections (HTTP calls reuse them).
    line: tunnel.Line = field(init=False)
    _waiters: int = 0
    _listeners: set[Callable[[Notice], None]] = field(default_factory=set)
    _request_lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.line = tunnel.Line(self._connect)

    @property
    def has_exited(self) -> bool:
        return self.exited.is_set()

    def set_exited(self) -> None:
        """It has ended: its callers learn, its kept connections close."""
        self.exited.set()
        self.line.close()

    async def started(self) -> int:
        """Its pid, once it has started (``ForkRefused``,
        ``ForkServerFailed`` or ``TimeoutError`` if it did not).

        A caller that stops waiting does not cancel the start: another
        websocket of the same session may still be waiting for it. When the
        last one gives up, the kernel is ended.
        """
        self._waiters += 1
        try:
            answer = asyncio.shield(asyncio.wrap_future(self.forked))
            forked = await asyncio.wait_for(answer, START_TIMEOUT)
        except (asyncio.CancelledError, TimeoutError):
            if self._waiters == 1 and not self.forked.done():
                self.end(notices.SESSION_LOST, now=True)
            raise
        finally:
            self._waiters -= 1
        self.pid, self.socket_path = forked.pid, forked.socket_path
        self.resumed = forked.resumed
        return forked.pid

    async def call(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """Relay one ASGI call to the process. A websocket's page hears, on
        it, what the kernel host says of the kernel (a cell being stopped).

        Raises :class:`KernelEnded` once it has ended,
        :class:`KernelNotAnswering` past the call's deadline.
        """
        try:
            await self.started()
        except (ForkRefused, ForkServerFailed, TimeoutError) as error:
            logger.error("A notebook's kernel process did not start: %s", error)
            raise KernelEnded(notices.CANNOT_START) from error
        stop_listening = (
            self.listen(_notices_to(send)) if scope["type"] == "websocket" else None
        )
        try:
            await self.line.call(scope, receive, send, deadline=self.start.deadline)
        except (tunnel.TunnelClosed, ConnectionError, FileNotFoundError) as error:
            raise KernelEnded(await self.why_ended()) from error
        except tunnel.NotAnswering:
            if self.has_exited:
                raise KernelEnded(await self.why_ended()) from None
            raise KernelNotAnswering from None
        finally:
            if stop_listening is not None:
                stop_listening()

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        assert self.socket_path is not None
        return await asyncio.open_unix_connection(self.socket_path)

    async def why_ended(self) -> Notice:
        """What to tell the page about the process's end."""
        if not self.has_exited:
            # The kernel host's word comes a moment after the socket closed.
            await asyncio.to_thread(self.exited.wait, EXIT_WAIT)
        return self.ending or notices.KERNEL_CRASHED

    def end(self, notice: Notice, *, now: bool = False) -> None:
        """Ask its kernel host to end it (its whole process group), telling
        its page ``notice``: ``SIGTERM``, ``SIGKILL`` if it lingers (at once
        with ``now``). One still starting is ended as soon as it starts."""
        self.ending = self.ending or notice
        with self._request_lock:
            if not self.requested:
                self.abandoned = True
                return
        if self.server is not None and not self.has_exited:
            self.server.end(self.kernel_id, now=now)

    def requested_from(self, server: ForkServer) -> None:
        """Its fork request has gone to ``server`` (ended at once if its
        start was given up meanwhile)."""
        with self._request_lock:
            self.server, self.requested = server, True
            abandoned = self.abandoned
        if abandoned:
            server.end(self.kernel_id, now=True)

    def listen(self, listener: Callable[[Notice], None]) -> Callable[[], None]:
        """Hear what the kernel's page should be told (on the kernel host's
        reader thread); returns the function that stops it."""
        self._listeners.add(listener)
        return lambda: self._listeners.discard(listener)

    def tell(self, notice: Notice) -> None:
        """Tell the kernel's page ``notice`` (any open websocket of it)."""
        for listener in list(self._listeners):
            listener(notice)


def _notices_to(send: Any) -> Callable[[Notice], None]:
    """A listener that sends each notice as a frame on the websocket whose
    ASGI ``send`` this is (called from any thread)."""
    loop = asyncio.get_running_loop()
    sending: set[asyncio.Task[None]] = set()

    def send_now(notice: Notice) -> None:
        task = loop.create_task(
            send({"type": "websocket.send", "text": notice.frame()})
        )
        sending.add(task)
        task.add_done_callback(sending.discard)

    def listener(notice: Notice) -> None:
        if not loop.is_closed():
            loop.call_soon_threadsafe(send_now, notice)

    return listener


def notice_for_end(process: KernelProcess, cause: str) -> Notice:
    """What a kernel's page is told when it ended for ``cause``."""
    if process.ending is not None:
        return process.ending
    timeout = float(process.start.cell_timeout or 0)
    return {
        wire.Cause.TIMEOUT: notices.kernel_stopped(timeout),
        wire.Cause.UNRESPONSIVE: notices.KERNEL_UNRESPONSIVE,
        wire.Cause.MEMORY: notices.KERNEL_OUT_OF_MEMORY,
    }.get(wire.Cause(cause), notices.KERNEL_CRASHED)


def notice_for(happening: str, seconds: float) -> Notice:
    """What a kernel's page is told of something that happened in it."""
    if happening == wire.Happening.STOPPING:
        return notices.cell_stopping(seconds)
    if happening == wire.Happening.STOPPED:
        return notices.cell_stopped(seconds)
    return notices.OUT_OF_MEMORY


def describe_status(status: int) -> str:
    """A wait status in words, for the log."""
    if os.WIFSIGNALED(status):
        number = os.WTERMSIG(status)
        try:
            name = signal.Signals(number).name
        except ValueError:
            name = str(number)
        return f"killed by signal {name}"
    return f"exit status {os.WEXITSTATUS(status)}"


class KernelProcesses:
    """This web process's kernel processes, by session id, and the fork
    server that runs them (a new one once it has stopped)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._server_lock = threading.Lock()
        self._by_session: dict[str, KernelProcess] = {}
        self._by_id: dict[int, KernelProcess] = {}
        self._server: ForkServer | None = None
        self._warming = threading.Lock()

    @property
    def fork_server(self) -> ForkServer | None:
        """The kernel host in use, if one has started."""
        return self._server

    def warm(self) -> None:
        """Start the kernel host in the background unless it runs."""
        server = self._server
        if (server is not None and server.running) or self._warming.locked():
            return

        def start() -> None:
            with self._warming:
                try:
                    self._running_server()
                except ForkServerFailed as error:
                    logger.error("%s", error)

        threading.Thread(
            target=start, name="django-notebooks-warm", daemon=True
        ).start()

    def mechanisms(self) -> cgroups.Mechanisms:
        """What keeps kernels in bounds here: the running kernel host's
        word, or what one started now would use."""
        server = self._server
        if server is not None and server.ready is not None:
            return cgroups.Mechanisms(server.ready.containment, server.ready.memory)
        return _probed_mechanisms()

    def get(self, session_id: str | None) -> KernelProcess | None:
        """The kernel process of ``session_id``, started or starting, unless
        it has ended."""
        if not session_id:
            return None
        process = self._by_session.get(session_id)
        return None if process is None or process.has_exited else process

    def all(self) -> list[KernelProcess]:
        return [p for p in list(self._by_session.values()) if not p.has_exited]

    async def start(self, session_id: str, start: KernelStart) -> KernelProcess:
        """Fork a kernel process for a new session (or, when the session's
        websocket came twice at once, wait for the one starting). A fork
        server that has stopped is replaced once; :class:`KernelUnavailable`
        if the kernel still cannot start."""
        starting = self.get(session_id)
        if starting is not None:
            await starting.started()
            return starting
        failure: Exception | None = None
        for _attempt in range(2):
            process = KernelProcess(session_id, new_kernel_id(), start)
            with self._lock:
                self._by_session[session_id] = process
                self._by_id[process.kernel_id] = process
            try:
                # The first call starts the kernel host: not on the event loop.
                await asyncio.to_thread(self._request, process)
                await process.started()
                self._resumed(process)
                return process
            except ForkServerFailed as error:
                # It stopped (or would not start): the next try starts another.
                self._forget(process)
                failure = error
            except ForkRefused as error:
                self._forget(process)
                if error.cap:
                    raise OverCap(Claim(error.cap)) from None
                failure = error
                break
            except BaseException:
                self._forget(process)
                raise
        logger.error(
            "No kernel process for a session of notebook %s: %s", start.slug, failure
        )
        raise KernelUnavailable(str(failure)) from failure

    async def reach(self, session_id: str, start: KernelStart) -> KernelProcess | None:
        """The kernel the machine's kernel host runs for ``session_id`` and
        its owner (``start.owner``), when another web process holds the
        session; ``None`` if no host of this machine runs it for them."""
        process = self.get(session_id)
        if process is not None:
            return process
        process = KernelProcess(session_id, new_kernel_id(), start)
        try:
            found = await asyncio.to_thread(self._reach, process)
        except ForkServerFailed:
            return None
        if not found:
            return None
        await process.started()
        with self._lock:
            self._by_session[session_id] = process
        self._resumed(process)
        return process

    def _reach(self, process: KernelProcess) -> bool:
        """Ask the hosts for a session's running kernel (in a thread)."""
        server = self._running_server()
        fork = self._fork_message(process, running_only=True)
        return _take_running(server, process, fork) or self._running_in_older_host(
            process, fork
        )

    def _resumed(self, process: KernelProcess) -> None:
        """A kernel the host had running already has its own id."""
        forked = process.forked.result()
        if forked.kernel and forked.kernel != process.kernel_id:
            with self._lock:
                self._by_id.pop(process.kernel_id, None)
                process.kernel_id = forked.kernel
                self._by_id[forked.kernel] = process

    def _request(self, process: KernelProcess) -> None:
        """Send the process's fork request to a running kernel host (in a
        thread: it may start one). A session whose kernel a host of older
        code runs (the page reconnected after a deploy) gets that kernel."""
        server = self._running_server()
        fork = self._fork_message(process)
        if process.start.owner and self._running_in_older_host(process, fork):
            return
        server.fork(fork, process.forked)
        process.requested_from(server)

    @staticmethod
    def _fork_message(
        process: KernelProcess, *, running_only: bool = False
    ) -> wire.Fork:
        start = process.start
        return wire.Fork(
            id=process.kernel_id,
            notebook=start.notebook_file,
            slug=start.slug,
            session_id=process.session_id,
            user=start.user,
            options=start.options,
            memory_mb=start.memory_mb,
            cell_timeout=start.cell_timeout,
            unresponsive_after=start.deadline,
            session_ttl=start.session_ttl,
            log_output=start.log_output,
            owner=start.owner,
            running_only=running_only,
            person=start.person,
            address=start.address,
            caps=None
            if start.caps is None or running_only
            else dataclasses.asdict(start.caps),
            pre_run=start.pre_run,
        )

    def _running_in_older_host(self, process: KernelProcess, fork: wire.Fork) -> bool:
        """Whether a kernel host of the project's older code runs the
        session's kernel for its owner; if so it is ``process``'s now, on a
        connection of its own (closed when the kernel ends).

        Costs nothing while no older host runs (one look at the hosts'
        folder): only during a deploy's overlap are they asked, each in
        one round trip."""
        try:
            paths = location.older_hosts()
        except (OSError, location.UnsafeFolder):
            return False
        for path in paths:
            host = ForkServer(
                on_exit=self._exited,
                on_notice=self._notice,
                on_stopped=self._server_stopped,
            )
            try:
                host.attach(path)
            except ForkServerFailed:
                remove_if_dead(path)  # a host that was killed left it
                continue
            if _take_running(
                host, process, dataclasses.replace(fork, running_only=True)
            ):
                return True
            host.stop()
        return False

    def _running_server(self) -> ForkServer:
        """The kernel host, started (or started again) if it does not run."""
        with self._server_lock:
            server = self._server
            if server is None or not server.running:
                server = ForkServer(
                    on_exit=self._exited,
                    on_notice=self._notice,
                    on_stopped=self._server_stopped,
                )
                server.start()
                self._server = server
                assert server.ready is not None
                logger.info(
                    "Kernel host ready (pid %s): each kernel is kept in "
                    "%s; its memory is limited by %s",
                    server.pid,
                    server.ready.containment,
                    server.ready.memory,
                )
            return server

    def _forget(self, process: KernelProcess) -> None:
        """A process that did not start (or whose start was given up: if it
        was forked, its end is reported and frees its session's place)."""
        with self._lock:
            if self._by_session.get(process.session_id) is process:
                del self._by_session[process.session_id]
            self._by_id.pop(process.kernel_id, None)
        process.set_exited()

    def _exited(self, server: ForkServer, exited: wire.Exited) -> None:
        """The kernel host says a kernel has ended (on its reader thread)."""
        with self._lock:
            process = self._by_id.pop(exited.id, None)
            if (
                process is not None
                and self._by_session.get(process.session_id) is process
            ):
                del self._by_session[process.session_id]
            # A kernel whose start was given up is no longer known here; its
            # session may have another kernel by now (a retried start).
            replaced = self.get(exited.session_id) is not None
        if not replaced:
            # Its place under the caps on sessions is free now.
            owners.bindings.kernel_ended(exited.session_id)
        if process is None:
            return
        process.exit_status, process.cause = exited.status, exited.cause
        process.ending = notice_for_end(process, exited.cause)
        process.set_exited()
        _log_end(process, exited)
        self._leave_if_unused(server)

    def _leave_if_unused(self, server: ForkServer) -> None:
        """Close the connection to a host of older code once none of its
        kernels is this process's: with no web process left, it ends."""
        with self._lock:
            if server is self._server or any(
                p.server is server for p in self._by_id.values()
            ):
                return
        server.stop()

    def _notice(self, server: ForkServer, notice: wire.KernelNotice) -> None:
        process = self._by_id.get(notice.id)
        if process is not None:
            process.tell(notice_for(notice.what, notice.seconds))

    def _server_stopped(self, server: ForkServer) -> None:
        """A kernel host has gone, and its kernel processes with it."""
        with self._lock:
            ended = [p for p in self._by_id.values() if p.server is server]
            for process in ended:
                self._by_id.pop(process.kernel_id, None)
                if self._by_session.get(process.session_id) is process:
                    del self._by_session[process.session_id]
        if ended and not server.stopping:
            logger.error(
                "The kernel host (pid %s) stopped: %d notebook "
                "session(s) ended with it",
                server.pid,
                len(ended),
            )
        for process in ended:
            owners.bindings.kernel_ended(process.session_id)
            process.ending = process.ending or notices.SESSION_LOST
            process.set_exited()

    def end_sessions(self) -> None:
        """End every kernel process (the kernel host stays ready)."""
        for process in self.all():
            process.end(notices.SESSION_LOST)


def _take_running(host: ForkServer, process: KernelProcess, fork: wire.Fork) -> bool:
    """Whether ``host`` runs the session's kernel for its owner (``fork``
    asks for it running only); if so, it is ``process``'s now."""
    answer: concurrent.futures.Future[wire.Forked] = concurrent.futures.Future()
    try:
        host.fork(fork, answer)
        forked = answer.result(timeout=ASK_TIMEOUT)
    except (ForkRefused, ForkServerFailed, concurrent.futures.TimeoutError):
        return False
    process.forked.set_result(forked)
    process.requested_from(host)
    return True


@functools.cache
def _probed_mechanisms() -> cgroups.Mechanisms:
    return cgroups.mechanisms()


def _log_end(process: KernelProcess, exited: wire.Exited) -> None:
    """One line per kernel's end: a warning when nobody asked for it."""
    cause = wire.Cause(exited.cause)
    level = logging.WARNING if cause in UNASKED else logging.INFO
    why = {
        wire.Cause.ASKED: "ended by the bridge",
        wire.Cause.CLOSED: "its page was gone for session_ttl",
        wire.Cause.TIMEOUT: "a cell ran past CELL_TIMEOUT and did not stop",
        wire.Cause.UNRESPONSIVE: "it stopped answering",
        wire.Cause.MEMORY: "it ran out of memory (MEMORY_MB)",
        wire.Cause.CRASHED: "it crashed",
    }[cause]
    logger.log(
        level,
        "The kernel of notebook %s (session %s, user %s, pid %s) ended: %s (%s)",
        process.start.slug,
        process.session_id,
        process.start.user,
        exited.pid,
        why,
        describe_status(exited.status),
    )


kernel_processes = KernelProcesses()
