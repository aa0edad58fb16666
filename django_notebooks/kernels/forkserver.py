"""The fork server: one process per web process that forks a kernel process
for each notebook session.

Forking the web process itself would copy its threads' half-held locks and
open database connections into the child. Starting a fresh interpreter per
session costs about a second and 50 MB. So the web process starts this
server once, as a new interpreter (no threads, no connections); it imports
Django, marimo and the bridge, and then forks a ready kernel process in a
few milliseconds whenever asked (``multiprocessing``'s forkserver works the
same way).

It talks to the web process over a socket pair: requests to fork (with the
session's listening socket passed along), answers with the new pid, and a
message when a kernel process ends. When the web process goes, even killed,
the socket closes, and the server kills its kernel processes and exits.
Run as ``python -m django_notebooks.kernels.forkserver <fd>``.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import itertools
import logging
import marshal
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)

LENGTH = struct.Struct("!I")
COLD = "--cold"  # start without the warm-up session
# Seconds the web process waits for the fork server to import everything.
START_TIMEOUT = 60.0
# Seconds between the fork server's checks that its web process still runs.
PARENT_CHECK_INTERVAL = 1.0


class ForkServerFailed(RuntimeError):
    """The fork server could not start, or has stopped."""


# The wire: a length, then a marshalled dict; a passed file descriptor
# travels with the length's bytes.


def send_message(
    sock: socket.socket, message: dict[str, Any], fds: list[int] | None = None
) -> None:
    data = marshal.dumps(message)
    header = LENGTH.pack(len(data))
    if fds:
        socket.send_fds(sock, [header], fds)
        sock.sendall(data)
    else:
        sock.sendall(header + data)


def receive_message(sock: socket.socket) -> tuple[dict[str, Any] | None, list[int]]:
    """The next message and the descriptors passed with it; ``None`` once the
    other end has closed (or gone: a reset is an end too)."""
    try:
        header, fds, _flags, _address = socket.recv_fds(sock, LENGTH.size, 4)
    except ConnectionError:
        return None, []
    while header and len(header) < LENGTH.size:
        more = sock.recv(LENGTH.size - len(header))
        if not more:
            break
        header += more
    if len(header) < LENGTH.size:
        return None, fds
    (length,) = LENGTH.unpack(header)
    data = b""
    while len(data) < length:
        try:
            chunk = sock.recv(length - len(data))
        except ConnectionError:
            chunk = b""
        if not chunk:
            return None, fds
        data += chunk
    return marshal.loads(data), fds


# The web process's side.


def _settle(answer: concurrent.futures.Future[int], outcome: int | Exception) -> None:
    """Give a fork's waiter its pid or error. One that stopped waiting (a
    cancelled asyncio wrapper cancels the future too) has its process ended:
    no session will ever use it."""
    if not answer.set_running_or_notify_cancel():
        if not isinstance(outcome, Exception):
            with contextlib.suppress(OSError):
                os.kill(outcome, signal.SIGTERM)
        return
    if isinstance(outcome, Exception):
        answer.set_exception(outcome)
    else:
        answer.set_result(outcome)


class ForkServer:
    """The web process's handle on its fork server (started on first use)."""

    def __init__(
        self,
        on_exit: Callable[[int, int], None],
        on_stopped: Callable[[], None] = lambda: None,
    ) -> None:
        self._on_exit = on_exit
        self._on_stopped = on_stopped
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._process: subprocess.Popen[bytes] | None = None
        self._control: socket.socket | None = None
        self._ids = itertools.count(1)
        self._waiting: dict[int, concurrent.futures.Future[int]] = {}

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def ensure_running(self) -> None:
        """Start the fork server unless it runs (blocks while it starts)."""
        with self._lock:
            if self._process is not None and self._process.poll() is None:
                return
            self._start()

    def _start(self) -> None:
        ours, theirs = socket.socketpair()
        path = [entry or os.getcwd() for entry in sys.path]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
        try:
            process = subprocess.Popen(
                [sys.executable, "-m", __name__, str(theirs.fileno())],
                pass_fds=[theirs.fileno()],
                env=env,
                stdin=subprocess.DEVNULL,
            )
        finally:
            theirs.close()
        ours.settimeout(START_TIMEOUT)
        try:
            ready, _fds = receive_message(ours)
        except OSError:
            ready = None
        if not ready or "error" in ready:
            process.kill()
            process.wait()
            ours.close()
            why = ready["error"] if ready else "it exited while starting"
            raise ForkServerFailed(f"The kernel fork server did not start: {why}")
        ours.settimeout(None)
        self._process, self._control = process, ours
        threading.Thread(
            target=self._read,
            args=(ours,),
            name="django-notebooks-forkserver",
            daemon=True,
        ).start()

    def fork(
        self, request: dict[str, Any], listener: socket.socket
    ) -> concurrent.futures.Future[int]:
        """Ask for a kernel process serving on ``listener``; its pid comes."""
        self.ensure_running()
        answer: concurrent.futures.Future[int] = concurrent.futures.Future()
        number = next(self._ids)
        self._waiting[number] = answer
        try:
            with self._send_lock:
                assert self._control is not None
                send_message(
                    self._control, {**request, "id": number}, [listener.fileno()]
                )
        except OSError as error:
            self._waiting.pop(number, None)
            raise ForkServerFailed(
                f"The kernel fork server has stopped: {error}"
            ) from error
        return answer

    def _read(self, control: socket.socket) -> None:
        while True:
            try:
                message, _fds = receive_message(control)
            except OSError:
                message = None
            if message is None:
                break
            if "exited" in message:
                self._on_exit(message["exited"], message["status"])
            elif "id" in message:
                answer = self._waiting.pop(message["id"], None)
                if answer is None:
                    continue
                if "pid" in message:
                    _settle(answer, message["pid"])
                else:
                    _settle(answer, ForkServerFailed(message.get("error", "")))
        for answer in list(self._waiting.values()):
            _settle(answer, ForkServerFailed("The kernel fork server stopped"))
        self._waiting.clear()
        # Its kernel processes die with it (PR_SET_PDEATHSIG, or it killed
        # them as it stopped): none of their exits will be reported.
        self._on_stopped()

    def stop(self) -> None:
        """Stop the fork server; it kills the kernel processes still running."""
        with self._lock:
            process, control = self._process, self._control
            self._process = self._control = None
        if control is not None:
            # shutdown() first: close() alone leaves the socket open while
            # the reader thread waits in recv() on it, and the fork server
            # would never see its end.
            with contextlib.suppress(OSError):
                control.shutdown(socket.SHUT_RDWR)
            control.close()
        if process is not None:
            try:
                process.wait(timeout=3)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


# The fork server's side.


def _warm(run_session: bool) -> None:
    """Import what every kernel process needs, once, before any fork."""
    import django

    django.setup()
    import marimo  # noqa: F401

    from django_notebooks.kernels import child

    child.warm(run_session=run_session)
    from django.db import connections

    # A connection inherited by two processes would mix their traffic.
    connections.close_all()


def _fork_kernel(
    request: dict[str, Any],
    fds: list[int],
    control: socket.socket,
    wake_pipe: tuple[int, int],
) -> int:
    """Fork the kernel process ``request`` asks for; its pid."""
    from django_notebooks.kernels import child

    if len(fds) != 1:
        raise ValueError(f"a request with {len(fds)} file descriptors, not 1")
    child.prepare(request)
    if threading.active_count() > 1:
        # Forking now would copy another thread's half-held locks.
        raise RuntimeError("the fork server has threads running")
    pid = os.fork()
    if pid == 0:  # the kernel process
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        for fd in wake_pipe:
            os.close(fd)
        control.close()
        child.main(request, socket.socket(fileno=fds[0]))
    os.close(fds[0])
    return pid


def _serve(control: socket.socket) -> None:
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_write, False)
    os.set_blocking(wake_read, False)
    signal.set_wakeup_fd(wake_write)
    signal.signal(signal.SIGCHLD, lambda number, frame: None)
    children: set[int] = set()

    def reap() -> None:
        while children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            children.discard(pid)
            with contextlib.suppress(OSError):  # the web process may be gone
                send_message(control, {"exited": pid, "status": status})

    web_process = os.getppid()
    while True:
        readable, _, _ = select.select(
            [control.fileno(), wake_read], [], [], PARENT_CHECK_INTERVAL
        )
        if os.getppid() != web_process:
            # The web process has gone though its socket did not close (a
            # child it forked without exec holds a copy): stop all the same.
            break
        if wake_read in readable:
            while True:
                try:
                    if not os.read(wake_read, 512):
                        break
                except BlockingIOError:
                    break
            reap()
        if control.fileno() not in readable:
            continue
        request, fds = receive_message(control)
        if request is None:
            break
        try:
            pid = _fork_kernel(request, fds, control, (wake_read, wake_write))
        except Exception as error:
            # Refused (no listener, a notebook that cannot be read, a fork
            # the system refused): that session runs without a process of
            # its own; the others, and this server, go on.
            for fd in fds:
                with contextlib.suppress(OSError):
                    os.close(fd)
            answer: dict[str, Any] = {"id": request.get("id"), "error": repr(error)}
        else:
            children.add(pid)
            answer = {"id": request["id"], "pid": pid}
        try:
            send_message(control, answer)
        except OSError:
            break
    # The web process has gone: its sessions go with it.
    for pid in children:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for pid in list(children):
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass


def main(argv: list[str]) -> None:
    control = socket.socket(fileno=int(argv[1]))
    # Ctrl+C in a terminal reaches the whole process group: the web server
    # decides when this process ends (by closing the socket).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    cold = COLD in argv
    try:
        _warm(run_session=not cold)
    except BaseException as error:
        from django_notebooks.kernels.child import WarmUpFailed

        if isinstance(error, WarmUpFailed) and not cold:
            # Its threads cannot be made to end: start again, and fork
            # without the warm-up session (kernel processes start slower).
            logger.warning("%s; the fork server starts again without it", error)
            os.execv(sys.executable, [sys.executable, "-m", __name__, argv[1], COLD])
        send_message(control, {"error": f"{type(error).__name__}: {error}"})
        raise
    send_message(control, {"ready": True})
    _serve(control)
    # Nothing to tidy at exit: the exit hooks the warm-up installed (closing
    # marimo sessions, deleting a server's session records) are the web
    # process's business.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv)
