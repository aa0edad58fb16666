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

Slow is not dead. A kernel busy in a long cell answers late, so whether the
holding *process* is alive is told apart from the kernel: the holder's event
loop acknowledges each call as it arrives and names the calls still running
in a heartbeat every second. The asking process waits as long as it hears
from the holder, up to the deadline of a local call (504 past it); only a
holder that says nothing at all for REPLY_TIMEOUT is taken for gone (410,
and its record deleted), unless its record names a process of this host that
still runs (503: busy, not gone).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import uuid
import weakref
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from channels.db import database_sync_to_async
from channels.layers import get_channel_layer

from django_notebooks import limits, refusals, registry
from django_notebooks.marimo.forwarding import Reply
from django_notebooks.sessions import channel_messages, records

if TYPE_CHECKING:
    from django_notebooks.admission import Caller

logger = logging.getLogger(__name__)

# A holder that says nothing in this time, asked again every RESEND_AFTER
# seconds, has stopped (unless it runs on this host: see forward()). Its
# event loop acknowledges a call at once and then beats every
# HEARTBEAT_EVERY seconds while the call runs, whatever its kernel does.
REPLY_TIMEOUT = 10.0
# Sent again after this long without a word from the holder (see forward()).
RESEND_AFTER = 1.0
# How often a holder names the forwarded calls it is still running.
HEARTBEAT_EVERY = 1.0
# A call the holder acknowledged is sent again after this long without a
# heartbeat or its answer (either may have been lost: the resend is answered
# with the answer, or acknowledged again).
RESEND_WHEN_SILENT = 3 * HEARTBEAT_EVERY
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

# A forwarded call beyond the CALLS_REMEMBERED a session may have running.
TOO_MANY_CALLS = refusals.Refusal(
    503, "The notebook is busy with earlier requests: try again in a moment."
)
# A call the holder took, whose answer did not come within the deadline of
# a local call: the kernel is busy (a long cell) or stuck.
NOT_ANSWERING = refusals.NOT_ANSWERING


class RecentCalls:
    """The answers to the last CALLS_REMEMBERED calls a holder has taken,
    so that a resent call is run once and answered again.

    A running call is never forgotten (its resends must not run it again):
    a session with CALLS_REMEMBERED calls running takes no more.
    """

    RUNNING = None

    def __init__(self) -> None:
        self._answers: OrderedDict[str, Reply | None] = OrderedDict()

    def __contains__(self, call_id: str) -> bool:
        return call_id in self._answers

    def answer_to(self, call_id: str) -> Reply | None:
        """The answer given to ``call_id``; ``None`` while it runs."""
        return self._answers[call_id]

    def started(self, call_id: str) -> bool:
        """Remember that ``call_id`` runs; ``False`` (and nothing
        remembered) if CALLS_REMEMBERED calls are running already."""
        if len(self._answers) >= CALLS_REMEMBERED:
            oldest_answered = next(
                (
                    earlier
                    for earlier, answer in self._answers.items()
                    if answer is not self.RUNNING
                ),
                None,
            )
            if oldest_answered is None:
                return False
            del self._answers[oldest_answered]
        self._answers[call_id] = self.RUNNING
        return True

    def answered(self, call_id: str, reply: Reply) -> None:
        if call_id in self._answers:
            self._answers[call_id] = reply


class AwaitedCall:
    """What the asking process has heard from the holder about one call."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.answer: asyncio.Future[dict[str, Any]] = loop.create_future()
        #: The loop's time of the holder's last word on this call (an
        #: acknowledgement, a heartbeat, the answer); ``None`` before any.
        self.heard_at: float | None = None
        #: Set at each word from the holder (the waiting call clears it).
        self.news = asyncio.Event()

    def heard(self, at: float) -> None:
        self.heard_at = at
        self.news.set()


class ReplyChannel:
    """The channel on which this event loop's forwarded calls hear from the
    processes holding their sessions (acknowledgements, heartbeats, answers),
    read by one task that hands each word to the call it is about (by
    ``call_id``).

    One channel for every call rather than one per call: the answer then
    costs no channel set-up, and RedisPubSubChannelLayer, which subscribes to
    each channel it receives from and stays subscribed, holds one
    subscription per process rather than one per call ever made.
    """

    def __init__(self, layer: Any) -> None:
        self.layer = layer
        self.name = ""
        self._waiting: dict[str, AwaitedCall] = {}
        self._reader: asyncio.Task[None] | None = None

    async def expect(self, call_id: str) -> AwaitedCall:
        """What will be heard about ``call_id``; ``forget()`` it after."""
        if self._reader is None or self._reader.done():
            # (Subscribed before the request goes out, on a pub/sub layer.)
            self.name = await self.layer.new_channel()
            self._reader = asyncio.create_task(self._read(self.name))
        call = AwaitedCall(asyncio.get_running_loop())
        self._waiting[call_id] = call
        return call

    def forget(self, call_id: str) -> None:
        self._waiting.pop(call_id, None)

    async def _read(self, name: str) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                message = await self.layer.receive(name)
                # (Words about a call no longer waited for are dropped: a
                # resent call may be answered twice.)
                if message.get("type") == channel_messages.KERNEL_RUNNING:
                    for call_id in message.get("call_ids") or ():
                        running = self._waiting.get(call_id)
                        if running is not None:
                            running.heard(loop.time())
                elif message.get("type") == channel_messages.KERNEL_REPLY:
                    answered = self._waiting.pop(message.get("call_id"), None)
                    if answered is not None and not answered.answer.done():
                        answered.answer.set_result(message)
                        answered.heard(loop.time())
        except Exception as error:
            # The layer failed (Redis went away): the calls waiting fail with
            # it (forward() logs it), and the next call reads a new channel.
            logger.warning("The reply channel of forwarded calls failed: %r", error)
            for waiting in self._waiting.values():
                if not waiting.answer.done():
                    waiting.answer.set_exception(error)
                    waiting.news.set()
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
    caller: Caller,
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
        # How long the asking process waits: the holder's heartbeat names
        # the call for as long.
        "deadline": limits.call_deadline(registry.limits_of(location.notebook)),
    }
    return await forward(caller.session_id, message, deadline=message["deadline"])


async def forward(
    session_id: str, message: dict[str, Any], *, deadline: float
) -> Reply:
    """Send a request to the process holding ``session_id``; its answer.

    The holder's event loop acknowledges the call as it arrives and sends a
    heartbeat while it runs; the answer may come late (a cell holds the
    kernel up), and is waited for as long as the holder is heard from, up to
    ``deadline`` seconds (a local call's: ``limits.call_deadline()``), then
    answered ``504`` here. Nothing is decided about the session then: the
    kernel is busy or stuck, and the process holding it deals with that.

    The request is sent again every RESEND_AFTER seconds until the holder
    acknowledges it, and again whenever it has been silent for
    RESEND_WHEN_SILENT: the channel layer may drop any message (channels_redis
    loses the message it is popping when a consumer's receive is cancelled,
    as happens whenever a websocket closes; group_send drops what a full
    channel cannot take). The holder runs each ``call_id`` once, and answers a
    resend with its answer, or acknowledges it again while it runs.

    A holder that says nothing for REPLY_TIMEOUT has stopped: the session
    is over (``410``, its record deleted). Unless its record names a process
    of this host that still runs: that one is alive but not answering (its
    event loop is blocked), so ``503``, and the session left as it is. A
    channel layer that fails (Redis unreachable) gives a ``503`` too.
    """
    layer = get_channel_layer()
    assert layer is not None  # held_elsewhere() said so
    replies = reply_channel(layer)
    call_id = uuid.uuid4().hex
    try:
        awaited = await replies.expect(call_id)
        message = {**message, "reply_to": replies.name, "call_id": call_id}
        silence = await _hear_from_holder(
            layer,
            channel_messages.session_group(session_id),
            message,
            awaited,
            deadline=deadline,
        )
        # (The answer is the layer's error if its channel failed.)
        answer = awaited.answer.result() if silence is None else None
    except Exception:
        logger.exception(
            "The channel layer failed while forwarding a call for notebook session %s",
            session_id,
        )
        return refusals.UNREACHABLE.reply()
    finally:
        replies.forget(call_id)
    if silence is _Silence.HOLDER_SILENT:
        return await _holder_silent(session_id)
    if answer is None:
        logger.warning(
            "The kernel of notebook session %s did not answer a forwarded call "
            "within %.0f s (the process holding it acknowledged the call).",
            session_id,
            deadline,
        )
        return NOT_ANSWERING.reply()
    return Reply(
        answer["status"],
        [tuple(header) for header in answer["headers"]],
        answer["body"],
    )


class _Silence(enum.Enum):
    """Why a forwarded call ended without an answer."""

    #: The holder took the call but its answer did not come in time.
    PAST_DEADLINE = "past deadline"
    #: The holder said nothing for REPLY_TIMEOUT.
    HOLDER_SILENT = "holder silent"


async def _hear_from_holder(
    layer: Any,
    group: str,
    message: dict[str, Any],
    awaited: AwaitedCall,
    *,
    deadline: float,
) -> _Silence | None:
    """Send ``message`` to ``group`` and again as needed (see forward())
    until its answer comes (``None``) or why it will not."""
    loop = asyncio.get_running_loop()
    started = sent_at = loop.time()
    await layer.group_send(group, message)
    while not awaited.answer.done():
        now = loop.time()
        if now - started >= deadline:
            return _Silence.PAST_DEADLINE
        last_word = started if awaited.heard_at is None else awaited.heard_at
        if now - last_word >= REPLY_TIMEOUT:
            return _Silence.HOLDER_SILENT
        # Before the holder's acknowledgement, the request may be what was
        # lost; after it, a heartbeat or the answer.
        resend_after = RESEND_AFTER if awaited.heard_at is None else RESEND_WHEN_SILENT
        if now - max(sent_at, last_word) >= resend_after:
            await layer.group_send(group, message)
            sent_at = loop.time()
            continue  # (what was heard meanwhile is in awaited)
        wake = min(
            max(sent_at, last_word) + resend_after,
            last_word + REPLY_TIMEOUT,
            started + deadline,
        )
        awaited.news.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(awaited.news.wait(), wake - now)
    return None


async def _holder_silent(session_id: str) -> Reply:
    """The answer to a call whose holder said nothing for REPLY_TIMEOUT."""
    _known_elsewhere.pop(session_id, None)
    holder = await database_sync_to_async(records.holder_elsewhere)(session_id)
    if holder is None:
        # Closed meanwhile, its record deleted: ended.
        return refusals.SESSION_ENDED.reply()
    process, opened_at = holder
    if records.runs_on_this_host(process, since=opened_at):
        logger.warning(
            "The server process %s holding notebook session %s runs but did "
            "not acknowledge a forwarded call in %.0f s (its event loop is "
            "blocked): the call is refused, the session left as it is.",
            process,
            session_id,
            REPLY_TIMEOUT,
        )
        return refusals.UNREACHABLE.reply()
    logger.warning(
        "No word in %.0f s from the server process %s holding notebook session "
        "%s: it has stopped, so the session has ended.",
        REPLY_TIMEOUT,
        process,
        session_id,
    )
    await database_sync_to_async(records.forget_elsewhere)(session_id, process)
    return refusals.SESSION_ENDED.reply()


# Runs a forwarded call in the holding process (calls.forwarded).
Run = Callable[[dict[str, Any]], Awaitable[Reply]]


async def answer(
    message: dict[str, Any], run: Run, recent: RecentCalls | None = None
) -> None:
    """Run a request forwarded by another process (with ``run``) and send
    back the answer.

    Runs in the process holding the session (called by its consumer). The
    call is acknowledged at once, from this event loop, and named in a
    heartbeat every HEARTBEAT_EVERY seconds while it runs, so that the asking
    process knows this process is alive however long the kernel takes.
    A resent call (same ``call_id``: the asking process heard nothing for a
    while) is not run again: it is acknowledged again while it runs, and
    answered again with its answer once there is one.
    """
    call_id = message.get("call_id")
    reply_to = message["reply_to"]
    if recent is not None and call_id:
        if call_id in recent:
            earlier = recent.answer_to(call_id)
            if earlier is None:
                await _say_running(reply_to, [call_id])
            else:
                await _send_reply(reply_to, call_id, earlier)
            return
        if not recent.started(call_id):
            await _send_reply(reply_to, call_id, TOO_MANY_CALLS.reply())
            return
    heartbeats = _heartbeats()
    if call_id:
        await _say_running(reply_to, [call_id])
        heartbeats.add(reply_to, call_id, beat_for=_deadline_of(message))
    try:
        reply = await run(message)
    except Exception:
        logger.exception("A forwarded notebook request failed")
        reply = refusals.FAILED.reply()
    finally:
        if call_id:
            heartbeats.discard(reply_to, call_id)
    if recent is not None and call_id:
        recent.answered(call_id, reply)
    await _send_reply(reply_to, call_id, reply)


class Heartbeats:
    """The forwarded calls this event loop is running, by the reply channel
    of the process that asked, and one task that names them there every
    HEARTBEAT_EVERY seconds: one message a beat per asking process, however
    many of its calls run.

    A call is named for as long as its asking process waits for it at most
    (the call deadline), even if its answer never comes.
    """

    def __init__(self) -> None:
        # reply channel -> {call id: the loop's time to stop naming it}
        self._running: dict[str, dict[str, float]] = {}
        self._beating: asyncio.Task[None] | None = None

    def add(self, reply_to: str, call_id: str, *, beat_for: float) -> None:
        loop = asyncio.get_running_loop()
        self._running.setdefault(reply_to, {})[call_id] = loop.time() + beat_for
        if self._beating is None or self._beating.done():
            self._beating = loop.create_task(self._beat())

    def discard(self, reply_to: str, call_id: str) -> None:
        calls = self._running.get(reply_to)
        if calls is not None:
            calls.pop(call_id, None)
            if not calls:
                del self._running[reply_to]

    def running(self) -> dict[str, list[str]]:
        """The calls named in the next beat, by reply channel."""
        return {reply_to: list(calls) for reply_to, calls in self._running.items()}

    async def _beat(self) -> None:
        loop = asyncio.get_running_loop()
        while self._running:
            await asyncio.sleep(HEARTBEAT_EVERY)
            now = loop.time()
            for reply_to, calls in list(self._running.items()):
                for call_id, until in list(calls.items()):
                    if until <= now:
                        self.discard(reply_to, call_id)
                if calls:
                    await _say_running(reply_to, list(calls))


# One per event loop, as the reply channels.
_heartbeats_of: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Heartbeats] = (
    weakref.WeakKeyDictionary()
)


def _heartbeats() -> Heartbeats:
    loop = asyncio.get_running_loop()
    heartbeats = _heartbeats_of.get(loop)
    if heartbeats is None:
        heartbeats = _heartbeats_of[loop] = Heartbeats()
    return heartbeats


async def _say_running(reply_to: str, call_ids: list[str]) -> None:
    """Tell the asking process that these calls of its are running here."""
    await _send(
        reply_to, {"type": channel_messages.KERNEL_RUNNING, "call_ids": call_ids}
    )


async def _send_reply(reply_to: str, call_id: str | None, reply: Reply) -> None:
    await _send(
        reply_to,
        {
            "type": channel_messages.KERNEL_REPLY,
            "call_id": call_id,
            "status": reply.status,
            "headers": [list(header) for header in reply.headers],
            "body": reply.body,
        },
    )


async def _send(reply_to: str, message: dict[str, Any]) -> None:
    """Send to an asking process's reply channel. A send that fails (the
    layer is down, or the channel full because its process stopped reading)
    is dropped: the asking process sends the call again, or has gone."""
    layer = get_channel_layer()
    if layer is None:
        return
    try:
        await layer.send(reply_to, message)
    except Exception as error:
        logger.info(
            "Could not send %s to the process that forwarded a notebook call: %r",
            message["type"],
            error,
        )


def _deadline_of(message: dict[str, Any]) -> float:
    """How long the asking process waits for a call's answer (a process of
    an earlier release, during a deploy, does not say: the default's)."""
    deadline = message.get("deadline")
    if isinstance(deadline, int | float):
        return float(deadline)
    return limits.call_deadline(limits.Limits())


def scope_of(message: dict[str, Any]) -> dict[str, Any]:
    """The ASGI scope of the request a forwarded call carries (without the
    headers it does not carry: UNFORWARDED_HEADERS)."""
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": message["method"],
        "scheme": message["scheme"],
        "path": message["path"],
        "query_string": message["query_string"],
        "headers": [tuple(header) for header in message["headers"]],
        "server": tuple(message["server"]) if message["server"] else None,
    }
