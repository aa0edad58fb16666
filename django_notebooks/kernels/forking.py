"""The web process's handle on its machine's kernel host
(``forkserver.py``): the process that forks a kernel process for each
notebook session, shared by every web process of the project on the
machine.

Forking the web process itself would copy its threads' half-held locks and
open database connections into the child. Starting a fresh interpreter per
session costs about a second and 50 MB. So a kernel host is started once,
as a new interpreter (no threads, no connections); it imports Django,
marimo and the bridge, and then forks a ready kernel process in a few
milliseconds whenever asked (``multiprocessing``'s forkserver works the
same way).

The first web process that needs a kernel starts the host (unless it runs:
``manage.py notebooks kernel-host``, or another web process started it), in
a session of its own, so that it outlives the web process: a restart keeps
every session's kernel. Each web process connects to it on its Unix socket
(``location.py``) and talks in the wire's messages (``wire.py``): it asks
for a session's kernel (:class:`~wire.Fork`; a session whose kernel runs
already gets it back) or its end (:class:`~wire.End`), by the kernel's id,
never by pid; the host answers with the kernel's pid and socket
(:class:`~wire.Forked`), and reports each kernel's end (:class:`~wire.Exited`)
and what its page should hear (:class:`~wire.KernelNotice`) to the web
processes using it.

A :class:`ForkServer` is one connection to a host: once it has closed (the
host ended), the web process makes a new one, which may start a new host.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import fcntl
import logging
import os
import secrets
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from django_notebooks import conf
from django_notebooks.kernels import forkserver, location, wire

logger = logging.getLogger(__name__)

SERVER_MODULE = "django_notebooks.kernels.forkserver"
# Seconds the web process waits for the kernel host to import everything.
START_TIMEOUT = 60.0
# Seconds stop() waits for a host it started, with no grace period, to end
# its kernels and exit.
STOP_TIMEOUT = 5.0
# How often a web process that started the host tries its socket.
CONNECT_EVERY = 0.01


class ForkServerFailed(RuntimeError):
    """The kernel host could not start, or the connection to it closed."""


class ForkRefused(RuntimeError):
    """The kernel host could not fork a kernel (the system's limit on
    processes or memory, a notebook it could not read), the session's
    kernel is another login's, or the machine's sessions are at a cap
    (``cap``: which, as ``owners.Claim``'s value)."""

    def __init__(self, error: str, cap: str = "") -> None:
        super().__init__(error)
        self.cap = cap


def new_kernel_id() -> int:
    """An id no other web process of the machine gives a kernel."""
    return secrets.randbits(52)


class ForkServer:
    """The web process's connection to one kernel host (made by
    :meth:`start` or :meth:`attach`, closed by :meth:`stop` or the host's
    end)."""

    def __init__(
        self,
        *,
        on_exit: Callable[[ForkServer, wire.Exited], None],
        on_notice: Callable[[ForkServer, wire.KernelNotice], None],
        on_stopped: Callable[[ForkServer], None],
    ) -> None:
        self._on_exit = on_exit
        self._on_notice = on_notice
        self._on_stopped = on_stopped
        self._send_lock = threading.Lock()
        self._process: subprocess.Popen[bytes] | None = None
        self._control: socket.socket | None = None
        self._waiting: dict[int, concurrent.futures.Future[wire.Forked]] = {}
        self.ready: wire.Ready | None = None
        #: The host's socket, once connected.
        self.path: Path | None = None
        self.stopped = threading.Event()
        #: stop() was called: its end was asked for.
        self.stopping = False

    @property
    def pid(self) -> int | None:
        """The host's pid, once it is ready."""
        return self.ready.pid if self.ready is not None else None

    @property
    def code(self) -> str:
        """The code its kernels run: the host's code key."""
        return location.code_of(self.path) if self.path is not None else ""

    @property
    def running(self) -> bool:
        return self.ready is not None and not self.stopped.is_set()

    def start(self) -> None:
        """Connect to the machine's kernel host for this project and code,
        starting it if none runs, and wait until it is ready (blocking)."""
        try:
            path = location.host_socket()
        except location.UnsafeFolder as error:
            self.stopped.set()
            raise ForkServerFailed(f"The kernel host cannot start: {error}") from None
        sock = connect(path)
        if sock is None:
            with locked(location.lock_file()):
                sock = connect(path)  # another web process started it meanwhile
                if sock is None:
                    self._process = _start_host(path)
                    sock = self._connect_when_listening(path)
        self.path = path
        self._hello(sock)

    def attach(self, path: Path) -> None:
        """Connect to the kernel host listening at ``path`` (one running
        older code), without starting one: :class:`ForkServerFailed` if
        none listens there."""
        sock = connect(path)
        if sock is None:
            self.stopped.set()
            raise ForkServerFailed(f"No kernel host listens at {path}")
        self.path = path
        self._hello(sock)

    def _hello(self, sock: socket.socket) -> None:
        """Wait for the host's word that it is ready, then hear it."""
        sock.settimeout(START_TIMEOUT)
        receive = wire.receiver(sock)
        ready = None
        try:
            messages: list[Any] | None = []
            while messages == []:
                messages = receive()
            ready = messages[0] if messages else None
        except (OSError, wire.WireError):
            pass
        if not isinstance(ready, wire.Ready):
            sock.close()
            self.stopped.set()
            if self._process is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self._process.wait(STOP_TIMEOUT)
            why = ready.error if isinstance(ready, wire.StartFailed) else None
            raise ForkServerFailed(
                f"The kernel host did not start: {why or 'it exited while starting'}"
            )
        sock.settimeout(None)
        self._control, self.ready = sock, ready
        threading.Thread(
            target=self._read,
            args=(receive,),
            name="django-notebooks-kernel-host",
            daemon=True,
        ).start()

    def _connect_when_listening(self, path: Path) -> socket.socket:
        """The connection to the host this process started, once it listens."""
        assert self._process is not None
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            sock = connect(path)
            if sock is not None:
                return sock
            if self._process.poll() is not None:
                break
            time.sleep(CONNECT_EVERY)
        self._process.kill()
        self._process.wait()
        self.stopped.set()
        raise ForkServerFailed(
            "The kernel host did not start: it exited before it listened"
        )

    def fork(
        self, fork: wire.Fork, answer: concurrent.futures.Future[wire.Forked]
    ) -> None:
        """Ask for a kernel process; ``answer`` gets its :class:`~wire.Forked`
        (or :class:`ForkRefused`, :class:`ForkServerFailed`)."""
        self._waiting[fork.id] = answer
        try:
            self._send(fork)
        except ForkServerFailed:
            self._waiting.pop(fork.id, None)
            raise

    def end(self, kernel_id: int, *, now: bool = False) -> None:
        """Ask for kernel ``kernel_id``'s end (nothing if it has ended)."""
        with contextlib.suppress(ForkServerFailed):
            self._send(wire.End(kernel_id, now))

    def _send(self, message: Any) -> None:
        with self._send_lock:
            control = self._control
            if control is None or self.stopped.is_set():
                raise ForkServerFailed("The kernel host has stopped")
            try:
                wire.send(control, message)
            except OSError as error:
                raise ForkServerFailed(
                    f"The kernel host has stopped: {error}"
                ) from error

    def _read(self, receive: Callable[[], list[Any] | None]) -> None:
        while True:
            try:
                messages = receive()
            except (OSError, wire.WireError) as error:
                if not self.stopping:  # (else: stop() closed the socket)
                    logger.error("The kernel host's messages failed: %r", error)
                messages = None
            if messages is None:
                break
            for message in messages:
                self._dispatch(message)
        self.stopped.set()
        for answer in list(self._waiting.values()):
            _settle(answer, ForkServerFailed("The kernel host stopped"))
        self._waiting.clear()
        process = self._process
        if process is not None and not self.stopping:
            # Reaped here, not left a zombie until the web process exits.
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=STOP_TIMEOUT)
        # Its kernel processes die with it (PR_SET_PDEATHSIG, or it killed
        # them as it stopped): none of their exits will be reported.
        self._on_stopped(self)

    def _dispatch(self, message: Any) -> None:
        if isinstance(message, wire.Exited):
            self._on_exit(self, message)
        elif isinstance(message, wire.KernelNotice):
            self._on_notice(self, message)
        elif isinstance(message, wire.Forked):
            answer = self._waiting.pop(message.id, None)
            if answer is not None:
                _settle(answer, message)
        elif isinstance(message, wire.ForkRefused):
            answer = self._waiting.pop(message.id, None)
            if answer is not None:
                _settle(answer, ForkRefused(message.error, message.cap))

    def stop(self) -> None:
        """Close the connection to the host. Its kernels stay for the next
        web process, for its grace period; a host this process started with
        none ends them now, and is waited for."""
        self.stopping = True
        with self._send_lock:
            process, control = self._process, self._control
            self._control = None
        self.stopped.set()
        if control is not None:
            # shutdown() first: close() alone leaves the socket open while
            # the reader thread waits in recv() on it, and the host would
            # never see its end.
            with contextlib.suppress(OSError):
                control.shutdown(socket.SHUT_RDWR)
            control.close()
        if process is not None and conf.get_settings().KERNEL_HOST_GRACE == 0:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=STOP_TIMEOUT)


def remove_if_dead(path: Path) -> None:
    """Remove the socket a kernel host that was killed left at ``path``
    (under the lock that a host starting holds: never a live one's)."""
    with locked(location.lock_file()):
        sock = connect(path)
        if sock is None:
            with contextlib.suppress(OSError):
                path.unlink()
        else:
            sock.close()


def connect(path: Path) -> socket.socket | None:
    """A connection to the host listening at ``path``, if one does."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(str(path))
    except OSError:  # none there, or a host that was killed left it
        sock.close()
        return None
    return sock


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold the lock on ``path`` (``flock``: released if this process dies)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _start_host(path: Path) -> subprocess.Popen[bytes]:
    """Start the kernel host for ``path``, in a session of its own: it
    outlives this process, and a Ctrl+C in its terminal does not reach it."""
    python_path = [entry or os.getcwd() for entry in sys.path]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(python_path)}
    config = conf.get_settings()
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            SERVER_MODULE,
            str(path),
            forkserver.GRACE,
            str(config.KERNEL_HOST_GRACE),
            *spare_options(),
        ],
        env=env,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )


def _settle(
    answer: concurrent.futures.Future[wire.Forked], outcome: wire.Forked | Exception
) -> None:
    """Give a fork's waiter its answer (unless it has been given one)."""
    if answer.done():
        return
    if isinstance(outcome, Exception):
        answer.set_exception(outcome)
    else:
        answer.set_result(outcome)


def spare_options() -> list[str]:
    """The kernel host's command-line options for its spares (the
    project's KERNEL_SPARES and KERNEL_SPARE_MAX_AGE)."""
    config = conf.get_settings()
    return [
        forkserver.SPARES,
        str(config.KERNEL_SPARES),
        forkserver.SPARE_MAX_AGE_OPTION,
        str(config.KERNEL_SPARE_MAX_AGE),
    ]
