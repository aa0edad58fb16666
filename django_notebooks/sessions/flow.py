"""Flow control on a notebook's kernel websocket, both ways, so that the web
process holds a bounded amount per session whatever a client sends or fails
to read.

**From the browser** (:class:`Inbox`). marimo's frontend sends nothing on the
kernel websocket: every call it makes is an HTTP POST, and marimo's handler
reads the socket only to notice that it closed. The only frames a page sends
are the acknowledgements of the bridge's own script (``notices.js``). So no
frame from the browser is handed to marimo or kept: the consumer reads each
one and drops it. marimo's handler is given the connect and, once the socket
has gone, the disconnect. A client that sends more than a few other frames
(:data:`STRAY_FRAMES_AT_ONCE`, then one every ten seconds) is flooding: it
costs the server's CPU for nothing, and under Daphne its memory, and is
closed. Each frame is also capped by ``MAX_WEBSOCKET_MESSAGE_BYTES``.

**To the browser** (:class:`Outbox`). A server that writes frames faster than
the client reads them must keep them somewhere. Daphne's ``send`` never
waits: every frame a client does not read stays in the web process's memory.
So the consumer stops taking frames from marimo while the page has more than
``MAX_UNREAD_WEBSOCKET_BYTES`` unread; marimo's frames then wait where marimo
made them, in the session's kernel process (under its ``MEMORY_MB``). A
frame larger than that goes only when nothing is unread.

The page says what it has read by acknowledging *marks*: after every
:data:`MARK_EVERY` bytes (and whenever the outbox must wait), the consumer
sends a small frame of its own, ``{"op": "django-notebooks-mark", "mark":
<random token>}``; the page's script answers ``{"op": "django-notebooks-ack",
"mark": <token>}`` and marimo's frontend never sees either. Frames arrive in
order, so a page that quotes a mark has read everything sent before it. A
count of frames would not do: a client could claim to have read what it never
did, and have the server buffer it all again; a token it can only quote after
reading.

A page that reads nothing for ``WEBSOCKET_READ_TIMEOUT`` seconds while output
waits for it (no acknowledgement that frees room, or a server ``send`` that
does not return) is closed: it does not read. Any progress restarts that
clock, so a slow connection is not taken for a dead one.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

Message = dict[str, Any]

ACK_OP = "django-notebooks-ack"
MARK_OP = "django-notebooks-mark"
#: Bytes sent between two marks: the page's acknowledgements come about this
#: often while output flows (one per 256 KiB), and a page that reads at all
#: shows progress well within the read timeout.
MARK_EVERY = 256 * 1024
#: Frames from the browser that are not acknowledgements: a page sends none.
#: A few are let through (then one every ten seconds) for a project's own
#: script, say; a client past that floods. Few, because the rule can only
#: count the frames the consumer has taken: Daphne reads on meanwhile and
#: queues what it reads (in the web process's memory), thousands of small
#: frames for each one the consumer takes on a busy machine.
STRAY_FRAMES_AT_ONCE = 3
STRAY_FRAMES_PER_SECOND = 0.1
#: A mark or an acknowledgement is about 70 bytes; a longer frame is not one.
MAX_ACK_BYTES = 256


class Stalled(Exception):
    """The page read nothing for the read timeout while output waited."""


class Gone(Exception):
    """The page's socket closed before a frame could be sent to it (its
    disconnect is on its way to the consumer)."""


def client_gone(error: BaseException) -> bool:
    """Whether the server's ``send`` failed because the client has gone:
    uvicorn raises ``ClientDisconnected`` (an ``OSError``), Daphne autobahn's
    ``Disconnected``. A page closing while output is on its way is ordinary,
    not an error."""
    if isinstance(error, OSError):
        return True
    kind = type(error)
    return kind.__name__ == "Disconnected" and kind.__module__.startswith("autobahn")


def frame_size(message: Message) -> int:
    """The bytes a websocket message carries (text as UTF-8)."""
    data = message.get("bytes")
    if data:
        return len(data)
    text = message.get("text") or ""
    # A compact ASCII string (marimo's JSON) knows it is ASCII without a scan.
    return len(text) if text.isascii() else len(text.encode())


class Bucket:
    """A token bucket: ``rate`` a second, at most ``burst`` at once."""

    def __init__(
        self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate
        self.burst = burst
        self.clock = clock
        self.level = burst
        self.updated = clock()

    def take(self, amount: float) -> bool:
        """Take ``amount``; ``False`` (taking nothing) if there is not that much."""
        now = self.clock()
        self.level = min(self.burst, self.level + (now - self.updated) * self.rate)
        self.updated = now
        if amount > self.level:
            return False
        self.level -= amount
        return True


class Inbox:
    """The browser's side of a kernel websocket, as marimo's handler sees it:
    the connect, then (once the socket has gone) the disconnect, and nothing
    in between. Also the rule a browser's frames must keep."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._stray = Bucket(STRAY_FRAMES_PER_SECOND, STRAY_FRAMES_AT_ONCE, clock)
        self._connected = False
        self._gone = asyncio.Event()
        self._code = 1000

    def admits_stray_frame(self) -> bool:
        """Whether one more frame that is not an acknowledgement is within
        what a page may send; ``False``: the client floods."""
        return self._stray.take(1)

    async def receive(self) -> Message:
        """marimo's ``receive``: the connect, then the disconnect once the
        socket has gone (the browser's frames are never handed on)."""
        if not self._connected:
            self._connected = True
            return {"type": "websocket.connect"}
        await self._gone.wait()
        return {"type": "websocket.disconnect", "code": self._code}

    def hang_up(self, code: int) -> None:
        """The socket has gone (or is being closed) with ``code``."""
        if not self._gone.is_set():
            self._code = code
            self._gone.set()


# The two frames of the protocol. The page's side is notices.js; the Python
# one (mark_in, acknowledgement) is for clients that are not a browser, such
# as the tests' and the benchmark's.


def mark_frame(token: str) -> str:
    return json.dumps({"op": MARK_OP, "mark": token})


def acknowledgement(token: str) -> str:
    return json.dumps({"op": ACK_OP, "mark": token})


def mark_in(text: Any) -> str | None:
    """The token of a mark frame from the server, if ``text`` is one."""
    return _token(text, MARK_OP)


def acknowledged_mark(message: Message) -> str | None:
    """The mark a frame from the page acknowledges, if it is an
    acknowledgement."""
    return _token(message.get("text"), ACK_OP)


def _token(text: Any, op: str) -> str | None:
    if not isinstance(text, str) or len(text) > MAX_ACK_BYTES or op not in text:
        return None
    try:
        frame = json.loads(text)
    except ValueError:
        return None
    if not isinstance(frame, dict) or frame.get("op") != op:
        return None
    token = frame.get("mark")
    return token if isinstance(token, str) else None


class Outbox:
    """Frames to the browser, at most ``window`` bytes ahead of what the page
    has acknowledged; :class:`Stalled` when it reads nothing for ``timeout``
    seconds while a frame waits."""

    def __init__(
        self,
        send: Callable[[Message], Awaitable[None]],
        *,
        window: int,
        timeout: float,
        mark_every: int = MARK_EVERY,
    ) -> None:
        self._send = send
        self.window = window
        self.timeout = timeout
        self.mark_every = mark_every
        #: Bytes sent, and bytes the page has acknowledged, since the start.
        self.sent = 0
        self.read = 0
        self._marked = 0  # ``sent`` as of the last mark
        self._marks: deque[tuple[str, int]] = deque()
        self._progress = asyncio.Event()
        self.closed = False

    @property
    def unread(self) -> int:
        """Bytes sent that the page has not acknowledged."""
        return self.sent - self.read

    async def send(self, message: Message) -> None:
        """Send a frame of marimo's once there is room for it (dropped if
        the socket closes meanwhile); :class:`Stalled` if there is none
        within the timeout, or the server's ``send`` does not return."""
        size = frame_size(message)
        await self._room_for(size)
        if self.closed:
            return
        await self._deliver(message, size)
        if self.sent - self._marked >= self.mark_every:
            await self._mark()

    async def send_now(self, message: Message) -> None:
        """Send a frame of the bridge's own (a notice) without waiting for
        room; it counts as unread like any other. Dropped if the server's
        ``send`` does not return within the timeout, or the page has gone."""
        try:
            await self._deliver(message, frame_size(message))
        except (Stalled, Gone):
            pass

    def acknowledge(self, mark: str) -> bool:
        """The page has read everything up to ``mark``; ``False`` if no
        mark outstanding is that one."""
        for index, (token, sent) in enumerate(self._marks):
            if hmac.compare_digest(token.encode(), mark.encode()):
                for _ in range(index + 1):
                    self._marks.popleft()
                self.read = sent
                self._progress.set()
                return True
        return False

    def close(self) -> None:
        """The socket is closing: a frame waiting for room is dropped."""
        self.closed = True
        self._progress.set()

    async def _room_for(self, size: int) -> None:
        while True:
            self._progress.clear()  # before looking: no acknowledgement is missed
            if self.closed or not self.unread or self.unread + size <= self.window:
                return
            if self._marked < self.sent:
                # Without a mark after the last frame, the page could not
                # acknowledge all it has read: the wait would never end.
                await self._mark()
                continue
            try:
                async with asyncio.timeout(self.timeout):
                    await self._progress.wait()
            except TimeoutError:
                raise Stalled from None

    async def _deliver(self, message: Message, size: int) -> None:
        self.sent += size
        try:
            # Under uvicorn, send waits while the client's socket is full.
            async with asyncio.timeout(self.timeout):
                await self._send(message)
        except TimeoutError:
            raise Stalled from None
        except Exception as error:
            if not client_gone(error):
                raise
            self.close()
            raise Gone from error

    async def _mark(self) -> None:
        token = secrets.token_urlsafe(12)
        text = mark_frame(token)
        self._marked = self.sent + len(text)
        self._marks.append((token, self._marked))
        await self._deliver({"type": "websocket.send", "text": text}, len(text))
