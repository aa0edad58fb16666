"""Noticing that the server process is stopping, so that open pages can say
the site is restarting.

A restart closes every kernel websocket of the process. uvicorn closes them
with 1012 ("service restart"); daphne drops them without a close frame, and
neither lets an application speak first. So the bridge hooks the signal that
stops the server (``SIGTERM``, and ``SIGINT`` for a server run by hand): it
wraps the handler the server installed, and when the signal comes it first
has every open websocket of the process send its notice (the consumer's
``on_stop``, :data:`~django_notebooks.notices.SITE_RESTARTING`), for at most
:data:`NOTICE_DEADLINE` seconds, then calls the server's handler, which stops
the server as it always does. A second signal goes to the server's handler
at once (uvicorn's "CONTROL-C again to force quit").

The hook is put in place by the first websocket the process opens, from
the thread that runs the server's event loop; both daphne and uvicorn run
it in the main thread, after they installed their own handlers (with
``signal.signal``). Where the handler is not a server's Python function
(none, the signal ignored, Python's ``KeyboardInterrupt``) or the loop runs in another thread (Django's
``runserver`` with its autoreloader), nothing is hooked and the page hears
of a restart only from a 1012 close (notices.js).

The hook never replaces the server's handler: it always calls it, once per
signal, with the same arguments.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from collections.abc import Awaitable, Callable, Iterator
from types import FrameType
from typing import Any

logger = logging.getLogger(__name__)

#: The signals that stop a server.
SIGNALS = (signal.SIGTERM, signal.SIGINT)
#: How long the server's own handler waits for the notices to be sent.
NOTICE_DEADLINE = 2.0

OnStop = Callable[[], Awaitable[None]]
Handler = Callable[[int, FrameType | None], Any]


class StopWatch:
    """The callbacks to await when this process's server starts to stop."""

    def __init__(self, signals: tuple[int, ...] = SIGNALS) -> None:
        self.signals = signals
        self.callbacks: set[OnStop] = set()
        self.stopping = False
        self.previous: dict[int, Handler] = {}
        self.loop: asyncio.AbstractEventLoop | None = None
        self.telling: asyncio.Task[None] | None = None

    @contextlib.contextmanager
    def watch(self, on_stop: OnStop) -> Iterator[None]:
        """While inside, ``on_stop()`` is awaited when the server starts to
        stop (called from a coroutine of the server's event loop)."""
        self.install()
        self.callbacks.add(on_stop)
        try:
            yield
        finally:
            self.callbacks.discard(on_stop)

    def install(self) -> None:
        """Wrap the server's handlers of :attr:`signals` (once, from the
        thread of the running event loop; see the module's docstring)."""
        if self.loop is not None or threading.current_thread() is not (
            threading.main_thread()
        ):
            return
        try:
            self.loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        for number in self.signals:
            handler = signal.getsignal(number)
            # Python's own SIGINT handler raises KeyboardInterrupt where it
            # runs: not the server's, and not to be run from a task.
            if callable(handler) and handler is not signal.default_int_handler:
                self.previous[number] = handler
                signal.signal(number, self._on_signal)

    def _on_signal(self, number: int, frame: FrameType | None) -> None:
        server_handler = self.previous[number]
        loop = self.loop
        if self.stopping or not self.callbacks or loop is None or loop.is_closed():
            self.stopping = True
            server_handler(number, frame)
            return
        self.stopping = True
        # A signal handler runs between two bytecodes of whatever the main
        # thread was doing: the notices are sent from the loop instead.
        loop.call_soon_threadsafe(self._start_telling, server_handler, number, frame)

    def _start_telling(
        self, server_handler: Handler, number: int, frame: FrameType | None
    ) -> None:
        self.telling = asyncio.ensure_future(
            self._tell_then_stop(server_handler, number, frame)
        )

    async def _tell_then_stop(
        self, server_handler: Handler, number: int, frame: FrameType | None
    ) -> None:
        callbacks = list(self.callbacks)
        try:
            told = await asyncio.wait_for(
                asyncio.gather(
                    *(callback() for callback in callbacks), return_exceptions=True
                ),
                NOTICE_DEADLINE,
            )
            for failure in told:
                if isinstance(failure, Exception):
                    logger.error(
                        "Could not tell an open notebook page that the server "
                        "is stopping",
                        exc_info=failure,
                    )
            logger.info(
                "The server is stopping: told %d open notebook page(s)",
                len(callbacks),
            )
        except TimeoutError:
            logger.warning(
                "The server is stopping: not every open notebook page could be "
                "told within %s seconds",
                NOTICE_DEADLINE,
            )
        finally:
            server_handler(number, frame)


#: This process's watch (one server per process).
stop_watch = StopWatch()


def watch(on_stop: OnStop) -> contextlib.AbstractContextManager[None]:
    """``on_stop()`` is awaited when this process's server starts to stop,
    while inside (see :class:`StopWatch`)."""
    return stop_watch.watch(on_stop)
