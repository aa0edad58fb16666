"""ASGI over a local stream socket: how the web process calls the marimo app
running in a session's kernel process.

One connection carries one ASGI call, in the wire's messages (``wire.py``):
the caller sends :class:`~wire.Call` with the scope, then an
:class:`~wire.Asgi` message for each message its ``receive`` gives; the
kernel process sends back an :class:`~wire.Asgi` message for each message
the app sends, then :class:`~wire.CallEnded` once the app has returned. A
connection that ends without it means the kernel process went away
mid-call.

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
Connect = Callable[[], Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]


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
    is_http = scope.get("type") == "http"
    answered = False  # the last part of an HTTP answer has been passed on
    try:
        reader, writer = await asyncio.wait_for(connect(), deadline)
    except TimeoutError:
        raise NotAnswering from None
    try:
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
                        return
                    raise TunnelClosed("the kernel process closed the call")
                if isinstance(answer, wire.CallEnded):
                    return
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
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


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
    """The kernel process's end of one call: run ``app`` on it, inside
    ``watch(scope)`` (the kernel process counts its websockets)."""
    try:
        opening = await wire.read(reader)
    except wire.WireError:
        opening = None
    if not isinstance(opening, wire.Call):
        writer.close()
        return
    scope = pickle.loads(opening.scope)
    gone: Message = {"type": "websocket.disconnect", "code": 1006}
    if scope.get("type") == "http":
        gone = {"type": "http.disconnect"}

    async def receive() -> Message:
        try:
            message = await wire.read(reader)
        except wire.WireError:
            message = None
        return message.message if isinstance(message, wire.Asgi) else gone

    async def send(message: Message) -> None:
        writer.write(wire.encode(wire.Asgi(message)))
        await writer.drain()

    try:
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
    except ConnectionError:
        pass  # the web process went (the call's caller closed)
    finally:
        writer.close()


def _cancelled(task: asyncio.Task[Any] | None) -> bool:
    """Whether ``task`` itself has been asked to stop."""
    return task is not None and task.cancelling() > 0
