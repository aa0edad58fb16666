"""Kernel calls between server processes, over the channel layer.

A marimo session's kernel lives in the process whose kernel websocket opened
it, but marimo's frontend sends each widget change as a separate HTTP POST,
which a load balancer or ``uvicorn --workers N`` may hand to any process. A
process that receives a kernel call (or an ``@file`` download) for a session
it does not hold looks the session up in the ``NotebookSession`` table and, if
another process holds it, sends the request to the session's channel-layer
group; the consumer holding the websocket runs it against its kernel and
sends the answer back to a reply channel of the asking process.

The asking process checks what it can (origin, body), the holding process
checks ownership against its session binding, exactly as for a local call.
Only the browser login's session key or visitor id travel, never cookies.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from channels.db import database_sync_to_async
from channels.layers import get_channel_layer

from django_notebooks import admission, context, registry
from django_notebooks.kernels import router
from django_notebooks.marimo.forwarding import passed_headers, single_body_receive
from django_notebooks.sessions import channel_messages, records

logger = logging.getLogger(__name__)

# A forwarded call that gets no answer in this time went to a process that
# has stopped: the session is gone. (marimo answers kernel calls at once;
# their results come over the websocket.)
REPLY_TIMEOUT = 10.0
# Sent again after this long without an answer (see forward()).
RESEND_AFTER = 1.0
# How many recent call ids a holder remembers, to run each call once.
CALLS_REMEMBERED = 256
# Sessions known to live in another process, so that their later calls skip
# the database lookup. Ids are random and the holder checks ownership, so a
# stale entry costs a timeout at worst, never a wrong answer.
KNOWN_ELSEWHERE_MAX = 10_000
_known_elsewhere: OrderedDict[str, None] = OrderedDict()
# Headers a forwarded request does not carry: the login travels as its
# session key alone, and hop-by-hop headers mean nothing past this process.
UNFORWARDED_HEADERS = frozenset({b"cookie", b"authorization", b"connection"})


@dataclass(frozen=True)
class Reply:
    """The answer to a forwarded request."""

    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes


class RecentCalls:
    """The answers to the last CALLS_REMEMBERED calls a holder has taken,
    so that a resent call is run once and answered again."""

    RUNNING = None

    def __init__(self) -> None:
        self._answers: OrderedDict[str, Reply | None] = OrderedDict()

    def __contains__(self, call_id: str) -> bool:
        return call_id in self._answers

    def answer_to(self, call_id: str) -> Reply | None:
        """The answer given to ``call_id``; ``None`` while it runs."""
        return self._answers[call_id]

    def started(self, call_id: str) -> None:
        self._answers[call_id] = self.RUNNING
        if len(self._answers) > CALLS_REMEMBERED:
            self._answers.popitem(last=False)

    def answered(self, call_id: str, reply: Reply) -> None:
        if call_id in self._answers:
            self._answers[call_id] = reply


class ReplyChannel:
    """The channel on which this event loop's forwarded calls get their
    answers, read by one task that hands each answer to the call waiting for
    it (by ``call_id``).

    One channel for every call rather than one per call: the answer then
    costs no channel set-up, and RedisPubSubChannelLayer, which subscribes to
    each channel it receives from and stays subscribed, holds one
    subscription per process rather than one per call ever made.
    """

    def __init__(self, layer: Any) -> None:
        self.layer = layer
        self.name = ""
        self._waiting: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._reader: asyncio.Task[None] | None = None

    async def expect(self, call_id: str) -> asyncio.Future[dict[str, Any]]:
        """A future for the answer to ``call_id``; ``forget()`` it after."""
        if self._reader is None or self._reader.done():
            # (Subscribed before the request goes out, on a pub/sub layer.)
            self.name = await self.layer.new_channel()
            self._reader = asyncio.create_task(self._read(self.name))
        answer = asyncio.get_running_loop().create_future()
        self._waiting[call_id] = answer
        return answer

    def forget(self, call_id: str) -> None:
        self._waiting.pop(call_id, None)

    async def _read(self, name: str) -> None:
        try:
            while True:
                message = await self.layer.receive(name)
                # (A resent call may be answered twice: the second finds no
                # one waiting.)
                waiting = self._waiting.pop(message.get("call_id"), None)
                if waiting is not None and not waiting.done():
                    waiting.set_result(message)
        except Exception as error:
            # The layer failed (Redis went away): the calls waiting fail with
            # it (forward() logs it), and the next call reads a new channel.
            logger.warning("The reply channel of forwarded calls failed: %r", error)
            for waiting in self._waiting.values():
                if not waiting.done():
                    waiting.set_exception(error)
            self._waiting.clear()


# One per event loop (a WSGI server runs each async view in a loop of its own).
_reply_channels: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, ReplyChannel] = (
    weakref.WeakKeyDictionary()
)


def reply_channel(layer: Any) -> ReplyChannel:
    """The running event loop's reply channel on ``layer``."""
    loop = asyncio.get_running_loop()
    channel = _reply_channels.get(loop)
    if channel is None or channel.layer is not layer:
        channel = _reply_channels[loop] = ReplyChannel(layer)
    return channel


async def held_elsewhere(session_id: str) -> bool:
    """Whether another server process holds this session's websocket."""
    if get_channel_layer() is None:
        return False
    if session_id in _known_elsewhere:
        _known_elsewhere.move_to_end(session_id)
        return True
    if not await database_sync_to_async(records.other_process_holds)(session_id):
        return False
    _known_elsewhere[session_id] = None
    if len(_known_elsewhere) > KNOWN_ELSEWHERE_MAX:
        _known_elsewhere.popitem(last=False)
    return True


async def ask_holder(
    scope: dict[str, Any],
    location: registry.Location,
    caller: admission.Caller,
    *,
    kind: str,
    body: bytes,
    user: dict[str, Any] | None = None,
) -> Reply:
    """Send the request that arrived with ``scope`` to the process holding
    ``caller.session_id``; its answer.

    ``kind`` is ``"kernel"`` (a kernel call: the holder checks ownership) or
    ``"file"`` (a download, already allowed here: ``user`` is who asks).
    """
    assert caller.session_id
    message = {
        "type": channel_messages.KERNEL_CALL,
        "kind": kind,
        "notebook": location.notebook.slug,
        "session_id": caller.session_id,
        "session_key": caller.session_key,
        "visitor": caller.visitor,
        "user": user,
        "method": scope["method"],
        "scheme": scope.get("scheme", "http"),
        "path": scope["path"],
        "mount": location.mount(scope["path"]),
        "query_string": scope.get("query_string", b""),
        "headers": [
            [name, value]
            for name, value in scope.get("headers", [])
            if name.lower() not in UNFORWARDED_HEADERS
        ],
        "server": list(scope["server"]) if scope.get("server") else None,
        "body": body,
    }
    return await forward(caller.session_id, message)


async def forward(session_id: str, message: dict[str, Any]) -> Reply:
    """Send a request to the process holding ``session_id``; its answer.

    The request is sent again every RESEND_AFTER seconds until an answer
    comes: the channel layer may drop a message, the request or the answer
    (channels_redis loses the message it is popping when a consumer's
    receive is cancelled, as happens whenever a websocket closes; group_send
    drops what a full channel cannot take). The holder runs each
    ``call_id`` once and answers resends with the same answer.

    A channel layer that fails (Redis unreachable) gives a ``503``: the
    session may well be alive.
    """
    layer = get_channel_layer()
    assert layer is not None  # held_elsewhere() said so
    replies = reply_channel(layer)
    call_id = uuid.uuid4().hex
    loop = asyncio.get_running_loop()
    deadline = loop.time() + REPLY_TIMEOUT
    try:
        answering = await replies.expect(call_id)
        message = {**message, "reply_to": replies.name, "call_id": call_id}
        while not answering.done() and loop.time() < deadline:
            await layer.group_send(channel_messages.session_group(session_id), message)
            wait = min(RESEND_AFTER, deadline - loop.time())
            await asyncio.wait({answering}, timeout=max(wait, 0))
        if not answering.done():
            raise TimeoutError
        answer = answering.result()
    except TimeoutError:
        logger.warning(
            "No answer from the process holding notebook session %s: it has "
            "stopped, so the session has ended.",
            session_id,
        )
        _known_elsewhere.pop(session_id, None)
        await database_sync_to_async(records.forget_elsewhere)(session_id)
        return refused(admission.SESSION_ENDED)
    except Exception:
        logger.exception(
            "The channel layer failed while forwarding a call for notebook session %s",
            session_id,
        )
        return refused(admission.UNREACHABLE)
    finally:
        replies.forget(call_id)
    return Reply(
        answer["status"],
        [tuple(header) for header in answer["headers"]],
        answer["body"],
    )


def refused(refusal: admission.Refusal) -> Reply:
    """A refusal as an answer."""
    return Reply(
        refusal.status, [(b"content-type", b"application/json")], refusal.body()
    )


def json_reply(status: int, message: str) -> Reply:
    """An error answer, shaped as the bridge's other refusals."""
    return refused(admission.Refusal(status, message))


async def answer(message: dict[str, Any], recent: RecentCalls | None = None) -> None:
    """Run a request forwarded by another process and send back the answer.

    Runs in the process holding the session (called by its consumer). A
    resent call (same ``call_id``: the asking process got no answer yet) is
    not run again: its answer is sent again once there is one.
    """
    call_id = message.get("call_id")
    if recent is not None and call_id:
        if call_id in recent:
            earlier = recent.answer_to(call_id)
            if earlier is not None:
                await _send_reply(message["reply_to"], call_id, earlier)
            return
        recent.started(call_id)
    try:
        reply = await _run(message)
    except Exception:
        logger.exception("A forwarded notebook request failed")
        reply = json_reply(500, "The notebook failed to answer.")
    if recent is not None and call_id:
        recent.answered(call_id, reply)
    await _send_reply(message["reply_to"], call_id, reply)


async def _send_reply(reply_to: str, call_id: str | None, reply: Reply) -> None:
    layer = get_channel_layer()
    if layer is not None:
        await layer.send(
            reply_to,
            {
                "type": channel_messages.KERNEL_REPLY,
                "call_id": call_id,
                "status": reply.status,
                "headers": [list(header) for header in reply.headers],
                "body": reply.body,
            },
        )


async def _run(message: dict[str, Any]) -> Reply:
    notebook = registry.get_notebook(message["notebook"])
    if notebook is None:
        return json_reply(404, "No such notebook.")
    meta: dict[str, Any] = {}
    caller = admission.Caller.of_login(
        message["session_id"], message["session_key"], message["visitor"]
    )
    if message["kind"] == "kernel":
        admitted = admission.owned_call(notebook, caller)
        if isinstance(admitted, admission.Refusal):
            return refused(admitted)
        user, meta = admitted.user_context, admitted.meta
    else:
        # A download: only of a file this session's kernel made.
        subpath = message["path"][len(message["mount"]) :]
        if not admission.owned_download(notebook, caller, subpath):
            return refused(admission.NO_SUCH_FILE)
        user = message["user"] or {}
    scope = context.marimo_scope(
        {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": message["method"],
            "scheme": message["scheme"],
            "path": message["path"],
            "query_string": message["query_string"],
            "headers": [tuple(header) for header in message["headers"]],
            "server": tuple(message["server"]) if message["server"] else None,
        },
        path=message["path"],
        root_path=message["mount"].rstrip("/"),
        user=user,
        meta=meta,
        notebook_file=str(notebook.path),
        session_id=message["session_id"],
    )
    return await collect(router.app_for(notebook), scope, message["body"])


async def collect(app: Any, scope: dict[str, Any], body: bytes) -> Reply:
    """Run an ASGI app on one request and gather its whole answer."""
    status = 500
    headers: list[tuple[bytes, bytes]] = []
    chunks: list[bytes] = []
    done = asyncio.Event()

    async def send(message: dict[str, Any]) -> None:
        nonlocal status, headers
        if message["type"] == "http.response.start":
            status = message["status"]
            headers = passed_headers(message.get("headers", []))
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                done.set()

    await app(scope, single_body_receive(body, until=done), send)
    return Reply(status, headers, b"".join(chunks))
