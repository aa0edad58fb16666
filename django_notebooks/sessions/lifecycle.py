"""One notebook session's life in the process holding it, from the opening
of its kernel websocket to its end: its database record and signals, its
channel-layer groups (revocation, terminate, forwarded calls), its binding
(owners.py) and its idle watch.

The consumer (consumers.py) relays the websocket and carries out what
happens to the session through an :class:`OpenSession`; the session's
rules live here.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any

from channels.db import database_sync_to_async
from django.dispatch import Signal
from django.utils import timezone

from django_notebooks import access, admission, calls, notices, signals
from django_notebooks.access import Access
from django_notebooks.admission import WebsocketAdmission, WebsocketRefusal
from django_notebooks.kernels import router
from django_notebooks.marimo import routes
from django_notebooks.notices import Notice
from django_notebooks.sessions import channel_messages, layers, owners, records, relay

logger = logging.getLogger(__name__)

# The idle watch wakes this much after the timeout would be reached, so
# that a wake-up a little early does not take another round.
IDLE_CHECK_SLACK = 0.05

#: Ends the session's websocket, telling the page why (the consumer's).
EndPage = Callable[[Notice], Awaitable[None]]


class OpenSession:
    """An admitted session, held by this process.

    ``scope``: the websocket's (its ``user`` and ``session``);
    ``channel_name`` and ``layer``: the consumer's, on which revocation,
    terminate and forwarded calls reach the session; ``sender``: the sender
    of its ``notebook_session_started`` and ``ended`` signals.
    """

    def __init__(
        self,
        admitted: WebsocketAdmission,
        scope: dict[str, Any],
        *,
        channel_name: str,
        layer: layers.GuardedLayer | None,
        sender: Any,
    ) -> None:
        self.notebook = admitted.notebook
        self.session_id = admitted.session_id
        self.owner = admitted.owner
        self.limits = admitted.limits
        self.user = scope["user"]
        self._login = scope.get("session")
        self._channel_name = channel_name
        self._layer = layer
        self._sender = sender
        self._groups: tuple[str, ...] = ()
        self._idle_watch: asyncio.Task[None] | None = None
        self._forwarded_calls: set[asyncio.Task[None]] = set()
        self._recent_calls = relay.RecentCalls()
        self._recorded = False

    async def open(self) -> WebsocketRefusal | None:
        """Record the session and join its groups; why it cannot open here,
        if it cannot (its binding then released)."""
        try:
            self._recorded = await database_sync_to_async(self._record_opened)()
            if self._recorded:
                await self._join_groups()
        except layers.LayerUnavailable:
            # A session that revocation could not reach is not opened.
            await self._leave_groups()
            await self._record_closed()
            self.abandon()
            return admission.UNAVAILABLE
        if not self._recorded:
            # The browser reconnected to another server process than the one
            # holding its kernel (which may have stopped): kernels cannot
            # move, so the page must start a new session. No kernel is held
            # here for it: it must not count against the caps.
            self.abandon()
            return admission.LOST
        return None

    def abandon(self) -> None:
        """Give up the session's place before its kernel started (it holds
        none: it counts against no cap)."""
        owners.bindings.abandon(self.session_id, self.owner)

    def watch_idle(self, end_page: EndPage) -> None:
        """With an IDLE_TIMEOUT, end the session once the page has changed
        no widget for that long (a kernel call, local or forwarded, counts
        as use: admission.owned_call; so does a long run of cells)."""
        timeout = self.limits.IDLE_TIMEOUT
        if timeout is not None:
            self._idle_watch = asyncio.create_task(
                self._end_when_idle(timeout, end_page)
            )
            self._idle_watch.add_done_callback(_log_failure)

    def sent_to_page(self, text: str) -> None:
        """Note what a frame marimo sends the page says about the session:
        the downloads it offers (only this session may fetch them: see
        views.py), and whether a run of cells is going on."""
        files = routes.virtual_files_in(text)
        if files:
            owners.bindings.add_files(self.session_id, files)
        running = routes.run_change_in(text)
        if running is not None:
            binding = owners.bindings.get(self.session_id)
            if binding is not None:
                binding.run_changed(running)

    def forwarded_call(self, message: dict[str, Any]) -> None:
        """Run a call another process forwarded, beside the websocket: one
        slow call must not hold up the page's frames or the next call."""
        task = asyncio.create_task(
            relay.answer(message, calls.forwarded, self._recent_calls)
        )
        self._forwarded_calls.add(task)
        task.add_done_callback(self._forwarded_calls.discard)

    async def still_allowed(self) -> bool:
        """The access decision again, on the user as the database has it now
        (their account, groups or permissions changed)."""
        user = await _fresh_user(self.user)
        return await access.adecide(user, self.notebook) is Access.ALLOWED

    def page_closed(self) -> None:
        """The tab closed: a closed tab's kernel from now on (marimo keeps it
        for its TTL, for a reconnect), which a reload may replace at a cap."""
        self.stop_watches()
        owners.bindings.release(self.session_id, self.owner)

    def end_kernel(self, notice: Notice) -> None:
        """End the session's kernel now (``notice``: why, for a page still
        listening); later calls with its id are refused."""
        self.stop_watches()
        owners.bindings.forget(self.session_id)
        router.end_session(self.notebook, self.session_id, notice)

    async def close(self) -> None:
        """The session has ended here: its record and groups go (the signal
        says how long it lasted)."""
        self.stop_watches()
        await self._record_closed()
        await self._leave_groups()

    def stop_watches(self) -> None:
        watch, self._idle_watch = self._idle_watch, None
        # A watch that ends the session itself is not cancelled by that end.
        if watch is not None and watch is not asyncio.current_task():
            watch.cancel()

    # The record, the signals and the groups.

    def _record_opened(self) -> bool:
        recorded = records.opened(
            self.session_id,
            notebook=self.notebook.slug,
            user=self.user,
            owner=self.owner,
            channel_name=self._channel_name,
        )
        if recorded:
            _send(
                self._sender,
                signals.notebook_session_started,
                user=self.user,
                notebook=self.notebook,
                session_id=self.session_id,
            )
        return recorded

    async def _record_closed(self) -> None:
        if self._recorded:
            self._recorded = False
            await database_sync_to_async(self._closed)()

    def _closed(self) -> None:
        duration = records.closed(self.session_id, self._channel_name)
        if duration is not None:
            _send(
                self._sender,
                signals.notebook_session_ended,
                user=self.user,
                notebook=self.notebook,
                session_id=self.session_id,
                duration=duration,
            )

    async def _join_groups(self) -> None:
        if self._layer is None:
            return
        groups = [channel_messages.session_group(self.session_id)]
        if getattr(self.user, "is_authenticated", False):
            groups.append(channel_messages.user_group(self.user.pk))
            if self._login is not None and self._login.session_key:
                groups.append(channel_messages.login_group(self._login.session_key))
        for group in groups:
            self._groups += (group,)
            await self._layer.group_add(group, self._channel_name)

    async def _leave_groups(self) -> None:
        groups, self._groups = self._groups, ()
        if self._layer is None:
            return
        for group in groups:
            try:
                await self._layer.group_discard(group, self._channel_name)
            except layers.LayerUnavailable:
                pass  # the layer forgets groups of channels nobody reads

    async def _end_when_idle(self, timeout: float, end_page: EndPage) -> None:
        binding = owners.bindings.get(self.session_id)
        if binding is None:
            return
        while True:
            idle = binding.idle_for()
            if idle >= timeout:
                # Kernel calls through another web process of the machine
                # reach the kernel without this one (nearby.py): they are
                # in the record's last activity.
                idle = min(idle, await self._idle_as_recorded())
            if idle >= timeout:
                break
            await asyncio.sleep(timeout - idle + IDLE_CHECK_SLACK)
        await end_page(notices.idle(timeout))

    async def _idle_as_recorded(self) -> float:
        """Seconds since the session's record says it was last used."""
        last = await database_sync_to_async(records.last_activity)(self.session_id)
        if last is None:
            return math.inf
        return float((timezone.now() - last).total_seconds())


def _reload_user(user: Any) -> Any:
    """The user as the database has it now (permissions are cached on the
    instance, so the scope's user would answer from before the change)."""
    if not getattr(user, "is_authenticated", False):
        return user
    return user._meta.model._default_manager.filter(pk=user.pk).first()


_fresh_user: Callable[[Any], Awaitable[Any]] = database_sync_to_async(_reload_user)


def _send(sender: Any, signal: Signal, **arguments: Any) -> None:
    """Send ``signal``; a failing receiver (an audit log's, say) is logged
    and stops neither the session nor the other receivers."""
    for receiver, result in signal.send_robust(sender=sender, **arguments):
        if isinstance(result, Exception):
            logger.error(
                "A receiver of a notebook session signal failed: %r",
                receiver,
                exc_info=result,
            )


def _log_failure(task: asyncio.Task[None]) -> None:
    """Log what ended a session's watch, if it failed."""
    if not task.cancelled() and task.exception() is not None:
        logger.error(
            "A notebook session's idle watch failed", exc_info=task.exception()
        )
