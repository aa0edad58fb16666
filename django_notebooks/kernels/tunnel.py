"""ASGI over a local stream socket: how the web process calls the marimo app
running in a session's kernel process.

One connection carries one ASGI call. The caller sends the scope, then each
message its ``receive`` gives; the kernel process sends back each message
the app sends, then an end mark once the app has returned. A connection
that ends without the mark means the kernel process went away mid-call.

Messages are plain dicts of ``str``, ``bytes``, numbers, lists and tuples,
encoded with :mod:`marshal` (fast, and never runs code), each behind its
length. The scope alone is pickled, because what a project puts in
``request.meta`` (a model instance, a date) must reach notebook code as it
is; only the kernel process unpickles, what comes from it is never.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import marshal
import pickle
import struct
from collections.abc import Awaitable, Callable
from typing import Any

logger = logging.getLogger(__name__)
Message = dict[str, Any]
LENGTH = struct.Struct("!I")
END = {"type": "django_notebooks.end"}
# Large enough for any frame the bridge lets through (websocket messages
# are capped by MAX_WEBSOCKET_MESSAGE_BYTES, bodies by Django's limit).
MAX_FRAME = 256 * 1024 * 1024


class TunnelClosed(Exception):
    """The other end closed the connection before the call ended."""


def encode(message: Message) -> bytes:
    try:
        data = marshal.dumps(message)
    except ValueError:
        data = marshal.dumps(_plain(message))
    return LENGTH.pack(len(data)) + data


def _plain(value: Any) -> Any:
    """``value`` with enums as their values (marimo closes a websocket with
    an ``IntEnum`` code and a ``str`` enum reason)."""
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_plain(item) for item in value)
    return value


def encode_scope(scope: Message) -> bytes:
    """The scope, pickled; keys whose values cannot be (a server's or a
    middleware's objects) are left out, and so are such ``meta`` items."""
    try:
        data = pickle.dumps(scope, protocol=pickle.HIGHEST_PROTOCOL)
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
        data = pickle.dumps(kept, protocol=pickle.HIGHEST_PROTOCOL)
    return LENGTH.pack(len(data)) + data


def _pickles(value: Any) -> bool:
    try:
        pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:
        return False
    return True


async def read_message(
    reader: asyncio.StreamReader, *, pickled: bool = False
) -> Message | None:
    """The next message, or ``None`` once the other end has closed."""
    try:
        header = await reader.readexactly(LENGTH.size)
        (length,) = LENGTH.unpack(header)
        if length > MAX_FRAME:
            raise TunnelClosed(f"a frame of {length} bytes")
        data = await reader.readexactly(length)
        message = pickle.loads(data) if pickled else marshal.loads(data)
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    if not isinstance(message, dict):
        raise TunnelClosed(f"a frame that is not a message: {type(message)}")
    return message


async def call(
    connect: Callable[[], Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]],
    scope: Message,
    receive: Callable[[], Awaitable[Message]],
    send: Callable[[Message], Awaitable[None]],
) -> None:
    """Make one ASGI call through a new connection.

    Raises :class:`TunnelClosed` if the kernel process's end closed before
    the app returned.
    """
    reader, writer = await connect()
    try:
        writer.write(encode_scope(scope))
        forwarding = asyncio.create_task(_forward_receive(receive, writer))
        try:
            while True:
                message = await read_message(reader)
                if message is None:
                    raise TunnelClosed("the kernel process closed the call")
                if message == END:
                    return
                await send(message)
        finally:
            forwarding.cancel()
            with contextlib.suppress(BaseException):
                await forwarding
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


async def _forward_receive(
    receive: Callable[[], Awaitable[Message]], writer: asyncio.StreamWriter
) -> None:
    while True:
        message = await receive()
        writer.write(encode(message))
        await writer.drain()
        if message["type"] in ("http.disconnect", "websocket.disconnect"):
            return


async def serve_call(
    app: Callable[..., Awaitable[None]],
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    watch: Callable[
        [Message, asyncio.StreamWriter], contextlib.AbstractContextManager[None]
    ],
) -> None:
    """The kernel process's end of one call: run ``app`` on it, inside
    ``watch(scope, writer)`` (the kernel process counts its websockets)."""
    scope = await read_message(reader, pickled=True)
    if scope is None:
        writer.close()
        return
    gone = {"type": "websocket.disconnect", "code": 1006}
    if scope.get("type") == "http":
        gone = {"type": "http.disconnect"}

    async def receive() -> Message:
        message = await read_message(reader)
        return gone if message is None else message

    async def send(message: Message) -> None:
        writer.write(encode(message))
        await writer.drain()

    try:
        with watch(scope, writer):
            try:
                await app(scope, receive, send)
            except Exception:
                # As a server would: logged, and the call ends (Starlette
                # has answered 500 already). The process lives on: only a
                # call cut off without its end mark means it has gone.
                logger.exception("marimo's app failed in a kernel process")
        writer.write(encode(END))
        await writer.drain()
    except ConnectionError:
        pass  # the web process went (the call's caller closed)
    finally:
        writer.close()
