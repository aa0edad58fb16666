"""Calling marimo's ASGI app from a Django view, and streaming its answer back.

Small answers (JSON, the page) come back as an ordinary ``HttpResponse``;
anything marimo sends in several parts (static files, ``@file`` downloads,
server-sent events) is relayed as it arrives through a
``StreamingHttpResponse``, with a bounded queue so a slow client slows marimo
down instead of filling memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from django.http import HttpResponse, StreamingHttpResponse

logger = logging.getLogger(__name__)

# Headers marimo sets that the bridge must not pass on. marimo allows every
# origin (it has no auth of its own); Django's site has its own CORS policy.
DROPPED_RESPONSE_HEADERS = frozenset(
    {
        "access-control-allow-origin",
        "access-control-allow-credentials",
        "access-control-allow-methods",
        "access-control-allow-headers",
        "access-control-expose-headers",
        "access-control-max-age",
        "connection",
        "transfer-encoding",
        "keep-alive",
        # marimo sets no cookies when Django does the auth; never let a
        # notebook app write cookies on the project's domain.
        "set-cookie",
    }
)
QUEUE_SIZE = 8
# Seconds an app may take to end after its last body message (Starlette
# stops its disconnect listener, runs background tasks) before it is
# cancelled, as a server lets it end instead of cancelling it at once.
END_GRACE = 1.0
_END = object()


class UpstreamError(Exception):
    """marimo's app failed before it began its answer."""


def passed_headers(raw_headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """marimo's response headers without those the bridge must not pass on."""
    return [
        (name, value)
        for name, value in raw_headers
        if name.decode("latin-1").lower() not in DROPPED_RESPONSE_HEADERS
    ]


def single_body_receive(body: bytes, until: asyncio.Event) -> Callable[[], Any]:
    """An ASGI ``receive`` for a request whose whole body is ``body``.

    After the body it blocks until ``until`` is set, as a server does until
    the client goes: Starlette's file and streaming responses listen for a
    disconnect while they send, and answering at once would cut them short.
    """
    delivered = False

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        await until.wait()
        return {"type": "http.disconnect"}

    return receive


def _response_headers(raw_headers: list[tuple[bytes, bytes]]) -> list[tuple[str, str]]:
    return [
        (name.decode("latin-1"), value.decode("latin-1"))
        for name, value in passed_headers(raw_headers)
    ]


def _apply_headers(
    response: HttpResponse | StreamingHttpResponse, headers: list[tuple[str, str]]
) -> None:
    seen: dict[str, str] = {}
    for name, value in headers:
        key = name.lower()
        # Repeated headers (Vary, Link) are folded, as HTTP allows.
        seen[key] = f"{seen[key]}, {value}" if key in seen else value
        response.headers[name] = seen[key]


async def forward_http(
    app: Callable[..., Any], scope: dict[str, Any], body: bytes
) -> HttpResponse | StreamingHttpResponse:
    """Run ``app`` on one HTTP request and return Django's response for it."""
    start: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
    chunks: asyncio.Queue[Any] = asyncio.Queue(maxsize=QUEUE_SIZE)
    finished = asyncio.Event()
    receive = single_body_receive(body, until=finished)

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            start.set_result(message)
        elif message["type"] == "http.response.body":
            await chunks.put(message)

    task = asyncio.create_task(app(scope, receive, send))

    async def next_chunk() -> Any:
        """The next body message, or ``_END`` once the app has stopped."""
        if chunks.empty() and not task.done():
            getter = asyncio.ensure_future(chunks.get())
            await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
            if getter.done():
                return getter.result()
            getter.cancel()
        return chunks.get_nowait() if not chunks.empty() else _END

    try:
        await asyncio.wait({start, task}, return_when=asyncio.FIRST_COMPLETED)
        if not start.done():
            # The app ended without answering: report why it failed.
            task.result()
            raise UpstreamError("marimo's app ended without a response")
        first = await next_chunk()
    except BaseException:
        finished.set()
        task.cancel()
        raise

    message = start.result()
    status = message["status"]
    headers = _response_headers(message.get("headers", []))

    if first is _END or not first.get("more_body", False):
        finished.set()
        await _quietly(task)
        content = b"" if first is _END else first.get("body", b"")
        response: HttpResponse | StreamingHttpResponse = HttpResponse(
            content, status=status
        )
        # Django adds its own; marimo's must not override a rewritten body.
        headers = [(n, v) for n, v in headers if n.lower() != "content-length"]
        _apply_headers(response, headers)
        return response

    async def stream() -> AsyncIterator[bytes]:
        complete = False
        try:
            item = first
            while item is not _END:
                data = item.get("body", b"")
                if data:
                    yield data
                if not item.get("more_body", False):
                    complete = True
                    break
                item = await next_chunk()
        finally:
            finished.set()
            if complete and not task.done():
                # An app waiting in receive() has just been woken with the
                # disconnect; cancelling it now would lose that (on Python
                # 3.12+, whose wait_for no longer absorbs the cancellation).
                await asyncio.wait({task}, timeout=END_GRACE)
            if not task.done():
                task.cancel()
            await _quietly(task)

    response = StreamingHttpResponse(stream(), status=status)
    _apply_headers(response, headers)
    return response


async def _quietly(task: asyncio.Task[Any]) -> None:
    """Wait for marimo's app to end; its errors are logged, not raised, since
    its answer (marimo sends a 500 for its own errors) has already begun."""
    with contextlib.suppress(asyncio.CancelledError):
        try:
            await task
        except Exception:
            logger.exception("marimo's app failed while answering")
