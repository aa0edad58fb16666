"""The kernel websocket: a Channels consumer that relays frames between the
browser and marimo's ``<page>/ws`` endpoint for one notebook session."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from typing import Any

from channels.consumer import AsyncConsumer
from channels.exceptions import StopConsumer
from django.urls import Resolver404, resolve

from django_notebooks import admission, conf, context, notices, registry
from django_notebooks.admission import WebsocketRefusal
from django_notebooks.kernels import router
from django_notebooks.kernels.processes import KernelEnded, KernelUnavailable, OverCap
from django_notebooks.marimo import routes
from django_notebooks.notices import Notice
from django_notebooks.sessions import flow, layers, lifecycle, stopping
from django_notebooks.snapshots import outputs_first

logger = logging.getLogger(__name__)

# Close codes: the admission's (admission.py), and for an accepted websocket
# (applications may use 4000-4999) the consumer's own.
CLOSE_REFUSED = admission.CLOSE_REFUSED
CLOSE_NOT_FOUND = admission.CLOSE_NOT_FOUND
CLOSE_BAD_REQUEST = admission.CLOSE_BAD_REQUEST
CLOSE_TOO_MANY = admission.CLOSE_TOO_MANY
CLOSE_REVOKED = 4401
CLOSE_TOO_BIG = 4413
CLOSE_GONE = admission.CLOSE_GONE
CLOSE_UNAVAILABLE = admission.CLOSE_UNAVAILABLE
# The client sent more than a page ever does (flow.Inbox).
CLOSE_FLOODED = 4420
# The page read nothing for WEBSOCKET_READ_TIMEOUT while output waited for
# it (flow.Outbox).
CLOSE_NOT_READING = 4408


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
    to whoever connects. What happens to the session (its record, groups,
    binding and watches) is its :class:`~lifecycle.OpenSession`'s."""

    marimo_task: asyncio.Task[None] | None = None
    session: lifecycle.OpenSession | None = None
    # The notebook's snapshot, shown while the session's first run goes on
    # (snapshots/outputs_first.py): until marimo's first frame.
    snapshot_frames: tuple[str, ...] | None = None
    accepted = False
    closed = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
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
            # The server is stopping (daphne cancels every application). A
            # kernel thread's marimo session ends now, while the event loop
            # still runs: afterwards its threads and our relay task would be
            # torn down half-way at interpreter exit. A kernel process stays
            # with the kernel host, for the page to reconnect to.
            await self._stop_marimo(close_session=router.isolation() == router.THREAD)
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
        if location.notebook.static:  # its page is a snapshot: no kernel
            return await self._refuse(WebsocketRefusal(CLOSE_NOT_FOUND))
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
        session = lifecycle.OpenSession(
            admitted,
            self.scope,
            channel_name=getattr(self, "channel_name", "") or "",
            layer=self.channel_layer,
            # (The documented sender of the session signals.)
            sender=KernelConsumer,
        )
        try:
            refusal = await session.open()
            if refusal is None and location.notebook.snapshot is not None:
                self.snapshot_frames = await outputs_first.frames_for(location.notebook)
            if refusal is None:
                self.session = session
                self._start_marimo(admitted, location, mount, path, root_path)
                session.watch_idle(self._end_session)
        except BaseException:
            # No disconnect follows a connect that failed: without this, the
            # session would count against the caps until the process ends.
            session.abandon()
            raise
        if refusal is not None:
            return await self._refuse(refusal)

    def _start_marimo(
        self,
        admitted: admission.WebsocketAdmission,
        location: registry.Location,
        mount: str,
        path: str,
        root_path: str,
    ) -> None:
        """Run marimo's websocket handler for the session."""
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
                *self._named(),
            )
            await self._hang_up(CLOSE_FLOODED)

    async def websocket_disconnect(self, message: dict[str, Any]) -> None:
        self.closed = True
        if self.session is not None:
            self.session.page_closed()
        # marimo keeps the session for its TTL, so the browser can reconnect.
        await self._stop_marimo(code=message.get("code", 1000), close_session=False)
        if self.session is not None:
            await self.session.close()
        raise StopConsumer()

    # Messages to the session's channel-layer groups.

    async def notebooks_kernel_call(self, message: dict[str, Any]) -> None:
        """A kernel call for this session that reached another process."""
        if self.session is not None:
            self.session.forwarded_call(message)

    async def notebooks_terminate(self, message: dict[str, Any]) -> None:
        """An administrator ended this session."""
        await self._end_session(notices.admin_ended(message.get("message")))

    async def notebooks_revoke(self, message: dict[str, Any]) -> None:
        """The login that opened this session logged out."""
        await self._end_session(notices.ACCESS_ENDED)

    async def notebooks_recheck(self, message: dict[str, Any]) -> None:
        """The user's account, groups or permissions changed: ask again."""
        if self.session is not None and not await self.session.still_allowed():
            await self._end_session(notices.ACCESS_ENDED)

    async def _end_session(self, notice: Notice, code: int = CLOSE_REVOKED) -> None:
        """Close the websocket and the marimo session behind it, saying why;
        later calls with this session id are refused."""
        if self.session is None:
            return
        self.session.end_kernel(notice)
        await self._close(code, notice)
        # The record goes now, not when the browser acknowledges the close:
        # the admin waits for it to tell a terminated session from one whose
        # process no longer answers.
        await self.session.close()

    def _named(self) -> tuple[str, str]:
        """The session's id and notebook, for the log."""
        if self.session is None:
            return "-", "-"
        return self.session.session_id, self.session.notebook.slug

    # Relaying.

    async def _stop_marimo(self, *, code: int = 1001, close_session: bool) -> None:
        """Tell marimo's handler the socket closed and wait for it to end."""
        if self.session is not None:
            self.session.stop_watches()
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
        if close_session and self.session is not None:
            self.session.end_kernel(notices.SESSION_LOST)

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
        except OverCap as over:
            # The machine's sessions are at a cap (its kernel host counts
            # every web process's).
            refusal = admission.over_a_cap(over.claim)
            assert refusal.notice is not None
            await self._end_session(refusal.notice, refusal.code)
        except Exception:
            logger.exception("marimo's websocket handler failed")
        finally:
            await self._close(1011)

    async def _send_from_marimo(self, message: dict[str, Any]) -> None:
        if self.closed:
            return
        if message["type"] == "websocket.send":
            if self.session is not None:
                # (Before the page can act on it.)
                self.session.sent_to_page(message.get("text") or "")
            try:
                await self.outbox.send(message)
                if self.snapshot_frames is not None:
                    frames, self.snapshot_frames = self.snapshot_frames, None
                    first = message.get("text") or ""
                    for text in outputs_first.shown_after(frames, first):
                        await self.outbox.send({"type": "websocket.send", "text": text})
            except flow.Gone:
                # The page closed with output on its way: its disconnect
                # follows, and tells marimo's handler.
                self.closed = True
            except flow.Stalled:
                if self.closed:
                    return  # closed meanwhile, for another reason
                logger.warning(
                    "Closed the websocket of notebook session %s (%s): the page "
                    "read nothing for %s seconds",
                    *self._named(),
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
        await self._send_to_page(message)

    async def _send_to_page(self, message: dict[str, Any]) -> None:
        """Send a message of the websocket's (not a frame: those go through
        the outbox); dropped if the page has gone."""
        try:
            await self.send(message)
        except Exception as error:
            if not flow.client_gone(error):
                raise
            self.closed = True
            self.outbox.close()

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
                await self._send_to_page({"type": "websocket.accept"})
                self.accepted = True
            await self.outbox.send_now(
                {"type": "websocket.send", "text": notice.frame()}
            )
            message["reason"] = notice.reason
        await self._send_to_page(_sendable_close(message))
