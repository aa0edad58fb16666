"""Who may come in: one decision for every way into a notebook.

Every request at or below a notebook's URL is decided here, whichever entry
point it arrived at (the Django view, ``FastPathMiddleware`` or the kernel
websocket consumer) and whichever process holds its session:

- the page and what marimo serves below it (assets, ``@file`` downloads):
  the access decision of access.py, and for a download, the session that
  made the file (:func:`download_here`, :func:`owned_download`);
- a kernel call, a POST for a widget change (:func:`kernel_call`): from this
  site, naming a marimo session in the ``Marimo-Session-Id`` header that
  this browser login opened over the websocket (still open), with a JSON
  object as its body;
- the kernel websocket (:func:`websocket`): from this site, the access
  decision, the notebook's query parameters, and a session id nobody else
  owns, within the caps on live kernels (a closed tab of the person's is
  ended to make room).

What the request says about who sends it is read once, the same way from a
Django request or an ASGI scope, into a :class:`Caller`. The answers are
admissions or refusals; the entry points only carry them out.

The access decision was made when the session's websocket opened, and
revocation ends the session when it would change, so a kernel call from the
session's owner needs no database query: that is what lets the fast path
answer it without Django.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

from channels.db import database_sync_to_async
from django.conf import settings
from django.http import HttpRequest, parse_cookie

from django_notebooks import (
    access,
    conf,
    context,
    notices,
    origins,
    refusals,
    registry,
)
from django_notebooks.access import Access
from django_notebooks.kernels import router, wire
from django_notebooks.limits import Limits
from django_notebooks.marimo import routes
from django_notebooks.notices import Notice
from django_notebooks.query import InvalidQuery
from django_notebooks.registry import Location, Notebook
from django_notebooks.sessions import owners, records

logger = logging.getLogger(__name__)

SESSION_HEADER = routes.SESSION_HEADER
# Seconds a new session waits for the kernels ended to make room for it to
# exit: a kernel that ignores SIGTERM is killed wire.END_GRACE seconds
# later, and its end is reported a moment after.
ROOM_WAIT = wire.END_GRACE + 2.0


# The refusals a decision here may give (refusals.py), by their names.
CROSS_SITE = refusals.CROSS_SITE
NO_SESSION_HEADER = refusals.NO_SESSION_HEADER
NOT_YOURS = refusals.NOT_YOURS
SESSION_ENDED = refusals.SESSION_ENDED
UNREACHABLE = refusals.UNREACHABLE
TOO_LARGE = refusals.TOO_LARGE
NOT_JSON = refusals.NOT_JSON
NOT_AN_OBJECT = refusals.NOT_AN_OBJECT
NO_SUCH_FILE = refusals.NO_SUCH_FILE
Refusal = refusals.Refusal
error_body = refusals.error_body


@dataclass(frozen=True)
class Caller:
    """What a request says about who sends it: where from, which browser
    login (the Django session key, or an anonymous visitor's cookie) and
    which marimo session it names."""

    host: str
    scheme: str
    origin: str | None
    referer: str | None
    fetch_site: str | None
    session_key: str | None
    visitor: str | None
    # The Marimo-Session-Id header of a kernel call, the session_id query
    # parameter of a websocket.
    session_id: str | None
    # The client's address as the server saw it (a proxy's, unless the
    # server was told to trust its forwarded-for header).
    address: str | None = None

    @classmethod
    def from_scope(cls, scope: dict[str, Any]) -> Caller:
        """From an ASGI scope: an HTTP request before Django has seen it (the
        fast path), or a websocket behind Channels' AuthMiddlewareStack."""
        headers = context.scope_headers(scope)
        cookies = parse_cookie(headers.get("cookie", ""))
        session = scope.get("session")
        return cls(
            host=headers.get("host", ""),
            scheme=scope.get("scheme", "http"),
            origin=headers.get("origin"),
            referer=headers.get("referer"),
            fetch_site=headers.get("sec-fetch-site"),
            session_key=(
                session.session_key
                if session is not None
                else cookies.get(settings.SESSION_COOKIE_NAME)
            ),
            visitor=owners.visitor_from_cookie(cookies.get(owners.VISITOR_COOKIE)),
            session_id=context.session_id_in(scope, headers),
            address=(scope.get("client") or (None,))[0],
        )

    @classmethod
    def from_request(cls, request: HttpRequest) -> Caller:
        """From a Django request (the view)."""
        session = getattr(request, "session", None)
        return cls(
            host=request.get_host(),
            scheme=request.scheme or "http",
            origin=request.headers.get("Origin"),
            referer=request.headers.get("Referer"),
            fetch_site=request.headers.get("Sec-Fetch-Site"),
            session_key=session.session_key if session is not None else None,
            visitor=owners.visitor_from_cookie(
                request.COOKIES.get(owners.VISITOR_COOKIE)
            ),
            session_id=request.headers.get(SESSION_HEADER),
            address=request.META.get("REMOTE_ADDR") or None,
        )

    @classmethod
    def of_login(
        cls, session_id: str, session_key: str | None, visitor: str | None
    ) -> Caller:
        """The login a forwarded request carries (sessions/relay.py): only its session
        key or visitor id travel between processes, never cookies."""
        return cls("", "", None, None, None, session_key, visitor, session_id)

    def owner(self, user: Any) -> str | None:
        """The owner key of this browser login (sessions/owners.py), if it has one."""
        return owners.owner_of(user, self.session_key, self.visitor)

    def is_from_this_site(self) -> bool:
        """A request (not a websocket) this site's pages sent."""
        return origins.request_source_is_trusted(
            origin=self.origin,
            referer=self.referer,
            fetch_site=self.fetch_site,
            host=self.host,
            scheme=self.scheme,
        )

    def websocket_is_from_this_site(self) -> bool:
        """Browsers always send Origin on a websocket handshake; other sites
        are refused even if the project forgot AllowedHostsOriginValidator.
        Either scheme is accepted: behind a TLS proxy the server sees ws."""
        if self.origin is None:
            return True
        return any(
            origins.is_trusted_origin(self.origin, host=self.host, scheme=scheme)
            for scheme in ("https", "http")
        )


# Kernel calls.


@dataclass(frozen=True)
class NotHere:
    """The caller opened no such session in this process. Another process
    may hold it (calls.py asks the session records); if none does, the
    caller is a :class:`Stranger` to it."""

    session_id: str


@dataclass(frozen=True)
class Stranger:
    """The caller opened no such session in any process. Whether the answer
    is 401, 403 or 410 takes the access decision, which needs the user
    (Django): then :func:`stranger_refusal`."""

    session_id: str


def kernel_call(
    notebook: Notebook, caller: Caller
) -> owners.Binding | NotHere | Refusal:
    """Whether a kernel call runs here (its session's binding), may be held
    by another process, or is refused. Reads only the request's headers and
    this process's bindings: no database, no I/O."""
    if not caller.is_from_this_site():
        return CROSS_SITE
    if not caller.session_id:
        return NO_SESSION_HEADER
    admitted = owned_call(notebook, caller)
    if admitted is NOT_YOURS:
        return NotHere(caller.session_id)
    return admitted


def owned_call(notebook: Notebook, caller: Caller) -> owners.Binding | Refusal:
    """The binding of the session a kernel call names, if this caller's login
    opened it here for this notebook and its websocket is open."""
    binding = _callers_binding(notebook, caller)
    if binding is None:
        return NOT_YOURS
    if not binding.connections:
        # marimo refuses calls for a session without its websocket, and
        # forgets the session after its TTL (then answers 500): say so.
        return SESSION_ENDED
    binding.used()
    if binding.activity_due():
        records.touch_later(caller.session_id or "")
    return binding


def _callers_binding(notebook: Notebook, caller: Caller) -> owners.Binding | None:
    """The binding of the session the caller names, if the caller's login
    opened it here for this notebook."""
    return owners.bindings.get_for_login(
        caller.session_id or "",
        notebook=notebook.slug,
        session_key=caller.session_key,
        visitor=caller.visitor,
    )


def stranger_refusal(stranger: Stranger) -> Refusal:
    """For a caller the access decision lets use the notebook: a session
    another login opened here is not theirs; one no process knows has ended
    (its process restarted, or it expired), and its owner should reload."""
    if owners.bindings.knows(stranger.session_id):
        return NOT_YOURS
    return SESSION_ENDED


def body_refusal(body: bytes) -> Refusal | None:
    """marimo's kernel API takes JSON objects; anything else is a 400 here
    rather than an error deep inside marimo."""
    if not body:
        return None
    try:
        parsed = json.loads(body)
    except ValueError:
        return NOT_JSON
    if not isinstance(parsed, dict):
        return NOT_AN_OBJECT
    return None


# Downloads.


def download_here(location: Location, owner: str) -> str | None:
    """The session of ``owner``'s, held by this process, whose kernel made
    the ``@file`` download at ``location`` (if none, maybe a session of
    theirs elsewhere did).

    marimo keeps every session's virtual files in one store per process and
    serves any name to anyone: the bridge serves only names the owner's own
    session sent its page (recorded by the consumer).
    """
    name = routes.virtual_file_name(location.subpath)
    if name is None:
        return None
    return owners.bindings.session_with_file(owner, location.notebook.slug, name)


def owned_download(notebook: Notebook, caller: Caller, subpath: str) -> bool:
    """In the process holding ``caller.session_id``: whether that session is
    the caller's and its kernel made the file at ``subpath``."""
    binding = _callers_binding(notebook, caller)
    name = routes.virtual_file_name(subpath)
    return binding is not None and name is not None and name in binding.files


# The kernel websocket.


@dataclass(frozen=True)
class WebsocketRefusal:
    """A kernel websocket refused with this close code. With a ``notice``
    the handshake is accepted first, so that the page can show it."""

    code: int
    notice: Notice | None = None


# Close codes sent before the handshake is accepted; servers answer the
# handshake with HTTP 403 whatever the code, the code only shows in logs.
CLOSE_REFUSED = 4403
CLOSE_NOT_FOUND = 4404
CLOSE_BAD_REQUEST = 4400
CLOSE_TOO_MANY = 4429

REFUSED = WebsocketRefusal(CLOSE_REFUSED)
# A session admitted but not opened here (sessions/lifecycle.py): it is held
# by another process (kernels cannot move: reload), or revocation could not
# reach it (the channel layer is down). The page is told why.
CLOSE_GONE = 4410
CLOSE_UNAVAILABLE = 4503
LOST = WebsocketRefusal(CLOSE_GONE, notices.SESSION_LOST)
UNAVAILABLE = WebsocketRefusal(CLOSE_UNAVAILABLE, notices.SERVICE_UNAVAILABLE)


@dataclass(frozen=True)
class WebsocketAdmission:
    """A kernel websocket let in: the session is bound to its owner."""

    notebook: Notebook
    session_id: str
    owner: str
    user_context: dict[str, Any]
    meta: dict[str, Any]
    #: The notebook's limits (registry.limits_of), for the session's watches.
    limits: Limits


async def websocket(
    notebook: Notebook, scope: dict[str, Any]
) -> WebsocketAdmission | WebsocketRefusal:
    """Decide on a kernel websocket for ``notebook`` and, if it may open,
    bind its session id to the login opening it (until it closes).

    ``scope`` is the websocket's, with Channels' ``user`` and ``session``.
    """
    caller = Caller.from_scope(scope)
    if not caller.websocket_is_from_this_site():
        return REFUSED
    user = scope["user"]
    if await access.adecide(user, notebook) is not Access.ALLOWED:
        return REFUSED
    if not caller.session_id:
        return WebsocketRefusal(CLOSE_BAD_REQUEST)
    owner = caller.owner(user)
    if owner is None:
        return REFUSED
    # REQUEST_META runs once per session, here, where the project's hook sees
    # the websocket's scope with its user and session; the session's kernel
    # calls reuse the result. So does the notebook's query check: this query
    # string, not the page's, is what marimo runs with.
    try:
        user_context, meta = await database_sync_to_async(context.session_context)(
            user, scope, notebook
        )
    except InvalidQuery as invalid:
        return WebsocketRefusal(CLOSE_BAD_REQUEST, invalid.notice)
    claim = owners.bindings.claim(
        caller.session_id,
        owner=owner,
        notebook=notebook.slug,
        user_context=user_context,
        meta=meta,
        user_id=getattr(user, "pk", None),
        address=caller.address,
        caps=owners.caps_in_force(),
        # A kernel process reports its end; marimo's threads do not.
        kernel_end_reported=router.isolation() == router.PROCESS,
    )
    if claim.outcome is owners.Claim.NOT_OWNER:
        return REFUSED
    if claim.outcome is not owners.Claim.CLAIMED:
        return over_a_cap(claim.outcome)
    await _make_room(claim.to_end)
    return WebsocketAdmission(
        notebook,
        caller.session_id,
        owner,
        user_context,
        meta,
        registry.limits_of(notebook),
    )


async def _make_room(to_end: tuple[owners.ToEnd, ...]) -> None:
    """End the kernels of the closed tabs a new session replaces, and wait
    (at most ROOM_WAIT seconds) until their processes have exited: the new
    session's kernel starts only then, so that a client opening and closing
    sessions in a loop never holds more kernels than its cap."""
    leaving = []
    for ending in to_end:
        notebook = registry.get_notebook(ending.notebook)
        process = router.process_of(ending.session_id)
        try:
            if notebook is not None:
                router.end_session(notebook, ending.session_id, notices.MADE_ROOM)
            elif process is not None:  # a notebook no longer served
                process.end(notices.MADE_ROOM)
        except Exception:
            # The new session is admitted (its place is counted) whatever
            # became of the old kernel: it ends at session_ttl in any case.
            logger.exception(
                "Could not end the kernel of closed notebook session %s",
                ending.session_id,
            )
            continue
        if process is not None:
            leaving.append(process)
    if leaving:
        deadline = time.monotonic() + ROOM_WAIT
        for process in leaving:
            left = deadline - time.monotonic()
            await asyncio.to_thread(process.exited.wait, max(left, 0))


def over_a_cap(claim: owners.Claim) -> WebsocketRefusal:
    """A new session refused by one of the caps on sessions (this process's,
    or the machine's, which its kernel host keeps), with its words."""
    config = conf.get_settings()
    if claim is owners.Claim.OVER_LIMIT:
        notice = notices.too_many_for_user(config.MAX_SESSIONS_PER_USER)
    elif claim is owners.Claim.ADDRESS_FULL:
        notice = notices.too_many_for_address(config.LIMITS.MAX_SESSIONS_PER_ADDRESS)
    elif claim is owners.Claim.VISITORS_FULL:
        notice = notices.VISITORS_BUSY
    else:
        notice = notices.SERVER_BUSY
    return WebsocketRefusal(CLOSE_TOO_MANY, notice)
