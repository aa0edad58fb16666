"""A spare kernel that has run its notebook before anyone asked.

A notebook whose cells do not read who is visiting (``marimo/visitor.py``)
shows every visitor the same first run. Its spare kernel (``forkserver.py``
keeps them) runs it ahead, in a session of marimo's with no visitor, and
keeps what marimo sent that session's websocket. The visitor the spare is
given to gets all of it at once, so their page opens with every output
there, and then takes that session over: from then on it is theirs, as if
it had been opened for them.

Only marimo's public ASGI app is used. A session's id travels in its
websocket's ``session_id`` query parameter and its calls'
``Marimo-Session-Id`` header; the visitor's are rewritten to the pre-run
session's, for the life of the kernel process (it serves one session). The
visitor's first page is sent what marimo sends the run's websocket, which
stays open: to marimo the session never changed hands, so nothing is lost
on the way. A page of the visitor's that connects again later (after a
lost connection, a restart of the web server) is marimo's reconnection to
its session, as in any other session.

This code runs in kernel processes (and in the in-process tests).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl, urlencode

from django_notebooks import context

logger = logging.getLogger(__name__)

Message = dict[str, Any]
Send = Callable[[Message], Awaitable[None]]
Receive = Callable[[], Awaitable[Message]]

SESSION_ID = "django-notebooks-pre-run"
# What is kept of the run for the visitor, at most: a notebook whose first
# run shows more (or a timer that keeps sending) is not pre-run; its spare
# serves a new session, as any spare does.
MAX_KEPT_BYTES = 16 * 1024 * 1024
# The request the run has: no visitor (what mo.app_meta().request.user says
# to a notebook of which nobody is signed in).
NOBODY = {"username": "", "is_authenticated": False, "display_name": ""}


class PreRun:
    """marimo's app for one notebook, with a session run ahead that the
    kernel's visitor takes over (an ASGI app)."""

    def __init__(self, app: Any, close_run: Callable[[], None]) -> None:
        """``app``: marimo's app for the notebook; ``close_run``: closes its
        session :data:`SESSION_ID` (marimo's session manager does)."""
        self.app = app
        self.close_run = close_run
        #: What marimo sent the run's websocket, until a visitor took it.
        self.kept: deque[Message] = deque()
        self.kept_bytes = 0
        #: The session id of the kernel's visitor: the first seen (only the
        #: session's calls reach its kernel).
        self.visitor: str | None = None
        #: Whether the run was given up (too much to keep; failed to start):
        #: the visitor's session starts as any other.
        self.given_up = False
        #: A visitor's page took the session over.
        self.taken = False
        self._inbox: asyncio.Queue[Message] = asyncio.Queue()
        self._run: asyncio.Task[None] | None = None
        # The visitor's first page, sent what marimo sends the run's websocket.
        self._page: Send | None = None

    def start(self) -> None:
        """Run the notebook now, in a session of no visitor."""
        scope = {
            "type": "websocket",
            "path": "/ws",
            "root_path": "",
            "query_string": urlencode({"session_id": SESSION_ID}).encode(),
            "headers": [(b"host", b"localhost")],
            "user": dict(NOBODY),
            "meta": {},
        }
        self._inbox.put_nowait({"type": "websocket.connect"})
        self._run = asyncio.create_task(self._keep_run(scope))

    async def _keep_run(self, scope: Message) -> None:
        try:
            await self.app(scope, self._inbox.get, self._kept)
        except Exception:
            logger.exception("A spare kernel's pre-run failed")
        # marimo ended the run's websocket: a page of the visitor's took the
        # session over, or the session is gone.
        self.give_up()

    async def _kept(self, message: Message) -> None:
        """What marimo sends the run's websocket: kept until the visitor's
        page comes, then passed on to it while it stays."""
        if message["type"] == "websocket.close":
            # The session ended (its kernel died), or a page of the
            # visitor's took its websocket's place, as marimo closes the
            # websocket of a page that another replaced.
            await self._to_page({"type": "websocket.close", "code": 1000})
            self.give_up()
            return
        if message["type"] != "websocket.send":
            return
        text = message.get("text") or ""
        if self._page is not None:
            await self._to_page(message)
        elif not self.taken and not self.given_up:
            self.kept.append(message)
            self.kept_bytes += len(text) + len(message.get("bytes") or b"")
            if self.kept_bytes > MAX_KEPT_BYTES:
                logger.warning(
                    "A spare kernel's pre-run showed more than %s bytes: "
                    "its visitor's session will run the notebook again",
                    MAX_KEPT_BYTES,
                )
                self.give_up()
        # Else no page is there to see it: marimo would not keep it either.

    async def _to_page(self, message: Message) -> None:
        page = self._page
        if page is None:
            return
        try:
            await page(message)
        except Exception:  # the page has gone (its server says so its own way)
            if self._page is page:
                self._page = None

    def give_up(self) -> None:
        """Forget the run; the visitor's session starts as any other."""
        if self.taken or self.given_up:
            return
        self.given_up = True
        self.kept.clear()
        self._inbox.put_nowait({"type": "websocket.disconnect", "code": 1000})
        try:
            self.close_run()
        except Exception:
            logger.exception("Closing a spare kernel's pre-run failed")

    async def __call__(self, scope: Message, receive: Receive, send: Send) -> None:
        session_id = context.session_id_in(scope)
        if self.given_up or session_id is None:
            await self.app(scope, receive, send)
            return
        if self.visitor is None:
            self.visitor = session_id
        if session_id != self.visitor:
            await self.app(scope, receive, send)
            return
        scope = _with_session(scope, SESSION_ID)
        if scope["type"] == "websocket" and not self.taken:
            await self._take_over(receive, send)
        else:
            # A page of the visitor's that comes again (it lost its
            # connection, the server restarted): marimo reconnects it to
            # the session, in its place.
            await self.app(scope, receive, send)

    async def _take_over(self, receive: Receive, send: Send) -> None:
        """The visitor's first page: the run so far, then whatever marimo
        sends the session (the run's end, what the page's widgets make the
        cells show) until the page goes. marimo keeps the run's websocket:
        to marimo, the session never lost its page, so nothing sent to it
        is missed. (marimo reads nothing a page says on its websocket.)"""
        first = await receive()
        if first["type"] != "websocket.connect":
            return
        await send({"type": "websocket.accept"})
        while self.kept and not self.given_up:  # what comes meanwhile too
            await send(self.kept.popleft())
        if self.given_up:  # too much to keep: the page has seen part of a run
            await send({"type": "websocket.close", "code": 1012})
            return
        # Nothing can come between the last kept message and this: no wait.
        self.taken = True
        self.kept_bytes = 0
        self._page = send
        try:
            while (await receive())["type"] != "websocket.disconnect":
                pass
        finally:
            if self._page is send:
                self._page = None


def _with_session(scope: Message, session_id: str) -> Message:
    """``scope`` for marimo's session ``session_id``."""
    if scope.get("type") == "websocket":
        query = [
            (name, session_id if name == "session_id" else value)
            for name, value in parse_qsl(
                scope.get("query_string", b"").decode("latin-1"),
                keep_blank_values=True,
            )
        ]
        return {**scope, "query_string": urlencode(query).encode("latin-1")}
    headers = [
        (
            name,
            session_id.encode("latin-1")
            if name.lower() == context.SESSION_HEADER
            else value,
        )
        for name, value in scope.get("headers", ())
    ]
    return {**scope, "headers": headers}
