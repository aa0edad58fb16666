"""The kernel websocket: a Channels consumer that relays frames between the
browser and marimo's ``<page>/ws`` endpoint for one notebook session."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from channels.consumer import AsyncConsumer
from channels.db import database_sync_to_async
from channels.exceptions import StopConsumer
from django.dispatch import Signal
from django.urls import Resolver404, resolve

from django_notebooks import (
    access,
    admission,
    conf,
    context,
    notices,
    registry,
    signals,
)
from django_notebooks.access import Access
from django_notebooks.admission import WebsocketRefusal
from django_notebooks.kernels import router
from django_notebooks.kernels.processes import KernelEnded, KernelUnavailable
from django_notebooks.limits import Limits
from django_notebooks.marimo import routes
from django_notebooks.notices import Notice
from django_notebooks.sessions import (
    channel_messages,
    flow,
    layers,
    owners,
    records,
    relay,
    stopping,
)

logger = logging.getLogger(__name__)

# Close codes: the admission's (admission.py), and for an accepted websocket
# (applications may use 4000-4999) the consumer's own.
CLOSE_REFUSED = admission.CLOSE_REFUSED
CLOSE_NOT_FOUND = admission.CLOSE_NOT_FOUND
CLOSE_BAD_REQUEST = admission.CLOSE_BAD_REQUEST
CLOSE_TOO_MANY = admission.CLOSE_TOO_MANY
CLOSE_REVOKED = 4401
CLOSE_TOO_BIG = 4413
CLOSE_GONE = 4410
CLOSE_UNAVAILABLE = 4503
# The client sent more than a page ever does (flow.Inbox).
CLOSE_FLOODED = 4420
# The page read nothing for WEBSOCKET_READ_TIMEOUT while output waited for
# it (flow.Outbox).
CLOSE_NOT_READING = 4408

LOST = WebsocketRefusal(CLOSE_GONE, notices.SESSION_LOST)
UNAVAILABLE = WebsocketRefusal(CLOSE_UNAVAILABLE, notices.SERVICE_UNAVAILABLE)
# The idle watch wakes this much after the timeout would be reached, so
# that a wake-up a little early does not take another round.
IDLE_CHECK_SLACK = 0.05


# How long a disconnect waits for marimo's handler to finish.
DISCONNECT_TIMEOUT = 5.0
VIEW_NAMES = frozenset({"notebook_location", "notebook"})


def locate_kernel(path: str) -> tuple[registry.Location, str] | None:
    """The notebook whose ``ws`` endpoint ``path`` is, and its page URL.

    The path is resolved through the project's own URLconf, so the websocket
    follows wherever urls.py included ``django_notebooks.urls``.
    """
    try:
        match = resolve(path)
    except Resolver404:
        return None
    if "django_notebooks" not in match.app_names or match.url_name not in VIEW_NAMES:
        return None
    location = match.kwargs.get("location") or f"{match.kwargs.get('slug')}/"
    found = registry.locate(location)
    if found is None or routes.route_of(found.subpath) is not routes.Route.WEBSOCKET:
        return None
    return found, path[: -len(routes.WEBSOCKET_PATH)]


def _reload_user(user: Any) -> Any:
    """The user as the database has it now (permissions are cached on the
    instance, so the scope's user would answer from before the change)."""
    if not getattr(user, "is_authenticated", False):
        return user
    return user._meta.model._default_manager.filter(pk=user.pk).first()


_fresh_user: Callable[[Any], Awaitable[Any]] = database_sync_to_async(_reload_user)


def _session_opened(
    session_id: str,
    *,
    notebook: registry.Notebook,
    user: Any,
    owner: str,
    channel_name: str,
) -> bool:
    recorded = records.opened(
        session_id,
        notebook=notebook.slug,
        user=user,
        owner=owner,
        channel_name=channel_name,
    )
    if recorded:
        _send(
            signals.notebook_session_started,
            user=user,
            notebook=notebook,
            session_id=session_id,
        )
    return recorded


def _session_closed(
    session_id: str, *, notebook: registry.Notebook, user: Any, channel_name: str
) -> None:
    duration = records.closed(session_id, channel_name)
    if duration is not None:
        _send(
            signals.notebook_session_ended,
            user=user,
            notebook=notebook,
            session_id=session_id,
            duration=duration,
        )


def _log_failure(task: asyncio.Task[None]) -> None:
    """Log what ended a background task of the consumer, if it failed."""
    if not task.cancelled() and task.exception() is not None:
        logger.error(
            "A notebook session's idle watch failed", exc_info=task.exception()
        )


def _send(signal: Signal, **arguments: Any) -> None:
    """Send ``signal``; a failing receiver (an audit log's, say) is logged
    and stops neither the session nor the other receivers."""
    for receiver, result in signal.send_robust(sender=KernelConsumer, **arguments):
        if isinstance(result, Exception):
            logger.error(
                "A receiver of a notebook session signal failed: %r",
                receiver,
                exc_info=result,
            )


def sendable_close_code(code: int) -> int:
    """A close code every ASGI server sends as given.

    daphne (autobahn) sends only 1000 and 3000-4999, and raises on the rest:
    the close is lost and the socket stays open, silent. marimo closes with
    1003, 1008 and 1011 (and as an IntEnum, which autobahn refuses too), so
    those go out as 4003, 4008 and 4011, the same under every server.
    """
    code = int(code)
    if code == 1000 or 3000 <= code <= 4999:
        return code
    return 4000 + code % 1000


def _sendable_close(message: dict[str, Any]) -> dict[str, Any]:
    sendable = {**message, "code": sendable_close_code(message.get("code", 1000))}
    reason = message.get("reason")
    if isinstance(reason, enum.Enum):  # marimo's reasons are str enums
        sendable["reason"] = str(reason.value)
    return sendable


# channels has no type hints: its base class is Any to mypy.
class KernelConsumer(AsyncConsumer):  # type: ignore[misc]
    """Relays a notebook's kernel websocket to marimo, after the same access
    decision as the notebook's page and a check that the session id belongs
    to whoever connects."""

    marimo_task: asyncio.Task[None] | None = None
    idle_watch: asyncio.Task[None] | None = None
    limits: Limits = Limits()
    session_id: str | None = None
    owner: str | None = None
    notebook: registry.Notebook | None = None
    accepted = False
    closed = False
    revocation_groups: tuple[str, ...] = ()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.forwarded_calls: set[asyncio.Task[None]] = set()
        self.recent_calls = relay.RecentCalls()
        settings = conf.get_settings()
        # What marimo's handler receives: never a frame of the browser's.
        self.inbox = flow.Inbox()
        self.outbox = flow.Outbox(
            self.send,
            window=settings.MAX_UNREAD_WEBSOCKET_BYTES,
            timeout=settings.WEBSOCKET_READ_TIMEOUT,
        )

    @property
    def channel_layer(self) -> layers.GuardedLayer | None:
        return self._guarded_layer

    @channel_layer.setter
    def channel_layer(self, layer: Any) -> None:
        # Channels sets the layer as the consumer starts: a layer that fails
        # (Redis down) would end the websocket, so it is guarded.
        self._guarded_layer = None if layer is None else layers.GuardedLayer(layer)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        # Revocation and terminate reach this consumer over the project's
        # channel layer, or the bridge's in-process one without it.
        self.channel_layer_alias = layers.alias()
        try:
            with stopping.watch(self._say_restarting):
                await super().__call__(scope, receive, send)
        except asyncio.CancelledError:
            # The server is stopping (daphne cancels every application). End
            # the marimo session now, while the event loop still runs:
            # afterwards its kernel threads and our relay task would be torn
            # down half-way at interpreter exit.
            await self._stop_marimo(close_session=True)
            raise

    async def _say_restarting(self) -> None:
        """The server is stopping (sessions/stopping.py): the page says so
        before the server closes its socket."""
        if self.accepted and not self.closed:
            frame = notices.SITE_RESTARTING.frame()
            await self.outbox.send_now({"type": "websocket.send", "text": frame})

    async def dispatch(self, message: dict[str, Any]) -> None:
        # Channels closes stale database connections before every message,
        # in a thread: a hop per frame. Under a flood of small frames Daphne
        # reads thousands of frames while one hop completes (20 frames took
        # 4 to 5 s), queueing them all in memory before the flood rule can
        # close the socket. A browser's frame touches no database: no hop.
        if message["type"] == "websocket.receive":
            await self.websocket_receive(message)
        else:
            await super().dispatch(message)

    async def websocket_connect(self, message: dict[str, Any]) -> None:
        path = self.scope["path"]
        root_path = self.scope.get("root_path", "")
        if root_path and path.startswith(root_path):
            path = path[len(root_path) :]
        found = locate_kernel(path)
        if found is None:
            return await self._refuse(WebsocketRefusal(CLOSE_NOT_FOUND))
        location, mount = found
        if "user" not in self.scope:
            logger.error(
                "KernelConsumer found no user in the websocket scope: wrap "
                "django_notebooks.routing.websocket_urlpatterns in "
                "channels.auth.AuthMiddlewareStack in your asgi.py."
            )
            return await self._refuse(admission.REFUSED)
        admitted = await admission.websocket(location.notebook, self.scope)
        if isinstance(admitted, WebsocketRefusal):
            return await self._refuse(admitted)
        self.session_id, self.owner = admitted.session_id, admitted.owner
        self.notebook = admitted.notebook
        try:
            refusal = await self._open_session()
            if refusal is None:
                self._start_marimo(admitted, location, mount, path, root_path)
        except BaseException:
            # No disconnect follows a connect that failed: without this, the
            # session would count against the caps until the process ends.
            owners.bindings.abandon(self.session_id, self.owner)
            raise
        if refusal is not None:
            self.session_id = None
            return await self._refuse(refusal)

    def _start_marimo(
        self,
        admitted: admission.WebsocketAdmission,
        location: registry.Location,
        mount: str,
        path: str,
        root_path: str,
    ) -> None:
        """Run marimo's websocket handler for the session, and its idle watch."""
        scope = context.marimo_scope(
            {**self.scope, "path": path},
            path=self.scope["path"],
            root_path=(root_path + mount).rstrip("/"),
            user=admitted.user_context,
            meta=admitted.meta,
            notebook_file=str(location.notebook.path),
            session_id=admitted.session_id,
        )
        app = router.app_for(location.notebook)
        self.marimo_task = asyncio.create_task(self._run_marimo(app, scope))
        self.limits = registry.limits_of(admitted.notebook)
        idle_timeout = self.limits.IDLE_TIMEOUT
        if idle_timeout is not None:
            self.idle_watch = asyncio.create_task(self._close_when_idle(idle_timeout))
            self.idle_watch.add_done_callback(_log_failure)

    async def _open_session(self) -> WebsocketRefusal | None:
        """Record the admitted session and join its groups; why it cannot
        open, if it cannot (its binding then released)."""
        assert self.session_id and self.owner
        user = self.scope["user"]
        try:
            recorded = await self._record_opened(user)
            if recorded:
                await self._join_revocation_groups(user, self.scope.get("session"))
        except layers.LayerUnavailable:
            # A session that revocation could not reach is not opened.
            await self._leave_groups()
            await self._record_closed()
            owners.bindings.abandon(self.session_id, self.owner)
            return UNAVAILABLE
        if not recorded:
            # The browser reconnected to another server process than the one
            # holding its kernel (which may have stopped): kernels cannot
            # move, so the page must start a new session. No kernel is held
            # here for it: it must not count against the caps.
            owners.bindings.abandon(self.session_id, self.owner)
            return LOST
        return None

    async def websocket_receive(self, message: dict[str, Any]) -> None:
        """A frame from the browser: the page's acknowledgement of what it
        has read, or nothing marimo would read (it is dropped)."""
        if self.closed:
            return
        mark = flow.acknowledged_mark(message)
        if mark is not None and self.outbox.acknowledge(mark):
            return
        size = flow.frame_size(message)
        if size > conf.get_settings().MAX_WEBSOCKET_MESSAGE_BYTES:
            await self._hang_up(CLOSE_TOO_BIG)
        elif not self.inbox.admits_stray_frame():
            logger.warning(
                "Closed the websocket of notebook session %s (%s): the client "
                "sent more frames than a notebook's page does",
                self.session_id,
                self.notebook.slug if self.notebook else "-",
            )
            await self._hang_up(CLOSE_FLOODED)

    async def websocket_disconnect(self, message: dict[str, Any]) -> None:
        self.closed = True
        if self.session_id and self.owner:
            # A closed tab from now on, before marimo's handler has wound
            # down: a reload that comes meanwhile may replace it at a cap.
            owners.bindings.release(self.session_id, self.owner)
        # marimo keeps the session for its TTL, so the browser can reconnect.
        await self._stop_marimo(code=message.get("code", 1000), close_session=False)
        if self.session_id and self.owner:
            await self._record_closed()
        await self._leave_groups()
        raise StopConsumer()

    async def _leave_groups(self) -> None:
        groups, self.revocation_groups = self.revocation_groups, ()
        layer = self.channel_layer
        if layer is None:
            return
        for group in groups:
            try:
                await layer.group_discard(group, self.channel_name)
            except layers.LayerUnavailable:
                pass  # the layer forgets groups of channels nobody reads

    # The session's database record, its signals and its channel-layer group.

    async def _record_opened(self, user: Any) -> bool:
        """Record the session; ``False`` if another process holds it."""
        assert self.session_id and self.owner and self.notebook
        recorded = await database_sync_to_async(_session_opened)(
            self.session_id,
            notebook=self.notebook,
            user=user,
            owner=self.owner,
            channel_name=getattr(self, "channel_name", "") or "",
        )
        if recorded and self.channel_layer is not None:
            self.revocation_groups += (channel_messages.session_group(self.session_id),)
            await self.channel_layer.group_add(
                channel_messages.session_group(self.session_id), self.channel_name
            )
        return bool(recorded)

    async def _record_closed(self) -> None:
        assert self.session_id and self.notebook
        await database_sync_to_async(_session_closed)(
            self.session_id,
            notebook=self.notebook,
            user=self.scope["user"],
            channel_name=getattr(self, "channel_name", "") or "",
        )

    async def notebooks_kernel_call(self, message: dict[str, Any]) -> None:
        """A kernel call for this session that reached another process."""
        # Run it beside the consumer: one slow call must not hold up the
        # websocket's frames or the next call.
        task = asyncio.create_task(relay.answer(message, self.recent_calls))
        self.forwarded_calls.add(task)
        task.add_done_callback(self.forwarded_calls.discard)

    async def notebooks_terminate(self, message: dict[str, Any]) -> None:
        """An administrator ended this session."""
        await self._end_session(notices.admin_ended(message.get("message")))

    # Revocation: messages sent to this consumer's channel-layer groups.

    async def notebooks_revoke(self, message: dict[str, Any]) -> None:
        """The login that opened this session logged out."""
        await self._end_session(notices.ACCESS_ENDED)

    async def notebooks_recheck(self, message: dict[str, Any]) -> None:
        """The user's account, groups or permissions changed: ask again."""
        if self.notebook is None:
            return
        user = await _fresh_user(self.scope["user"])
        if await access.adecide(user, self.notebook) is not Access.ALLOWED:
            await self._end_session(notices.ACCESS_ENDED)

    async def _join_revocation_groups(self, user: Any, session: Any) -> None:
        if self.channel_layer is None or not getattr(user, "is_authenticated", False):
            return
        groups = [channel_messages.user_group(user.pk)]
        if session is not None and session.session_key:
            groups.append(channel_messages.login_group(session.session_key))
        self.revocation_groups += tuple(groups)
        for group in groups:
            await self.channel_layer.group_add(group, self.channel_name)

    async def _end_session(self, notice: Notice, code: int = CLOSE_REVOKED) -> None:
        """Close the websocket and the marimo session behind it, saying why;
        later calls with this session id are refused."""
        if self.session_id is None or self.notebook is None:
            return
        self._stop_watches()
        owners.bindings.forget(self.session_id)
        router.end_session(self.notebook, self.session_id, notice)
        await self._close(code, notice)
        # The record goes now, not when the browser acknowledges the close:
        # the admin waits for it to tell a terminated session from one whose
        # process no longer answers.
        await self._record_closed()

    async def _close_when_idle(self, timeout: float) -> None:
        """End the session once the page has changed no widget for
        ``timeout`` seconds (a kernel call, in this process or forwarded
        to it, counts as use: admission.owned_call)."""
        assert self.session_id
        binding = owners.bindings.get(self.session_id)
        if binding is None:
            return
        while (idle := binding.idle_for()) < timeout:
            await asyncio.sleep(timeout - idle + IDLE_CHECK_SLACK)
        await self._end_session(notices.idle(timeout))

    def _stop_watches(self) -> None:
        self._cancel(self.idle_watch)
        self.idle_watch = None

    @staticmethod
    def _cancel(watch: asyncio.Task[None] | None) -> None:
        # A watch that ends the session itself is not cancelled by that end.
        if watch is not None and watch is not asyncio.current_task():
            watch.cancel()

    # Relaying.

    async def _stop_marimo(self, *, code: int = 1001, close_session: bool) -> None:
        """Tell marimo's handler the socket closed and wait for it to end."""
        self._stop_watches()
        task = self.marimo_task
        if task is None:
            return
        self.marimo_task = None
        self.closed = True
        self.outbox.close()
        self.inbox.hang_up(code)
        try:
            await asyncio.wait_for(asyncio.shield(task), DISCONNECT_TIMEOUT)
        except (TimeoutError, Exception):
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        if close_session and self.session_id and self.notebook is not None:
            router.end_session(self.notebook, self.session_id, notices.SESSION_LOST)

    async def _run_marimo(self, app: Any, scope: dict[str, Any]) -> None:
        try:
            await app(scope, self.inbox.receive, self._send_from_marimo)
        except KernelEnded as ended:
            # The session's kernel process crashed, or was ended for a limit.
            await self._end_session(ended.notice, CLOSE_GONE)
        except KernelUnavailable:
            # No kernel process could start (logged): never run the
            # visitor's code in this process instead.
            await self._end_session(notices.CANNOT_START, CLOSE_UNAVAILABLE)
        except Exception:
            logger.exception("marimo's websocket handler failed")
        finally:
            await self._close(1011)

    async def _send_from_marimo(self, message: dict[str, Any]) -> None:
        if self.closed:
            return
        if message["type"] == "websocket.send":
            text = message.get("text") or ""
            files = routes.virtual_files_in(text)
            if files and self.session_id:
                # Recorded before the page can ask for them: see views.py.
                owners.bindings.add_files(self.session_id, files)
            running = routes.run_change_in(text)
            if running is not None and self.session_id:
                # A long run is use too: the idle timeout waits for its end.
                binding = owners.bindings.get(self.session_id)
                if binding is not None:
                    binding.run_changed(running)
            try:
                await self.outbox.send(message)
            except flow.Stalled:
                if self.closed:
                    return  # closed meanwhile, for another reason
                logger.warning(
                    "Closed the websocket of notebook session %s (%s): the page "
                    "read nothing for %s seconds",
                    self.session_id,
                    self.notebook.slug if self.notebook else "-",
                    self.outbox.timeout,
                )
                await self._hang_up(CLOSE_NOT_READING)
            return
        if message["type"] == "websocket.accept":
            self.accepted = True
        elif message["type"] == "websocket.close":
            self.closed = True
            self.outbox.close()
            message = _sendable_close(message)
        await self.send(message)

    async def _hang_up(self, code: int) -> None:
        """Close the websocket with ``code`` and tell marimo's handler it
        has gone (marimo keeps the session for its TTL, as after any
        disconnect)."""
        await self._close(code)
        self.inbox.hang_up(code)

    async def _refuse(self, refusal: WebsocketRefusal) -> None:
        """Refuse the websocket (see :meth:`_close`)."""
        await self._close(refusal.code, refusal.notice)

    async def _close(self, code: int, notice: Notice | None = None) -> None:
        """Close the websocket; with a notice, the page shows it (and marimo's
        frontend gets the close reason that stops its reconnecting): a
        handshake not accepted yet is accepted first, so that it can.
        Without, a handshake not accepted is refused (HTTP 403)."""
        if self.closed:
            return
        self.closed = True
        self.outbox.close()
        message: dict[str, Any] = {"type": "websocket.close", "code": code}
        if notice is not None:
            if not self.accepted:
                await self.send({"type": "websocket.accept"})
                self.accepted = True
            await self.outbox.send_now(
                {"type": "websocket.send", "text": notice.frame()}
            )
            message["reason"] = notice.reason
        await self.send(_sendable_close(message))
