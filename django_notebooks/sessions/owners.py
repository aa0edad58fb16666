"""Who owns each marimo session.

marimo accepts any session id from anyone: whoever knows an id can drive that
kernel. The bridge records, when a kernel websocket opens, which browser login
opened it (the Django user and session, or an anonymous visitor's cookie on a
public notebook) and for which notebook. Kernel POSTs and reconnects for that
id are then accepted only from the same owner, and ids never seen opened are
refused.

The same record counts each person's sessions against the caps on live
kernels (:class:`Caps`): a session holds its place while its kernel lives,
its tab open or closed, and at a cap the person's oldest closed tab makes
room for a new one (:meth:`SessionBindings.claim`).

The record lives in this process's memory: marimo's sessions do too.
"""

from __future__ import annotations

import enum
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from django.core import signing

from django_notebooks import conf

VISITOR_COOKIE = "django_notebooks_visitor"
VISITOR_SALT = "django_notebooks.visitor"
# With kernels as threads, records of sessions whose websocket closed are
# kept this long beyond marimo's session TTL, so that a reconnect within the
# TTL is still accepted. (A kernel process reports its end: kernel_ended().)
GRACE_SECONDS = 60
# How often, at most, a session's "last activity" is written to the database.
ACTIVITY_EVERY = 30.0


def _user_owner(user_id: Any, session_key: str) -> str:
    return f"user:{user_id}:{session_key}"


def _visitor_owner(visitor: str) -> str:
    return f"visitor:{visitor}"


def owner_of(user: Any, session_key: str | None, visitor: str | None) -> str | None:
    """The owner key for a request or websocket; ``None`` if it has none."""
    if user is not None and getattr(user, "is_authenticated", False):
        return _user_owner(user.pk, session_key) if session_key else None
    return _visitor_owner(visitor) if visitor else None


def owner_of_login(
    user_id: Any, session_key: str | None, visitor: str | None
) -> str | None:
    """The owner key of a login known by its user's id (``None``: an
    anonymous visitor's) and the session key or visitor cookie it presents."""
    if user_id is not None:
        return _user_owner(user_id, session_key) if session_key else None
    return _visitor_owner(visitor) if visitor else None


def new_visitor_cookie() -> str:
    """A signed random id for an anonymous visitor of a public notebook."""
    return signing.dumps(secrets.token_urlsafe(16), salt=VISITOR_SALT)


def visitor_from_cookie(value: str | None) -> str | None:
    """The visitor id in a cookie value, if its signature is valid."""
    if not value:
        return None
    try:
        visitor = signing.loads(value, salt=VISITOR_SALT)
    except signing.BadSignature:
        return None
    return visitor if isinstance(visitor, str) else None


class Claim(enum.Enum):
    CLAIMED = "claimed"
    NOT_OWNER = "not_owner"
    # The person already has MAX_SESSIONS_PER_USER kernels, all open pages.
    OVER_LIMIT = "over_limit"
    # The process holds LIMITS["MAX_SESSIONS"] kernels, none of them a closed
    # tab of the person's.
    SERVER_FULL = "server_full"
    # The client address has LIMITS["MAX_SESSIONS_PER_ADDRESS"] anonymous
    # kernels, all open pages.
    ADDRESS_FULL = "address_full"
    # Anonymous visitors hold LIMITS["MAX_ANONYMOUS_SESSIONS"] kernels, none
    # of them a closed tab of this visitor's (or address's).
    VISITORS_FULL = "visitors_full"


@dataclass(frozen=True)
class ToEnd:
    """A closed tab's session whose kernel must end to make room."""

    session_id: str
    notebook: str


@dataclass(frozen=True)
class ClaimResult:
    """What :meth:`SessionBindings.claim` decided. A new session admitted
    at a cap comes with the closed tabs whose kernels the caller must end
    to make room for it (already forgotten here, so counted no more)."""

    outcome: Claim
    to_end: tuple[ToEnd, ...] = ()


def _is_visitor(owner: str) -> bool:
    """Whether the owner key is an anonymous visitor's (_visitor_owner)."""
    return owner.startswith("visitor:")


def person_of(owner: str) -> str:
    """The user or visitor behind an owner key (``user:<id>``,
    ``visitor:<id>``), whatever their login."""
    return _person(owner)


def _person(owner: str) -> str:
    """The user or visitor behind an owner key, whatever their login."""
    kind, _, rest = owner.partition(":")
    return f"{kind}:{rest.split(':', 1)[0]}"


def _kept_since() -> float:
    """Tabs closed since then may still have their kernel: marimo keeps it
    ``session_ttl`` seconds for a reload."""
    ttl: float = conf.marimo_options().get("session_ttl", 120)
    return time.time() - ttl


@dataclass(frozen=True)
class Caps:
    """The caps on live kernels a new session must fit under (``None``: no
    cap). Each counts the sessions whose kernel lives, the page open or its
    tab closed (docs: topics/limits)."""

    #: Of one person: a user, whatever their login, or an anonymous visitor
    #: (MAX_SESSIONS_PER_USER).
    per_person: int | None = None
    #: Of the anonymous visitors of one client address
    #: (LIMITS["MAX_SESSIONS_PER_ADDRESS"]).
    per_address: int | None = None
    #: Of every anonymous visitor together (LIMITS["MAX_ANONYMOUS_SESSIONS"]).
    anonymous: int | None = None
    #: Of the whole process (LIMITS["MAX_SESSIONS"]).
    server: int | None = None


def caps_in_force() -> Caps:
    """The caps on live kernels a new session must fit under."""
    config = conf.get_settings()
    return Caps(
        per_person=config.MAX_SESSIONS_PER_USER,
        per_address=config.LIMITS.MAX_SESSIONS_PER_ADDRESS,
        anonymous=config.LIMITS.MAX_ANONYMOUS_SESSIONS,
        server=config.LIMITS.MAX_SESSIONS,
    )


@dataclass
class Binding:
    owner: str
    notebook: str
    user_context: dict[str, Any]
    # What REQUEST_META returned when the websocket opened.
    meta: dict[str, Any] = field(default_factory=dict)
    user_id: Any = None
    # The client address that opened it (``scope["client"]``), if known.
    address: str | None = None
    opened_at: float = field(default_factory=time.time)
    # When the page last changed a widget, (re)connected, or a run of its
    # cells ended: the idle timeout counts from here. Monotonic, so a clock
    # change cannot close it.
    last_used: float = field(default_factory=time.monotonic)
    # A run of cells is going on: the session is in use, however long it takes.
    running: bool = False
    connections: int = 0
    disconnected_at: float | None = None
    # When the session's last activity was written to its database record.
    activity_recorded_at: float = field(default_factory=time.time)
    # Its kernel's end is reported (kernel_ended(): kernels in processes):
    # until then it holds a kernel, however long ago its tab closed. If not
    # (kernels as threads), marimo drops the kernel session_ttl after the tab
    # closed, and that is when it stops counting.
    kernel_end_reported: bool = False
    # The virtual files (downloads) this session's kernel has sent the page:
    # only they are served, and only to this owner (marimo keeps one store
    # for every session of the process).
    files: set[str] = field(default_factory=set)

    @property
    def is_anonymous(self) -> bool:
        return _is_visitor(self.owner)

    def holds_kernel(self, kept_since: float) -> bool:
        """Whether its kernel lives: its page is open, or its tab closed and
        the kernel waits out marimo's ``session_ttl`` for a reload (counted
        from ``kept_since`` where no report of the kernel's end comes)."""
        return bool(
            self.connections
            or self.kernel_end_reported
            or (self.disconnected_at or 0) >= kept_since
        )

    def used(self) -> None:
        """The page changed a widget (any kernel call): not idle."""
        self.last_used = time.monotonic()

    def run_changed(self, running: bool) -> None:
        """A run of the session's cells started, or ended (kernel messages)."""
        self.running = running
        self.used()

    def idle_for(self) -> float:
        """Seconds since the session was last used (0 while cells run)."""
        return 0.0 if self.running else time.monotonic() - self.last_used

    def activity_due(self) -> bool:
        """Whether a kernel call now should update the record's last
        activity (at most every ACTIVITY_EVERY seconds: not one write per
        widget change)."""
        now = time.time()
        if now - self.activity_recorded_at < ACTIVITY_EVERY:
            return False
        self.activity_recorded_at = now
        return True


class SessionBindings:
    """marimo session id -> the owner that opened it, in this process."""

    def __init__(self) -> None:
        self._bindings: dict[str, Binding] = {}
        self._lock = threading.Lock()

    def claim(
        self,
        session_id: str,
        *,
        owner: str,
        notebook: str,
        user_context: dict[str, Any],
        meta: dict[str, Any] | None = None,
        user_id: Any = None,
        address: str | None = None,
        caps: Caps = Caps(),
        kernel_end_reported: bool = False,
    ) -> ClaimResult:
        """Record that ``owner`` opens ``session_id``.

        Refused when someone else (or another notebook) owns the id. A new
        session is also refused past one of the ``caps`` on live kernels (an
        open page's, or a closed tab's that waits out ``session_ttl``) of
        the person, of an anonymous visitor's ``address``, of anonymous
        visitors together and of the process. At a cap, the person's own
        oldest closed tabs make room first (:meth:`_room_for`): only open
        pages refuse a new one. A reconnect of a session it holds is never
        refused for a cap.

        ``kernel_end_reported``: the new session's kernel will report its end
        (:meth:`kernel_ended`); until then it counts, its tab open or not.
        """
        with self._lock:
            self._purge_expired()
            binding = self._bindings.get(session_id)
            if binding is not None and (
                binding.owner != owner or binding.notebook != notebook
            ):
                return ClaimResult(Claim.NOT_OWNER)
            to_end: tuple[ToEnd, ...] = ()
            if binding is None:
                refused, to_end = self._room_for(owner, address, caps)
                if refused is not None:
                    return ClaimResult(refused)
                for ending in to_end:
                    del self._bindings[ending.session_id]
                binding = Binding(
                    owner,
                    notebook,
                    user_context,
                    user_id=user_id,
                    address=address,
                    kernel_end_reported=kernel_end_reported,
                )
                self._bindings[session_id] = binding
            binding.user_context = user_context
            binding.meta = meta or {}
            binding.used()
            binding.connections += 1
            binding.disconnected_at = None
            return ClaimResult(Claim.CLAIMED, to_end)

    def _room_for(
        self, owner: str, address: str | None, caps: Caps
    ) -> tuple[Claim | None, tuple[ToEnd, ...]]:
        return room_for(self._live(), owner, address, caps)

    def _live(self) -> list[tuple[str, Binding]]:
        """The sessions whose kernel lives, by session id."""
        kept_since = _kept_since()
        return [
            (session_id, binding)
            for session_id, binding in list(self._bindings.items())
            if binding.holds_kernel(kept_since)
        ]

    def count(self) -> int:
        """Sessions whose kernel this process holds: open ones, and closed
        ones whose kernel waits out ``session_ttl`` (the records of those
        marimo dropped may outlive them by GRACE_SECONDS: not counted)."""
        return len(self._live())

    def kernel_ended(self, session_id: str) -> None:
        """The kernel of ``session_id`` has ended (its process exited): it
        holds no place under the caps any more, and calls naming the session
        are told it has ended."""
        self.forget(session_id)

    def release(self, session_id: str, owner: str) -> None:
        """The websocket of ``session_id`` closed; marimo keeps the kernel a while."""
        with self._lock:
            self._release(session_id, owner)

    def abandon(self, session_id: str, owner: str) -> None:
        """A websocket that claimed ``session_id`` started no kernel (it was
        refused, or failed): release it, and forget the session unless
        another websocket holds it, so that it counts against no cap."""
        with self._lock:
            binding = self._release(session_id, owner)
            if binding is not None and not binding.connections:
                del self._bindings[session_id]

    def _release(self, session_id: str, owner: str) -> Binding | None:
        binding = self._bindings.get(session_id)
        if binding is None or binding.owner != owner:
            return None
        binding.connections = max(0, binding.connections - 1)
        if binding.connections == 0:
            binding.disconnected_at = time.time()
        return binding

    def get_for_login(
        self,
        session_id: str,
        *,
        notebook: str,
        session_key: str | None,
        visitor: str | None,
    ) -> Binding | None:
        """The binding of ``session_id`` if the browser login presenting this
        session key (or visitor cookie) opened it for ``notebook``.

        Needs no database: the session key is the secret the login cookie
        carries, and it was validated when the websocket opened.
        """
        binding = self._bindings.get(session_id)
        if binding is None or binding.notebook != notebook:
            return None
        if session_key and binding.owner == _user_owner(binding.user_id, session_key):
            return binding
        if visitor and binding.owner == _visitor_owner(visitor):
            return binding
        return None

    def get(self, session_id: str) -> Binding | None:
        """The binding of ``session_id`` in this process, whoever owns it."""
        return self._bindings.get(session_id)

    def knows(self, session_id: str) -> bool:
        """Whether some login opened ``session_id`` in this process (and it
        has not expired)."""
        return session_id in self._bindings

    def add_files(self, session_id: str, names: set[str]) -> None:
        """Record virtual files that ``session_id``'s kernel sent its page."""
        binding = self._bindings.get(session_id)
        if binding is not None:
            binding.files |= names

    def session_with_file(self, owner: str, notebook: str, name: str) -> str | None:
        """The session of ``owner`` on ``notebook``, open here, whose kernel
        made the virtual file ``name``."""
        for session_id, binding in list(self._bindings.items()):
            if (
                binding.connections
                and binding.owner == owner
                and binding.notebook == notebook
                and name in binding.files
            ):
                return session_id
        return None

    def session_holding_file(self, name: str) -> str | None:
        """The session, open here, whose kernel made the virtual file ``name``
        (names are random: no two sessions make the same)."""
        for session_id, binding in list(self._bindings.items()):
            if name in binding.files:
                return session_id
        return None

    def forget(self, session_id: str) -> None:
        with self._lock:
            self._bindings.pop(session_id, None)

    def _purge_expired(self) -> None:
        """Forget closed sessions marimo dropped a while ago (GRACE_SECONDS);
        one whose kernel reports its end goes when it does (kernel_ended)."""
        horizon = _kept_since() - GRACE_SECONDS
        expired = [
            session_id
            for session_id, binding in self._bindings.items()
            if binding.disconnected_at is not None
            and binding.disconnected_at < horizon
            and not binding.kernel_end_reported
        ]
        for session_id in expired:
            del self._bindings[session_id]


def room_for(
    live: list[tuple[str, Binding]], owner: str, address: str | None, caps: Caps
) -> tuple[Claim | None, tuple[ToEnd, ...]]:
    """Whether a new session of ``owner`` fits under every cap, among the
    sessions whose kernel lives (``live``: by session id), and the closed
    tabs whose kernels must end for it to fit; or the cap that refuses it
    (then nothing ends). The kernel host counts the machine's kernels with
    it too (kernels/forkserver.py).

    The tabs ended are the claimant's own, oldest closed first: a reload
    must never be refused for the page it replaces. An anonymous visitor
    is known only by a cookie a client can drop, so the closed tabs of
    its address's anonymous visitors count as its own too (the address
    cap would end them anyway).
    """
    person = _person(owner)
    anonymous = _is_visitor(owner)

    def of_the_person(binding: Binding) -> bool:
        return _person(binding.owner) == person

    def of_the_address(binding: Binding) -> bool:
        return binding.is_anonymous and binding.address == address

    def own(binding: Binding) -> bool:
        return of_the_person(binding) or (
            anonymous and address is not None and of_the_address(binding)
        )

    # Most particular first: the page says the cap the person can act on.
    checks: list[tuple[Claim, int | None, Callable[[Binding], bool]]] = [
        (Claim.OVER_LIMIT, caps.per_person, of_the_person)
    ]
    if anonymous:
        if address is not None:
            checks.append((Claim.ADDRESS_FULL, caps.per_address, of_the_address))
        checks.append(
            (
                Claim.VISITORS_FULL,
                caps.anonymous,
                lambda binding: binding.is_anonymous,
            )
        )
    checks.append((Claim.SERVER_FULL, caps.server, lambda binding: True))

    ending: dict[str, Binding] = {}
    for refusal, cap, counts in checks:
        if cap is None:
            continue
        counted = [
            (session_id, binding)
            for session_id, binding in live
            if session_id not in ending and counts(binding)
        ]
        excess = len(counted) + 1 - cap
        if excess <= 0:
            continue
        closed_tabs = sorted(
            (
                (session_id, binding)
                for session_id, binding in counted
                if not binding.connections and own(binding)
            ),
            key=lambda item: item[1].disconnected_at or 0,
        )
        if len(closed_tabs) < excess:
            return refusal, ()
        ending.update(closed_tabs[:excess])
    return None, tuple(
        ToEnd(session_id, binding.notebook) for session_id, binding in ending.items()
    )


bindings = SessionBindings()
