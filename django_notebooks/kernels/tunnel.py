"""ASGI over a local stream socket: how the web process calls the marimo app
running in a session's kernel process.

A connection carries one ASGI call at a time, in the wire's messages
(``wire.py``): the caller sends :class:`~wire.Call` with the scope, then an
:class:`~wire.Asgi` message for each message its ``receive`` gives; the
kernel process sends back an :class:`~wire.Asgi` message for each message
the app sends, then :class:`~wire.CallEnded` once the app has returned. A
connection that ends without it means the kernel process went away
mid-call. After :class:`~wire.CallEnded` an HTTP call's connection may carry
the next call (:class:`Line`); a websocket's ends with it.

Every wait for the kernel has a deadline: an HTTP call's next message, a
websocket's acceptance. A kernel that does not answer within it
(:class:`NotAnswering`) is not taken for dead: the caller is told it does
not answer, and the connection is closed, holding nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import pickle
from collections.abc import Awaitable, Callable
from typing import Any

from django_notebooks.kernels import wire

logger = logging.getLogger(__name__)
Message = dict[str, Any]
Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]
Connect = Callable[[], Awaitable[Connection]]
# Connections kept open to a kernel process between its HTTP calls, at most.
KEPT_IDLE = 2
# Messages of a call the kernel process has read ahead of its app, at most.
CALL_INBOX = 16


class TunnelClosed(Exception):
    """The other end closed the connection before the call ended."""


class NotAnswering(Exception):
    """The kernel process did not answer within the call's deadline."""


def encode_scope(scope: Message) -> bytes:
    """The scope as :class:`~wire.Call` carries it: pickled, without the
    keys whose values cannot be (a server's or a middleware's objects), and
    without such ``meta`` items."""
    try:
        return pickle.dumps(scope, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:
        kept = {key: value for key, value in scope.items() if _pickles(value)}
        meta = scope.get("meta")
        if isinstance(meta, dict):
            kept["meta"] = {k: v for k, v in meta.items() if _pickles(v)}
            left_out = sorted(set(meta) - set(kept["meta"]))
            if left_out:
                logger.warning(
                    "request.meta items %s cannot reach a notebook's kernel "
                    "process (they cannot be pickled)",
                    left_out,
                )
        return pickle.dumps(kept, protocol=pickle.HIGHEST_PROTOCOL)


def _pickles(value: Any) -> bool:
    try:
        pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:
        return False
    return True


async def call(
    connect: Connect,
    scope: Message,
    receive: Callable[[], Awaitable[Message]],
    send: Callable[[Message], Awaitable[None]],
    *,
    deadline: float,
) -> None:
    """Make one ASGI call through a new connection.

    ``deadline``: the seconds the kernel process may take to accept a
    websocket, and to send each message of an HTTP answer. Raises
    :class:`NotAnswering` past it, :class:`TunnelClosed` if the kernel
    process's end closed before the app returned.
    """
    connection = await _opened(connect, deadline)
    try:
        await _call_on(connection, scope, receive, send, deadline=deadline)
    finally:
        await _close(connection[1])


class Line:
    """The calls of one kernel process, from one web process.

    A websocket has a connection of its own, for as long as its page stays
    open. HTTP calls (a widget's change, a function call) reuse a
    connection kept open between them, so that a call does not wait for a
    new one to be set up (about 0.1 ms each, a tenth of the bridge's cost
    of a widget's round trip); a call made while another is under way
    takes another, and at most :data:`KEPT_IDLE` are kept. One connection
    for all of them, with the calls taking turns on it, would let a page
    that reads slowly hold up every call of its session.
    """

    def __init__(self, connect: Connect) -> None:
        self._connect = connect
        self._idle: list[tuple[asyncio.AbstractEventLoop, Connection]] = []

    async def call(
        self,
        scope: Message,
        receive: Callable[[], Awaitable[Message]],
        send: Callable[[Message], Awaitable[None]],
        *,
        deadline: float,
    ) -> None:
        """As :func:`call`, on a kept connection for an HTTP call."""
        if scope.get("type") != "http":
            await call(self._connect, scope, receive, send, deadline=deadline)
            return
        kept = self._kept()
        if kept is not None:
            # A kept connection may have been closed by its kernel process
            # a moment ago (one of code deployed before connections were
            # kept ends each after one call): a call it closes unanswered
            # is made again on a new one, with what it had read of the
            # request. (A kernel process that died mid-call refuses the
            # new connection.)
            taken: list[Message] = []
            answered: list[Message] = []

            async def receive_kept() -> Message:
                taken.append(await receive())
                return taken[-1]

            async def send_kept(message: Message) -> None:
                answered.append(message)
                await send(message)

            try:
                await self._call_on(kept, scope, receive_kept, send_kept, deadline)
                return
            except TunnelClosed:
                if answered:
                    raise
            receive = _replaying(taken, receive)
        connection = await _opened(self._connect, deadline)
        await self._call_on(connection, scope, receive, send, deadline)

    async def _call_on(
        self,
        connection: Connection,
        scope: Message,
        receive: Callable[[], Awaitable[Message]],
        send: Callable[[Message], Awaitable[None]],
        deadline: float,
    ) -> None:
        """The call on ``connection``, kept after if it may take another."""
        reusable = False
        try:
            reusable = await _call_on(
                connection, scope, receive, send, deadline=deadline
            )
        finally:
            if reusable and len(self._idle) < KEPT_IDLE:
                self._idle.append((asyncio.get_running_loop(), connection))
            else:
                await _close(connection[1])

    def _kept(self) -> Connection | None:
        """A kept connection of this event loop, still open."""
        loop = asyncio.get_running_loop()
        while self._idle:
            owner, (reader, writer) = self._idle.pop()
            if owner is loop and not reader.at_eof() and not writer.is_closing():
                return reader, writer
            _close_soon(owner, writer)
        return None

    def close(self) -> None:
        """Close the kept connections (the kernel has ended); any thread."""
        idle, self._idle = self._idle, []
        for owner, (_reader, writer) in idle:
            _close_soon(owner, writer)


def _replaying(
    taken: list[Message], receive: Callable[[], Awaitable[Message]]
) -> Callable[[], Awaitable[Message]]:
    """``receive``, giving ``taken`` first."""
    again = list(taken)

    async def replayed() -> Message:
        return again.pop(0) if again else await receive()

    return replayed


async def _opened(connect: Connect, deadline: float) -> Connection:
    try:
        return await asyncio.wait_for(connect(), deadline)
    except TimeoutError:
        raise NotAnswering from None


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(Exception):
        await writer.wait_closed()


def _close_soon(loop: asyncio.AbstractEventLoop, writer: asyncio.StreamWriter) -> None:
    """Close ``writer`` in its own event loop (a closed loop closed it)."""
    with contextlib.suppress(RuntimeError):  # the loop is closed
        loop.call_soon_threadsafe(writer.close)


async def _call_on(
    connection: Connection,
    scope: Message,
    receive: Callable[[], Awaitable[Message]],
    send: Callable[[Message], Awaitable[None]],
    *,
    deadline: float,
) -> bool:
    """One call on ``connection``; whether the connection may take another
    (the kernel process said the call ended)."""
    reader, writer = connection
    is_http = scope.get("type") == "http"
    answered = False  # the last part of an HTTP answer has been passed on
    writer.write(wire.encode(wire.Call(encode_scope(scope))))
    forwarding = asyncio.create_task(_forward_receive(receive, writer))
    waiting: float | None = deadline
    try:
        while True:
            try:
                answer = await asyncio.wait_for(wire.read(reader), waiting)
            except TimeoutError:
                raise NotAnswering from None
            except wire.WireError as error:
                raise TunnelClosed(str(error)) from error
            if answer is None:
                if answered:
                    # The whole answer came: how the call ended in the
                    # kernel process changes nothing for its caller.
                    return False
                raise TunnelClosed("the kernel process closed the call")
            if isinstance(answer, wire.CallEnded):
                return True
            if not isinstance(answer, wire.Asgi):
                raise TunnelClosed(f"an unexpected {type(answer).__name__}")
            if not is_http:
                # An accepted websocket may be quiet for as long as its
                # page stays open.
                waiting = None
            await send(answer.message)
            answered = is_http and _ends_an_answer(answer.message)
    finally:
        forwarding.cancel()
        with contextlib.suppress(BaseException):
            await forwarding


def _ends_an_answer(message: Message) -> bool:
    return message.get("type") == "http.response.body" and not message.get(
        "more_body", False
    )


async def _forward_receive(
    receive: Callable[[], Awaitable[Message]], writer: asyncio.StreamWriter
) -> None:
    while True:
        message = await receive()
        writer.write(wire.encode(wire.Asgi(message)))
        await writer.drain()
        if message["type"] in ("http.disconnect", "websocket.disconnect"):
            return


async def serve_call(
    app: Callable[..., Awaitable[None]],
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    watch: Callable[[Message], contextlib.AbstractContextManager[None]],
) -> None:
    """The kernel process's end of a connection: its calls one after
    another (a websocket's is its last), each run by ``app`` inside
    ``watch(scope)`` (the kernel process counts its websockets)."""
    calls = _Calls(reader)
    reading = asyncio.create_task(calls.read())
    try:
        while True:
            call = await calls.next()
            if call is None:
                return
            scope, inbox = call
            try:
                await _serve_one(app, scope, inbox, writer, watch)
            finally:
                calls.ended(inbox)
            if scope.get("type") != "http":
                return
    except ConnectionError:
        pass  # the web process went (the call's caller closed)
    finally:
        reading.cancel()
        writer.close()


class _Calls:
    """What the web process sends on a connection, read as it comes: the
    call under way gets its messages (a bounded queue, so a call whose app
    does not read holds the connection back); what comes for a call that
    has ended (its server's ``http.disconnect``) is dropped. A connection
    that does not open with a call ends."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self.reader = reader
        self.had_call = False
        self.opened: asyncio.Queue[tuple[Message, asyncio.Queue[Message | None]] | None]
        self.opened = asyncio.Queue(1)
        self.inbox: asyncio.Queue[Message | None] | None = None

    async def read(self) -> None:
        try:
            while True:
                try:
                    message = await wire.read(self.reader)
                except wire.WireError:
                    message = None
                if isinstance(message, wire.Call):
                    self.had_call = True
                    inbox: asyncio.Queue[Message | None] = asyncio.Queue(CALL_INBOX)
                    self.inbox = inbox
                    await self.opened.put((pickle.loads(message.scope), inbox))
                elif isinstance(message, wire.Asgi) and self.had_call:
                    inbox_now = self.inbox
                    if inbox_now is not None:
                        await inbox_now.put(message.message)
                else:  # the connection ended, or broke the wire's rules
                    break
        finally:
            if self.inbox is not None:
                if self.inbox.full():  # its caller has gone: that is what counts
                    self.inbox.get_nowait()
                self.inbox.put_nowait(None)
            with contextlib.suppress(asyncio.QueueFull):
                self.opened.put_nowait(None)

    async def next(self) -> tuple[Message, asyncio.Queue[Message | None]] | None:
        return await self.opened.get()

    def ended(self, inbox: asyncio.Queue[Message | None]) -> None:
        """The call of ``inbox`` has ended: what comes for it is dropped
        (and a message the reader waits to put there goes, freeing it)."""
        if self.inbox is inbox:
            self.inbox = None
        while not inbox.empty():
            inbox.get_nowait()


async def _serve_one(
    app: Callable[..., Awaitable[None]],
    scope: Message,
    inbox: asyncio.Queue[Message | None],
    writer: asyncio.StreamWriter,
    watch: Callable[[Message], contextlib.AbstractContextManager[None]],
) -> None:
    gone: Message = {"type": "websocket.disconnect", "code": 1006}
    if scope.get("type") == "http":
        gone = {"type": "http.disconnect"}
    closed = False

    async def receive() -> Message:
        nonlocal closed
        if closed:
            return gone
        message = await inbox.get()
        if message is None:
            closed = True
            return gone
        return message

    async def send(message: Message) -> None:
        writer.write(wire.encode(wire.Asgi(message)))
        await writer.drain()

    with watch(scope):
        try:
            await app(scope, receive, send)
        except asyncio.CancelledError:
            if _cancelled(asyncio.current_task()):
                raise  # the kernel process is stopping
            # The app's own cancellation, escaped from it (Starlette's
            # middleware cancels its work when the client has gone):
            # the call has ended, the process lives on.
            logger.debug("marimo's app was cancelled by itself in a call")
        except Exception:
            # As a server would: logged, and the call ends (Starlette
            # has answered 500 already). The process lives on: only a
            # call cut off without its end means it has gone.
            logger.exception("marimo's app failed in a kernel process")
    writer.write(wire.encode(wire.CallEnded()))
    await writer.drain()


def _cancelled(task: asyncio.Task[Any] | None) -> bool:
    """Whether ``task`` itself has been asked to stop."""
    return task is not None and task.cancelling() > 0
