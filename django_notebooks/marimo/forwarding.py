"""Running one HTTP request through a marimo ASGI app: one driver for every
caller.

:func:`answer_of` starts the app (marimo's app in this process, or the
tunnel into a kernel process) and hands back its :class:`Answer` once it
has begun: the status, the headers the bridge passes on, and the body as it
comes. Each caller takes it the way it needs it:

- :func:`forward_http`, a Django view: small answers (JSON, the page) as an
  ordinary ``HttpResponse``; anything marimo sends in several parts (static
  files, ``@file`` downloads) streamed through a ``StreamingHttpResponse``,
  with a bounded queue so a slow client slows marimo down instead of filling
  memory;
- :func:`collect`, the kernel calls (calls.py): the whole answer as a
  :class:`Reply`, which the fast path sends (:func:`send_reply`), the view
  returns (:func:`django_response`) and the relay carries between processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
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


@dataclass(frozen=True)
class Reply:
    """A whole answer: a kernel call's, a refusal's, or one carried between
    server processes (sessions/relay.py)."""

    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes


class Answer:
    """marimo's answer to one request, once it has begun (see answer_of())."""

    def __init__(self, start: dict[str, Any], first: Any, run: _AppRun) -> None:
        self.status: int = start["status"]
        #: The headers the bridge passes on (DROPPED_RESPONSE_HEADERS are not).
        self.headers = passed_headers(start.get("headers", []))
        self._first = first
        self._run = run

    @property
    def whole(self) -> bool:
        """Whether the body came in one part (the app has then ended)."""
        return self._first is _END or not self._first.get("more_body", False)

    async def parts(self) -> AsyncIterator[bytes]:
        """The body's parts as the app sends them; the app is ended when
        they stop, whether they were all read or not."""
        complete = False
        try:
            item = self._first
            while item is not _END:
                data = item.get("body", b"")
                if data:
                    yield data
                if not item.get("more_body", False):
                    complete = True
                    break
                item = await self._run.next_chunk()
        finally:
            await self._run.finish(complete=complete)

    async def body(self) -> bytes:
        """The whole body."""
        return b"".join([part async for part in self.parts()])


class _AppRun:
    """One run of an ASGI app on one request: what it sends, queued."""

    def __init__(self, app: Callable[..., Any], scope: dict[str, Any], body: bytes):
        self.start: asyncio.Future[dict[str, Any]] = (
            asyncio.get_running_loop().create_future()
        )
        self.chunks: asyncio.Queue[Any] = asyncio.Queue(maxsize=QUEUE_SIZE)
        self.finished = asyncio.Event()
        self._ended = False
        receive = single_body_receive(body, until=self.finished)
        self.task = asyncio.create_task(app(scope, receive, self._send))

    async def _send(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            self.start.set_result(message)
        elif message["type"] == "http.response.body":
            await self.chunks.put(message)

    async def next_chunk(self) -> Any:
        """The next body message, or ``_END`` once the app has stopped."""
        if self.chunks.empty() and not self.task.done():
            getter = asyncio.ensure_future(self.chunks.get())
            await asyncio.wait({getter, self.task}, return_when=asyncio.FIRST_COMPLETED)
            if getter.done():
                return getter.result()
            getter.cancel()
        return self.chunks.get_nowait() if not self.chunks.empty() else _END

    async def finish(self, *, complete: bool) -> None:
        """Tell the app the client has gone, and let it end (once)."""
        if self._ended:
            return
        self._ended = True
        self.finished.set()
        if complete and not self.task.done():
            # An app waiting in receive() has just been woken with the
            # disconnect; cancelling it now would lose that (on Python
            # 3.12+, whose wait_for no longer absorbs the cancellation).
            await asyncio.wait({self.task}, timeout=END_GRACE)
        if not self.task.done():
            self.task.cancel()
        await _quietly(self.task)


async def answer_of(
    app: Callable[..., Any], scope: dict[str, Any], body: bytes
) -> Answer:
    """Run ``app`` on one HTTP request whose whole body is ``body``; its
    answer once it has begun. Raises :class:`UpstreamError` (or the app's
    own error) if the app ends without beginning one."""
    run = _AppRun(app, scope, body)
    try:
        await asyncio.wait({run.start, run.task}, return_when=asyncio.FIRST_COMPLETED)
        if not run.start.done():
            # The app ended without answering: report why it failed.
            run.task.result()
            raise UpstreamError("marimo's app ended without a response")
        first = await run.next_chunk()
    except BaseException:
        run.finished.set()
        run.task.cancel()
        raise
    answer = Answer(run.start.result(), first, run)
    if answer.whole:
        await run.finish(complete=True)
    return answer


async def collect(app: Callable[..., Any], scope: dict[str, Any], body: bytes) -> Reply:
    """Run ``app`` on one request; its whole answer."""
    answer = await answer_of(app, scope, body)
    return Reply(answer.status, answer.headers, await answer.body())


async def forward_http(
    app: Callable[..., Any], scope: dict[str, Any], body: bytes
) -> HttpResponse | StreamingHttpResponse:
    """Run ``app`` on one HTTP request and return Django's response for it."""
    answer = await answer_of(app, scope, body)
    headers = _response_headers(answer.headers)
    if answer.whole:
        response: HttpResponse | StreamingHttpResponse = HttpResponse(
            await answer.body(), status=answer.status
        )
        # Django adds its own; marimo's must not override a rewritten body.
        headers = [(n, v) for n, v in headers if n.lower() != "content-length"]
    else:
        response = StreamingHttpResponse(answer.parts(), status=answer.status)
    _apply_headers(response, headers)
    return response


def django_response(reply: Reply) -> HttpResponse:
    """A whole answer as Django's response."""
    response = HttpResponse(reply.body, status=reply.status)
    headers = _response_headers(reply.headers)
    _apply_headers(
        response, [(n, v) for n, v in headers if n.lower() != "content-length"]
    )
    return response


async def send_reply(send: Callable[..., Any], reply: Reply) -> None:
    """Send a whole answer on an ASGI connection."""
    headers = [
        (name, value)
        for name, value in reply.headers
        if name.lower() != b"content-length"
    ]
    headers.append((b"content-length", str(len(reply.body)).encode()))
    await send(
        {"type": "http.response.start", "status": reply.status, "headers": headers}
    )
    await send({"type": "http.response.body", "body": reply.body})


async def _quietly(task: asyncio.Task[Any]) -> None:
    """Wait for marimo's app to end; its errors are logged, not raised, since
    its answer (marimo sends a 500 for its own errors) has already begun."""
    with contextlib.suppress(asyncio.CancelledError):
        try:
            await task
        except Exception:
            logger.exception("marimo's app failed while answering")
