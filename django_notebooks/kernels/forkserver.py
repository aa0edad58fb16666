"""The kernel host: the machine's fork server, run as ``python -m
django_notebooks.kernels.forkserver <socket>`` by the first web process of
the project that needs a kernel (``forking.py``), or by ``manage.py
notebooks kernel-host``. It listens on the Unix socket ``<socket>`` (in a
private folder; only its own user may connect: peer credentials), gets
ready once, and then forks a kernel process (``child.py``) for each request
of any web process connected to it.

A request for a session whose kernel lives here already, from the login
that opened it, gets that kernel back: a web process started after a
deploy reconnects the page to its own kernel. When no web process has been
connected for its grace period (``KERNEL_HOST_GRACE``), it ends its kernels
and exits.

It is the one owner of its kernel processes: it starts them, signals them
and reaps them, so that no signal ever goes to a pid that has been reused.
For each kernel it

- makes its listening socket (in a private folder it removes as it exits),
  its status channel and, when notebook output is logged, its output pipe;
- makes it a process group (and a cgroup, where it may), and ends the whole
  group when the kernel ends, before reaping it;
- times its cells against ``CELL_TIMEOUT`` from the kernel's own reports
  (interrupt, then kill), lowers its priority when a cell runs long or when
  it uses the CPU while no cell runs, and ends it if it stops answering
  pings while no cell runs;
- reports its end to the web processes using it, with why.

Its loop is single-threaded: a
process may only fork while no other thread runs. This code runs only in
the kernel host: the test suite's in-process coverage does not see it;
tests/e2e/test_isolation.py runs it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import secrets
import selectors
import shutil
import signal
import socket
import struct
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django_notebooks.kernels import cgroups, titles, wire

logger = logging.getLogger(__name__)
output_logger = logging.getLogger("django_notebooks.notebook_output")

COLD = "--cold"  # start without the warm-up session
GRACE = "--grace"  # seconds it stays up with no web process connected
# The longest the loop sleeps: the resolution of its timers.
TICK = 0.5
# Seconds a new host waits for the web process that started it to connect,
# whatever its grace period.
FIRST_CLIENT_WAIT = 30.0
# Seconds a cell runs before its kernel process goes to the lowest priority.
DEMOTE_AFTER = 1.0
LOWEST_PRIORITY = 19
# A kernel running no cell that uses more than this share of a core over a
# second (a thread a cell left spinning) is demoted too.
IDLE_CPU_SHARE = 0.2
# Seconds between pings to a kernel's event loop.
PING_EVERY = 2.0
LISTEN_BACKLOG = 64
# Seconds the host waits for a web process to take a message (one that
# does not is disconnected).
SEND_TIMEOUT = 10.0
SOCKETS_PREFIX = "django-notebooks-"
# Spares waiting at most, all notebooks together, and the seconds one waits
# before it ends unused (its notebook no longer in use).
MAX_SPARES = 8
# A new session's replacement spare is forked once the session's kernel has
# been idle this long after a cell (its first run is most likely over: the
# fork and the spare's warm-up would otherwise take CPU from it), or this
# long after the session's start at the latest.
SPARES_AFTER_IDLE = 0.05
SPARES_AT_LATEST = 2.0
SPARE_MAX_AGE = 600.0
SPARES = "--spares"  # KERNEL_SPARES
SPARE_MAX_AGE_OPTION = "--spare-max-age"  # KERNEL_SPARE_MAX_AGE
LISTENING = "--listening"  # the fd of its socket, bound already
OWNER_FILE = "fork-server.pid"
# What a kernel's printed output may put in the server's log (when the
# project asks for it): lines a second, and characters a line.
OUTPUT_LINES_PER_SECOND = 20
OUTPUT_LINE_CHARS = 1000
CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _warm(run_session: bool) -> None:
    """Import what every kernel process needs, once, before any fork."""
    import django

    django.setup()
    _log_like_the_server()
    import marimo  # noqa: F401

    from django_notebooks.kernels import child

    child.warm(run_session=run_session)
    from django.db import connections

    # A connection inherited by two processes would mix their traffic.
    connections.close_all()


def _log_like_the_server() -> None:
    """Where the project configured no logging (the ASGI server configures
    its own, in the web process only), the bridge's messages still go to
    the server's output, the kernel host's standard error."""
    bridge = logging.getLogger("django_notebooks")
    if bridge.handlers or logging.getLogger().handlers:
        return
    handler = logging.StreamHandler()
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)-8s %(name)s %(message)s")
    )
    bridge.addHandler(handler)
    bridge.setLevel(logging.INFO)


@dataclass(eq=False)
class Kernel:
    """One kernel process, as its parent keeps it."""

    fork: wire.Fork
    pid: int
    status: socket.socket
    socket_path: Path
    cgroup: Path | None
    output: int | None = None
    output_log: OutputLog | None = None
    decoder: wire.Decoder = field(default_factory=wire.Decoder)
    status_open: bool = True
    #: When the cell running now started (monotonic), if one runs.
    cell_since: float | None = None
    #: When the last cell ended, or the kernel started.
    cell_ended_at: float = field(default_factory=time.monotonic)
    demoted: bool = False
    #: CPU ticks and when they were read, to see CPU used while no cell runs.
    cpu_seen: tuple[float, int] | None = None
    ping_number: int = 0
    pinged_at: float = 0.0
    answered_at: float = field(default_factory=time.monotonic)
    #: When it was forked (monotonic).
    started_at: float = field(default_factory=time.monotonic)
    #: Whether its page's websocket is connected (a new kernel's is about
    #: to be), and since when it is not: the caps the host keeps count an
    #: open page's kernel, and end a closed tab's to make room.
    page_open: bool = True
    page_closed_at: float | None = None
    #: When the session it was given makes its notebook's next spare be
    #: forked (monotonic), until that is done, and when at the latest: see
    #: SPARES_AFTER_IDLE.
    spares_due: float | None = None
    spares_latest: float = 0.0
    #: Why it is being ended, once its parent has begun to end it.
    ending: wire.Cause | None = None
    #: When its group gets SIGKILL (a SIGTERM's grace, or an interrupted
    #: cell's), and why.
    kill_at: float | None = None
    kill_cause: wire.Cause | None = None

    @property
    def id(self) -> int:
        return self.fork.id

    @property
    def stopping_a_cell(self) -> bool:
        return self.kill_cause is wire.Cause.TIMEOUT and self.ending is None


class OutputLog:
    """What one kernel prints, into the server's log, bounded: at most
    OUTPUT_LINES_PER_SECOND lines a second, each cut to OUTPUT_LINE_CHARS;
    the rest is counted and said."""

    def __init__(self, fork: wire.Fork) -> None:
        self.name = f"{fork.slug} {fork.session_id}"
        self.partial = b""
        self.second = 0
        self.lines = 0
        self.dropped = 0

    def feed(self, data: bytes, now: float) -> None:
        lines = (self.partial + data).split(b"\n")
        self.partial = lines.pop()[: OUTPUT_LINE_CHARS * 4]
        for line in lines:
            self._line(line, now)

    def tick(self, now: float) -> None:
        """A new second: say what the last one left out."""
        if int(now) != self.second:
            self._say_dropped()
            self.second, self.lines = int(now), 0

    def _line(self, line: bytes, now: float) -> None:
        self.tick(now)
        if self.lines >= OUTPUT_LINES_PER_SECOND:
            self.dropped += 1
            return
        self.lines += 1
        text = line.decode(errors="replace")[:OUTPUT_LINE_CHARS]
        output_logger.info("[%s] %s", self.name, text)

    def _say_dropped(self) -> None:
        if self.dropped:
            output_logger.warning(
                "[%s] %d lines of output left out of the log (more than %d a second)",
                self.name,
                self.dropped,
                OUTPUT_LINES_PER_SECOND,
            )
            self.dropped = 0

    def close(self) -> None:
        if self.partial:
            self._line(self.partial, time.monotonic())
        self._say_dropped()


@dataclass(eq=False)
class Client:
    """A web process connected to the host."""

    sock: socket.socket
    pid: int
    decoder: wire.Decoder = field(default_factory=wire.Decoder)


class ForkServer:
    """The kernel host's loop, its web processes and its kernels."""

    def __init__(
        self,
        listener: socket.socket,
        ready: wire.Ready,
        kernel_cgroups: cgroups.KernelCgroups | None,
        *,
        grace: float,
        spares: int = 0,
        spare_max_age: float = SPARE_MAX_AGE,
    ) -> None:
        self.listener = listener
        self.ready = ready
        self.directory = Path(ready.directory)
        self.cgroups = kernel_cgroups
        self.grace = grace
        self.kernels: dict[int, Kernel] = {}  # by pid
        self.by_id: dict[int, Kernel] = {}
        self.by_session: dict[str, Kernel] = {}
        #: Spares (kernels forked ahead, for no session yet), by the
        #: notebook and limits they were forked for (_spare_key).
        self.spares: dict[tuple[Any, ...], list[Kernel]] = {}
        self.spare_count = spares
        self.spare_max_age = spare_max_age
        #: The web processes that use each kernel (by kernel id): they hear
        #: of its end and of what its page should be told.
        self.users: dict[int, set[Client]] = {}
        self.clients: set[Client] = set()
        #: Since when no web process has been connected (monotonic).
        self.alone_since: float | None = time.monotonic()
        self.had_client = False
        self.selector = selectors.DefaultSelector()
        wake_read, wake_write = os.pipe()
        os.set_blocking(wake_read, False)
        os.set_blocking(wake_write, False)
        self.wake = (wake_read, wake_write)
        signal.set_wakeup_fd(wake_write)
        signal.signal(signal.SIGCHLD, lambda number, frame: None)
        # systemd (or an operator) stopping the whole service: the kernels
        # are ended first (see close()).
        signal.signal(signal.SIGTERM, lambda number, frame: None)
        self.stopping = False
        self.ticked = 0.0
        listener.setblocking(False)
        self.selector.register(listener, selectors.EVENT_READ, self._accept)
        self.selector.register(wake_read, selectors.EVENT_READ, self._woken)

    # The loop.

    def serve(self) -> None:
        while not self.stopping:
            for key, _events in self.selector.select(self._wait()):
                key.data()
            self._reap()
            now = time.monotonic()
            self._make_spares_due(now)
            if now - self.ticked >= TICK / 2:
                self.ticked = now
                self._tick(now)
                self._end_old_spares(now)
                self._end_when_alone(now)
        self.close()

    def _end_when_alone(self, now: float) -> None:
        """With no web process connected for the grace period, end; at
        once with no kernel either (the next web process starts a host):
        a host of older code asked for a session it does not run goes as
        soon as the asker does."""
        if self.alone_since is None or math.isinf(self.grace):
            return  # a service of its own: it runs until it is stopped
        sessions = sum(1 for k in self.kernels.values() if k.fork.session_id)
        if self.had_client and not sessions:
            self.stopping = True
            return
        grace = self.grace if self.had_client else max(self.grace, FIRST_CLIENT_WAIT)
        if now - self.alone_since >= grace:
            if sessions:
                logger.info(
                    "No web server has used the kernel host for %.0f s: "
                    "ending its %d kernel(s)",
                    now - self.alone_since,
                    sessions,
                )
            self.stopping = True

    def _woken(self) -> None:
        while True:
            try:
                received = os.read(self.wake[0], 512)
            except BlockingIOError:
                return
            if not received:
                return
            if signal.SIGTERM in received:
                self.stopping = True

    # Web processes.

    def _accept(self) -> None:
        try:
            sock, _ = self.listener.accept()
        except OSError:  # BlockingIOError: another turn took it
            return
        pid, uid = peer_credentials(sock)
        if uid != os.getuid():
            # The folder is private already; this holds even if it is not.
            logger.warning(
                "The kernel host refused a connection from process %s of "
                "another user (uid %s)",
                pid,
                uid,
            )
            sock.close()
            return
        client = Client(sock, pid)
        self.clients.add(client)
        self.had_client = True
        self.alone_since = None
        sock.setblocking(False)
        self.selector.register(sock, selectors.EVENT_READ, lambda: self._from(client))
        self._tell(client, self.ready)

    def _drop(self, client: Client) -> None:
        """A web process has gone (or stopped taking messages): its
        sessions' kernels stay, for another web process to reconnect."""
        if client not in self.clients:
            return
        self.clients.discard(client)
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(client.sock)
        client.sock.close()
        for users in self.users.values():
            users.discard(client)
        if not self.clients:
            self.alone_since = time.monotonic()

    def _from(self, client: Client) -> None:
        try:
            data = client.sock.recv(wire.READ_SIZE)
            messages = client.decoder.feed(data) if data else None
        except BlockingIOError:
            return
        except (OSError, wire.WireError):
            messages = None
        if messages is None:
            self._drop(client)
            return
        for message in messages:
            if isinstance(message, wire.Fork):
                self._open(client, message)
            elif isinstance(message, wire.End):
                kernel = self.by_id.get(message.id)
                if kernel is not None:  # else ended already, or never forked
                    self._stop(kernel, wire.Cause.ASKED, now=message.now)

    def _tell(self, client: Client, message: Any) -> None:
        try:
            client.sock.settimeout(SEND_TIMEOUT)
            try:
                wire.send(client.sock, message)
            finally:
                client.sock.setblocking(False)
        except OSError:
            self._drop(client)

    def _tell_users(self, kernel: Kernel, message: Any) -> None:
        for client in list(self.users.get(kernel.id, ())):
            self._tell(client, message)

    # Forking.

    def _open(self, client: Client, fork: wire.Fork) -> None:
        """The kernel of ``fork``'s session: the one running here, if its
        owner asks again (a reconnect, perhaps through another web
        process), or a new one."""
        running = self.by_session.get(fork.session_id)
        if running is not None and running.ending is None:
            if (
                not fork.owner
                or running.fork.owner != fork.owner
                or running.fork.slug != fork.slug
            ):
                self._tell(client, wire.ForkRefused(fork.id, "not the session's owner"))
                return
            self.users.setdefault(running.id, set()).add(client)
            self._tell(
                client,
                wire.Forked(
                    fork.id,
                    running.pid,
                    str(running.socket_path),
                    kernel=running.id,
                    resumed=True,
                ),
            )
            return
        if fork.running_only:
            self._tell(client, wire.ForkRefused(fork.id, wire.NOT_RUNNING))
            return
        if fork.caps is not None and not self._make_room(client, fork):
            return
        self._fork(client, fork)

    def _make_room(self, client: Client, fork: wire.Fork) -> bool:
        """Whether a new session fits under the caps on sessions, counted
        over every kernel of the machine (whichever web process asked for
        it): as a web process counts its own (``owners.room_for``), the
        person's oldest closed tabs end to make room; if that is not enough,
        the fork is refused with the cap."""
        from django_notebooks.sessions import owners

        assert fork.caps is not None
        live = [
            (
                kernel.fork.session_id,
                owners.Binding(
                    _owner_key(kernel.fork),
                    kernel.fork.slug,
                    {},
                    address=kernel.fork.address,
                    connections=int(kernel.page_open),
                    disconnected_at=kernel.page_closed_at,
                ),
            )
            for kernel in self.kernels.values()
            if kernel.ending is None and kernel.fork.person
        ]
        refused, to_end = owners.room_for(
            live, _owner_key(fork), fork.address, owners.Caps(**fork.caps)
        )
        if refused is not None:
            self._tell(
                client,
                wire.ForkRefused(fork.id, "over a cap on sessions", cap=refused.value),
            )
            return False
        for ending in to_end:
            kernel = self.by_session.get(ending.session_id)
            if kernel is not None:
                # At once: the new kernel is forked right after.
                self._stop(kernel, wire.Cause.ASKED, now=True)
        return True

    def _fork(self, client: Client, fork: wire.Fork) -> None:
        """The new kernel of ``fork``'s session: a spare made ahead for its
        notebook if there is one (replaced after), else one forked now."""
        kernel = self._take_spare(fork)
        from_spare = kernel is not None
        if kernel is None:
            try:
                kernel = self._start_kernel(fork)
            except Exception as error:
                # Refused (a notebook that cannot be read, a fork the system
                # refused): the web process refuses that session with a notice.
                logger.error(
                    "Could not start a kernel for notebook %s: %r", fork.slug, error
                )
                self._tell(client, wire.ForkRefused(fork.id, repr(error)))
                return
        self.by_session[fork.session_id] = kernel
        self.users[kernel.id] = {client}
        self._tell(
            client,
            wire.Forked(fork.id, kernel.pid, str(kernel.socket_path), kernel=kernel.id),
        )
        if self.spare_count > 0:
            # Its notebook's next spare, once its first run is done (a spare
            # that ran the notebook ahead has nothing left to run: at once).
            now = time.monotonic()
            kernel.spares_latest = now + SPARES_AT_LATEST
            ran_ahead = from_spare and bool(fork.pre_run)
            kernel.spares_due = now if ran_ahead else kernel.spares_latest

    def _start_kernel(self, fork: wire.Fork) -> Kernel:
        """Fork a kernel and watch it."""
        kernel = self._fork_kernel(fork)
        self.kernels[kernel.pid] = kernel
        self.by_id[kernel.id] = kernel
        self.selector.register(
            kernel.status, selectors.EVENT_READ, lambda: self._from_kernel(kernel)
        )
        if kernel.output is not None:
            self.selector.register(
                kernel.output, selectors.EVENT_READ, lambda: self._output(kernel)
            )
        return kernel

    # Spares: kernels forked ahead, for the notebooks in use.

    def _take_spare(self, fork: wire.Fork) -> Kernel | None:
        """A spare for ``fork``'s notebook and limits, made the session's
        kernel (its title and log name say so from now on)."""
        spares = self.spares.get(_spare_key(fork), [])
        while spares:
            kernel = spares.pop(0)
            if kernel.ending is not None or not kernel.status_open:
                continue
            kernel.fork = dataclasses.replace(fork, id=kernel.id)
            if kernel.output_log is not None:
                kernel.output_log.name = f"{fork.slug} {fork.session_id}"
            try:
                kernel.status.send(
                    wire.encode(wire.Assigned(fork.session_id, fork.user))
                )
            except OSError:
                continue  # it is ending: its end is reaped as any other's
            return kernel
        return None

    def _wait(self) -> float:
        """How long the loop may wait for its sockets: until its next tick,
        or a spare due sooner."""
        due = [k.spares_due for k in self.kernels.values() if k.spares_due is not None]
        if not due:
            return TICK
        return max(0.0, min(TICK, min(due) - time.monotonic()))

    def _make_spares_due(self, now: float) -> None:
        for kernel in list(self.kernels.values()):
            if kernel.spares_due is not None and now >= kernel.spares_due:
                kernel.spares_due = None
                if kernel.ending is None:
                    self._make_spares(kernel.fork)

    def _make_spares(self, fork: wire.Fork) -> None:
        """Keep KERNEL_SPARES spares ready for ``fork``'s notebook and limits
        (fewer once MAX_SPARES wait in all), forked after the session's
        answer went out."""
        if self.spare_count <= 0:
            return
        key = _spare_key(fork)
        self._end_stale_pre_runs(fork.notebook)
        spares = self.spares.setdefault(key, [])
        waiting = sum(len(ready) for ready in self.spares.values())
        while len(spares) < self.spare_count and waiting < MAX_SPARES:
            spare = dataclasses.replace(
                fork,
                id=new_spare_id(),
                session_id="",
                user="",
                owner="",
                person="",
                address=None,
                caps=None,
            )
            try:
                kernel = self._start_kernel(spare)
            except Exception as error:
                logger.warning(
                    "Could not fork a spare kernel for notebook %s: %r",
                    fork.slug,
                    error,
                )
                return
            spares.append(kernel)
            waiting += 1

    def _end_old_spares(self, now: float) -> None:
        """A spare unused for KERNEL_SPARE_MAX_AGE seconds ends (a pre-run
        spare's outputs would be that old); one is forked in its place
        while its notebook is in use, else its memory is better free."""
        for key, spares in list(self.spares.items()):
            aged = [k for k in spares if now - k.started_at >= self.spare_max_age]
            if not aged:
                continue
            for kernel in aged:
                spares.remove(kernel)
                self._stop(kernel, wire.Cause.ASKED, now=False)
            in_use = next(
                (
                    k.fork
                    for k in self.kernels.values()
                    if k.fork.session_id
                    and k.ending is None
                    and _spare_key(k.fork) == key
                ),
                None,
            )
            if in_use is not None:
                self._make_spares(in_use)

    def _end_stale_pre_runs(self, notebook: str) -> None:
        """Spares that ran an older version of the ``notebook`` file end: a
        visitor would see what the file no longer says."""
        from django_notebooks.marimo import visitor

        version = visitor.file_version(Path(notebook))
        for spares in self.spares.values():
            stale = [
                kernel
                for kernel in spares
                if kernel.fork.notebook == notebook
                and kernel.fork.pre_run
                and kernel.fork.pre_run != version
            ]
            for kernel in stale:
                spares.remove(kernel)
                self._stop(kernel, wire.Cause.ASKED, now=False)

    def _fork_kernel(self, fork: wire.Fork) -> Kernel:
        from django_notebooks.kernels import child

        child.prepare(fork)
        socket_path = self.directory / f"{fork.id}.sock"
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        ours, theirs = socket.socketpair()
        read_output, write_output = os.pipe() if fork.log_output else (None, None)
        cgroup = None
        if self.cgroups is not None:
            cgroup = self.cgroups.for_kernel(fork.id, fork.memory_mb)
        try:
            listener.bind(str(socket_path))
            listener.listen(LISTEN_BACKLOG)
            inherited = [
                self.listener.fileno(),
                *(c.sock.fileno() for c in self.clients),
                self.selector.fileno(),
                *self.wake,
                ours.fileno(),
                *(() if read_output is None else (read_output,)),
                *(k.status.fileno() for k in self.kernels.values() if k.status_open),
                *(k.output for k in self.kernels.values() if k.output is not None),
            ]
            parent = os.getpid()
            pid = os.fork()
            if pid == 0:  # the kernel process: never back into this loop
                try:
                    child.run(
                        fork,
                        parent=parent,
                        listener=listener,
                        status=theirs,
                        output=write_output,
                        cgroup=cgroup,
                        memory_by_cgroup=bool(self.cgroups and self.cgroups.memory),
                        inherited=inherited,
                    )
                finally:
                    os._exit(1)
        except BaseException:
            ours.close()
            if read_output is not None:
                os.close(read_output)
            if cgroup is not None:
                cgroups.remove(cgroup)
            with contextlib.suppress(OSError):
                socket_path.unlink()
            raise
        finally:
            listener.close()
            theirs.close()
            if write_output is not None:
                os.close(write_output)
        # Its own process group now, whichever of the two runs first.
        with contextlib.suppress(OSError):
            os.setpgid(pid, pid)
        ours.setblocking(False)
        if read_output is not None:
            os.set_blocking(read_output, False)
        return Kernel(
            fork=fork,
            pid=pid,
            status=ours,
            socket_path=socket_path,
            cgroup=cgroup,
            output=read_output,
            output_log=OutputLog(fork) if read_output is not None else None,
        )

    # Ending.

    def _stop(self, kernel: Kernel, cause: wire.Cause, *, now: bool) -> None:
        """End a kernel and its process group: SIGTERM, then SIGKILL after
        wire.END_GRACE (at once with ``now``). Its pid still names it: it
        is reaped only by this process, after its end."""
        if kernel.ending is None:
            kernel.ending = cause
        if now:
            self._kill(kernel)
            return
        _signal_group(kernel, signal.SIGTERM)
        deadline = time.monotonic() + wire.END_GRACE
        if kernel.kill_at is None or deadline < kernel.kill_at:
            kernel.kill_at, kernel.kill_cause = deadline, cause

    def _kill(self, kernel: Kernel) -> None:
        kernel.kill_at = None
        _signal_group(kernel, signal.SIGKILL)

    def _reap(self) -> None:
        """Report the kernels that ended. Each is seen ended first without
        being reaped (``WNOWAIT``): while it is a zombie its pid, and so its
        process group's id, cannot be taken by another process, so what its
        cells started is ended by group first."""
        while True:
            try:
                seen = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                return
            if seen is None or not seen.si_pid:
                return
            pid = seen.si_pid
            kernel = self.kernels.pop(pid, None)
            if kernel is not None:
                _signal_group(kernel, signal.SIGKILL)
            _, status = os.waitpid(pid, 0)
            if kernel is not None:
                self._ended(kernel, status)

    def _ended(self, kernel: Kernel, status: int) -> None:
        self.by_id.pop(kernel.id, None)
        for spares in self.spares.values():
            if kernel in spares:
                spares.remove(kernel)
        if self.by_session.get(kernel.fork.session_id) is kernel:
            del self.by_session[kernel.fork.session_id]
        self._close_status(kernel)
        if kernel.output is not None:
            self._output(kernel)  # what it printed last
            self.selector.unregister(kernel.output)
            os.close(kernel.output)
        if kernel.output_log is not None:
            kernel.output_log.close()
        cause = kernel.ending
        if kernel.cgroup is not None:
            if cause is None and cgroups.ran_out_of_memory(kernel.cgroup):
                cause = wire.Cause.MEMORY
            cgroups.remove(kernel.cgroup)
        if cause is None:
            clean = os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
            cause = wire.Cause.CLOSED if clean else wire.Cause.CRASHED
        with contextlib.suppress(OSError):
            kernel.socket_path.unlink()
        self._tell_users(
            kernel,
            wire.Exited(
                kernel.id, kernel.fork.session_id, kernel.pid, status, str(cause)
            ),
        )
        self.users.pop(kernel.id, None)

    def _close_status(self, kernel: Kernel) -> None:
        if kernel.status_open:
            kernel.status_open = False
            self.selector.unregister(kernel.status)
            kernel.status.close()

    # What a kernel says.

    def _from_kernel(self, kernel: Kernel) -> None:
        try:
            data = kernel.status.recv(wire.READ_SIZE)
            messages = kernel.decoder.feed(data)
        except BlockingIOError:
            return
        except (OSError, wire.WireError):
            data = b""
        if not data:
            # Closed: it is ending (reaped once its exit is signalled).
            self._close_status(kernel)
            return
        now = time.monotonic()
        for message in messages:
            if isinstance(message, wire.CellStarted):
                self._cell_started(kernel, now)
            elif isinstance(message, wire.CellEnded):
                self._cell_ended(kernel, message, now)
            elif isinstance(message, wire.Pong):
                kernel.answered_at = now
            elif isinstance(message, wire.PageOpened):
                kernel.page_open, kernel.page_closed_at = True, None
            elif isinstance(message, wire.PageClosed):
                kernel.page_open, kernel.page_closed_at = False, time.time()

    def _cell_started(self, kernel: Kernel, now: float) -> None:
        kernel.cell_since = now
        if kernel.spares_due is not None:
            kernel.spares_due = kernel.spares_latest  # its run goes on

    def _cell_ended(self, kernel: Kernel, ended: wire.CellEnded, now: float) -> None:
        kernel.cell_since = None
        kernel.cell_ended_at = now
        if kernel.spares_due is not None:
            kernel.spares_due = min(kernel.spares_latest, now + SPARES_AFTER_IDLE)
        if kernel.stopping_a_cell:
            # The interrupted cell stopped in time: no kill.
            kernel.kill_at = kernel.kill_cause = None
            self._notice(kernel, wire.Happening.STOPPED)
        if ended.out_of_memory:
            self._notice(kernel, wire.Happening.OUT_OF_MEMORY)

    def _notice(self, kernel: Kernel, what: wire.Happening) -> None:
        seconds = float(kernel.fork.cell_timeout or 0)
        self._tell_users(kernel, wire.KernelNotice(kernel.id, str(what), seconds))

    def _output(self, kernel: Kernel) -> None:
        assert kernel.output is not None
        for _ in range(16):  # bounded work per turn of the loop
            try:
                data = os.read(kernel.output, wire.READ_SIZE)
            except OSError:  # BlockingIOError: nothing more now
                return
            if not data:
                return
            if kernel.output_log is not None:
                kernel.output_log.feed(data, time.time())

    # Timers.

    def _tick(self, now: float) -> None:
        for kernel in list(self.kernels.values()):
            if kernel.output_log is not None:
                kernel.output_log.tick(time.time())
            if kernel.kill_at is not None and now >= kernel.kill_at:
                if kernel.ending is None:
                    kernel.ending = kernel.kill_cause
                self._kill(kernel)
            if kernel.ending is not None:
                continue
            if kernel.cell_since is not None:
                self._time_cell(kernel, now)
            elif not kernel.stopping_a_cell:
                self._watch_idle(kernel, now)
            if kernel.demoted:
                _demote(kernel.pid)  # threads started since stay low too

    def _time_cell(self, kernel: Kernel, now: float) -> None:
        """A cell runs: lower the kernel's priority once it has run for
        DEMOTE_AFTER; at CELL_TIMEOUT interrupt it, and kill the kernel if
        it has not stopped CELL_STOP_GRACE seconds later."""
        from django_notebooks.limits import CELL_STOP_GRACE

        assert kernel.cell_since is not None
        running = now - kernel.cell_since
        if running >= DEMOTE_AFTER and not kernel.demoted:
            kernel.demoted = True
            _demote(kernel.pid)
        timeout = kernel.fork.cell_timeout
        if timeout is None or kernel.stopping_a_cell or running < timeout:
            return
        with contextlib.suppress(OSError):
            os.kill(kernel.pid, signal.SIGINT)
        kernel.kill_at, kernel.kill_cause = now + CELL_STOP_GRACE, wire.Cause.TIMEOUT
        self._notice(kernel, wire.Happening.STOPPING)

    def _watch_idle(self, kernel: Kernel, now: float) -> None:
        """No cell runs: is the kernel still answering, and is it using the
        CPU (a thread a cell left running)?"""
        quiet_since = max(kernel.answered_at, kernel.cell_ended_at)
        # Past a call's deadline, and two pings more: a call waiting on the
        # kernel has told its page it does not answer first (slow is not
        # taken for dead before the page has heard that).
        if now - quiet_since > kernel.fork.unresponsive_after + 2 * PING_EVERY:
            logger.warning(
                "The kernel of notebook %s (session %s, pid %s) has not "
                "answered for %.0f s while running no cell: ending it",
                kernel.fork.slug,
                kernel.fork.session_id,
                kernel.pid,
                now - quiet_since,
            )
            self._stop(kernel, wire.Cause.UNRESPONSIVE, now=True)
            return
        if now - kernel.pinged_at >= PING_EVERY and kernel.status_open:
            kernel.ping_number += 1
            kernel.pinged_at = now
            with contextlib.suppress(OSError):
                kernel.status.send(wire.encode(wire.Ping(kernel.ping_number)))
        if kernel.demoted:
            return
        ticks = _cpu_ticks(kernel.pid)
        seen = kernel.cpu_seen
        if seen is None or now - seen[0] >= 1.0:
            kernel.cpu_seen = (now, ticks)
        if seen is not None and now - seen[0] >= 1.0:
            share = (ticks - seen[1]) / CLOCK_TICKS / (now - seen[0])
            ran_no_cell = kernel.cell_ended_at <= seen[0]
            if ran_no_cell and share > IDLE_CPU_SHARE:
                kernel.demoted = True
                _demote(kernel.pid)

    # The end.

    def close(self) -> None:
        """Stop listening, end every kernel (its group and cgroup), reap
        them, and remove the sockets' folder and the cgroups."""
        with contextlib.suppress(OSError):
            Path(self.listener.getsockname()).unlink()
        self.listener.close()
        for kernel in list(self.kernels.values()):
            _signal_group(kernel, signal.SIGKILL)
        for pid in list(self.kernels):
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        if self.cgroups is not None:
            self.cgroups.close()
        shutil.rmtree(self.directory, ignore_errors=True)


def _spare_key(fork: wire.Fork) -> tuple[Any, ...]:
    """What a spare must have been forked with to serve ``fork``: its
    notebook, marimo's options and the session's limits (what a session
    sets in its kernel is given later: wire.Assigned)."""
    return (
        fork.notebook,
        repr(sorted(fork.options.items())),
        fork.memory_mb,
        fork.cell_timeout,
        fork.unresponsive_after,
        fork.session_ttl,
        fork.log_output,
        fork.pre_run,
    )


def new_spare_id() -> int:
    """A kernel id no web process gives (theirs are positive)."""
    return -secrets.randbits(52) - 1


def _owner_key(fork: wire.Fork) -> str:
    """An owner key as owners.py reads one: the person, then the login."""
    return f"{fork.person}:{fork.owner}"


def _signal_group(kernel: Kernel, number: int) -> None:
    """Signal a kernel's process group (and, for SIGKILL, its cgroup)."""
    with contextlib.suppress(OSError):
        os.killpg(kernel.pid, number)
    if number == signal.SIGKILL and kernel.cgroup is not None:
        cgroups.kill(kernel.cgroup)


def _cpu_ticks(pid: int) -> int:
    """CPU time (user and system, in clock ticks) process ``pid`` has used."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])
    except (OSError, ValueError, IndexError):
        return 0


def _demote(pid: int) -> None:
    """Give every thread of kernel ``pid`` the lowest CPU priority (on Linux
    a priority is a thread's, and the cell runs on marimo's kernel thread).
    ``pid`` is an unreaped child of this process: it cannot name another."""
    try:
        threads = [int(name) for name in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        threads = [pid]
    for thread in threads:
        with contextlib.suppress(OSError):
            if os.getpriority(os.PRIO_PROCESS, thread) < LOWEST_PRIORITY:
                os.setpriority(os.PRIO_PROCESS, thread, LOWEST_PRIORITY)


def sockets_directory() -> Path:
    """A new private folder for the kernels' sockets (``mkdtemp`` makes it
    0700), marked with this process's pid; the folders of kernel hosts
    that were killed are removed first."""
    base = Path(tempfile.gettempdir())
    with contextlib.suppress(OSError):
        for folder in base.glob(f"{SOCKETS_PREFIX}*"):
            owner = folder / OWNER_FILE
            with contextlib.suppress(OSError, ValueError):
                if folder.owner() == _user() and not cgroups.is_running(
                    int(owner.read_text())
                ):
                    shutil.rmtree(folder, ignore_errors=True)
    directory = Path(tempfile.mkdtemp(prefix=SOCKETS_PREFIX))
    (directory / OWNER_FILE).write_text(str(os.getpid()))
    return directory


def _user() -> str:
    import pwd

    return pwd.getpwuid(os.getuid()).pw_name


def peer_credentials(sock: socket.socket) -> tuple[int, int]:
    """The pid and uid of the process at the other end of a Unix socket
    (``SO_PEERCRED``, Linux)."""
    credentials = sock.getsockopt(
        socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")
    )
    pid, uid, _gid = struct.unpack("3i", credentials)
    return pid, uid


def listen(path: str) -> socket.socket:
    """The host's listening socket at ``path`` (its folder is private: the
    web process made it, ``forking.host_folder``)."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)  # a host that was killed left it (the caller holds the lock)
    listener.bind(path)
    listener.listen(LISTEN_BACKLOG)
    return listener


def _refuse_waiting(listener: socket.socket, error: str) -> None:
    """Tell the web processes waiting for the host that it did not start."""
    listener.setblocking(False)
    while True:
        try:
            sock, _ = listener.accept()
        except OSError:
            return
        with contextlib.suppress(OSError):
            sock.settimeout(SEND_TIMEOUT)
            wire.send(sock, wire.StartFailed(error))
        sock.close()


def main(argv: list[str]) -> None:
    socket_path = argv[1]
    grace = float(argv[argv.index(GRACE) + 1]) if GRACE in argv else 0.0
    spares = int(argv[argv.index(SPARES) + 1]) if SPARES in argv else 0
    spare_max_age = (
        float(argv[argv.index(SPARE_MAX_AGE_OPTION) + 1])
        if SPARE_MAX_AGE_OPTION in argv
        else SPARE_MAX_AGE
    )
    bound = int(argv[argv.index(LISTENING) + 1]) if LISTENING in argv else None
    # Ctrl+C in a terminal reaches the whole process group: the web servers
    # (or the service's manager, with SIGTERM) decide when this process ends.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    titles.set_title(titles.kernel_host(socket_path))
    # manage.py notebooks kernel-host binds the socket itself, under the lock
    # (then execs this): no web process can start another host meanwhile.
    listener = listen(socket_path) if bound is None else socket.socket(fileno=bound)
    cold = COLD in argv
    try:
        _warm(run_session=not cold)
    except BaseException as error:
        from django_notebooks.kernels.child import WarmUpFailed

        if isinstance(error, WarmUpFailed) and not cold:
            # Its threads cannot be made to end: start again, and fork
            # without the warm-up session (kernel processes start slower).
            logger.warning("%s; the kernel host starts again without it", error)
            # Its socket goes with it: web processes waiting stay connected.
            os.set_inheritable(listener.fileno(), True)
            again = list(argv[1:])
            if bound is not None:
                at = again.index(LISTENING)
                del again[at : at + 2]
            os.execv(
                sys.executable,
                [
                    sys.executable,
                    "-m",
                    __name__,
                    *again,
                    LISTENING,
                    str(listener.fileno()),
                    COLD,
                ],
            )
        _refuse_waiting(listener, f"{type(error).__name__}: {error}")
        with contextlib.suppress(OSError):
            os.unlink(socket_path)
        raise
    directory = sockets_directory()
    kernel_cgroups = cgroups.KernelCgroups.create()
    mechanisms = (
        kernel_cgroups.mechanisms
        if kernel_cgroups is not None
        else cgroups.Mechanisms(cgroups.PROCESS_GROUPS, cgroups.RLIMITS)
    )
    ready = wire.Ready(
        str(directory), mechanisms.containment, mechanisms.memory, pid=os.getpid()
    )
    ForkServer(
        listener,
        ready,
        kernel_cgroups,
        grace=grace,
        spares=spares,
        spare_max_age=spare_max_age,
    ).serve()
    # Nothing to tidy at exit: the exit hooks the warm-up installed (closing
    # marimo sessions, deleting a server's session records) are the web
    # process's business.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv)
