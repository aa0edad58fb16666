"""Who owns each marimo session.

marimo accepts any session id from anyone: whoever knows an id can drive that
kernel. The bridge records, when a kernel websocket opens, which browser login
opened it (the Django user and session, or an anonymous visitor's cookie on a
public notebook) and for which notebook. Kernel POSTs and reconnects for that
id are then accepted only from the same owner, and ids never seen opened are
refused.

The record lives in this process's memory: marimo's sessions do too.
"""

from __future__ import annotations

import enum
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from django.core import signing

from django_notebooks import conf

VISITOR_COOKIE = "django_notebooks_visitor"
VISITOR_SALT = "django_notebooks.visitor"
# Records of sessions whose websocket closed are kept this long beyond
# marimo's session TTL, so that a reconnect within the TTL is still accepted.
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
    # The person already has their MAX_SESSIONS_PER_USER open.
    OVER_LIMIT = "over_limit"
    # The process holds LIMITS["MAX_SESSIONS"] sessions.
    SERVER_FULL = "server_full"
    # The client address has LIMITS["MAX_SESSIONS_PER_ADDRESS"] anonymous
    # sessions open.
    ADDRESS_FULL = "address_full"


def _is_visitor(owner: str) -> bool:
    """Whether the owner key is an anonymous visitor's (_visitor_owner)."""
    return owner.startswith("visitor:")


def _person(owner: str) -> str:
    """The user or visitor behind an owner key, whatever their login."""
    kind, _, rest = owner.partition(":")
    return f"{kind}:{rest.split(':', 1)[0]}"


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
    # The virtual files (downloads) this session's kernel has sent the page:
    # only they are served, and only to this owner (marimo keeps one store
    # for every session of the process).
    files: set[str] = field(default_factory=set)

    @property
    def is_anonymous(self) -> bool:
        return _is_visitor(self.owner)

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
        limit: int | None = None,
        address: str | None = None,
        max_sessions: int | None = None,
        max_per_address: int | None = None,
    ) -> Claim:
        """Record that ``owner`` opens ``session_id``.

        Refused when someone else (or another notebook) owns the id; and a
        new session when the person behind ``owner`` already has ``limit``
        open sessions, when this process holds ``max_sessions`` (open ones
        and those marimo keeps after their tab closed: each holds a kernel),
        or when an anonymous visitor's ``address`` has ``max_per_address``
        anonymous sessions open. A reconnect of a session it holds is never
        refused for a cap.
        """
        with self._lock:
            self._purge_expired()
            binding = self._bindings.get(session_id)
            if binding is not None and (
                binding.owner != owner or binding.notebook != notebook
            ):
                return Claim.NOT_OWNER
            if binding is None:
                refused = self._over_a_cap(
                    owner, limit, address, max_sessions, max_per_address
                )
                if refused is not None:
                    return refused
                binding = Binding(
                    owner, notebook, user_context, user_id=user_id, address=address
                )
                self._bindings[session_id] = binding
            binding.user_context = user_context
            binding.meta = meta or {}
            binding.used()
            binding.connections += 1
            binding.disconnected_at = None
            return Claim.CLAIMED

    def _over_a_cap(
        self,
        owner: str,
        limit: int | None,
        address: str | None,
        max_sessions: int | None,
        max_per_address: int | None,
    ) -> Claim | None:
        if max_sessions is not None and self.count() >= max_sessions:
            return Claim.SERVER_FULL
        open_sessions = [
            other for other in self._bindings.values() if other.connections
        ]
        person = _person(owner)
        if limit is not None and limit <= sum(
            1 for other in open_sessions if _person(other.owner) == person
        ):
            return Claim.OVER_LIMIT
        if (
            max_per_address is not None
            and address is not None
            and _is_visitor(owner)
            and max_per_address
            <= sum(
                1
                for other in open_sessions
                if other.is_anonymous and other.address == address
            )
        ):
            return Claim.ADDRESS_FULL
        return None

    def count(self) -> int:
        """Sessions whose kernel this process holds: open ones, and closed
        ones marimo keeps for ``session_ttl`` (the records outlive them by
        GRACE_SECONDS: those are not counted)."""
        kept_since = time.time() - conf.marimo_options().get("session_ttl", 120)
        return sum(
            1
            for binding in list(self._bindings.values())
            if binding.connections or (binding.disconnected_at or 0) >= kept_since
        )

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
        ttl = conf.marimo_options().get("session_ttl", 120) + GRACE_SECONDS
        horizon = time.time() - ttl
        expired = [
            session_id
            for session_id, binding in self._bindings.items()
            if binding.disconnected_at is not None and binding.disconnected_at < horizon
        ]
        for session_id in expired:
            del self._bindings[session_id]


bindings = SessionBindings()
