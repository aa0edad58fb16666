"""The rules for a kernel call: a POST below a notebook's page (every widget
change is one). Shared by the Django view and the ASGI fast path, so both
apply exactly the same checks.

A kernel call must come from this site, name a marimo session in the
``Marimo-Session-Id`` header that this browser login opened over the
websocket (and whose websocket is still open), and carry a JSON object.

The access decision was made when the session's websocket opened, and
revocation ends the session when it would change, so a call from the
session's owner needs no database query.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from . import origins, records, sessions
from .registry import Notebook

SESSION_HEADER = "Marimo-Session-Id"


@dataclass(frozen=True)
class Refusal:
    """A kernel call refused with this status and message."""

    status: int
    message: str


CROSS_SITE = Refusal(403, "Cross-site request refused.")
NO_SESSION_HEADER = Refusal(400, f"The {SESSION_HEADER} header is missing.")
NOT_YOURS = Refusal(403, "This notebook session is not yours.")
SESSION_ENDED = Refusal(410, "This notebook session has ended: reload the page.")
# A forwarded call whose channel layer failed (the session may be alive).
UNREACHABLE = Refusal(
    503, "The notebook session cannot be reached right now: try again."
)
TOO_LARGE = Refusal(413, "Request body too large.")
NOT_JSON = Refusal(400, "The request body is not valid JSON.")
NOT_AN_OBJECT = Refusal(400, "The request body must be a JSON object.")


def admit(
    notebook: Notebook,
    *,
    origin: str | None,
    referer: str | None,
    fetch_site: str | None,
    host: str,
    scheme: str,
    session_id: str | None,
    session_key: str | None,
    visitor: str | None,
) -> sessions.Binding | Refusal | None:
    """The session binding a kernel call may use, or why it is refused.

    ``None`` means the caller is not the session's owner: whether that is a
    401 or a 403 takes the access decision, which needs the database.
    """
    if not origins.request_source_is_trusted(
        origin=origin, referer=referer, fetch_site=fetch_site, host=host, scheme=scheme
    ):
        return CROSS_SITE
    if not session_id:
        return NO_SESSION_HEADER
    binding = sessions.bindings.get_for_login(
        session_id, notebook=notebook.slug, session_key=session_key, visitor=visitor
    )
    if binding is None:
        return None
    if not binding.connections:
        # marimo refuses calls for a session without its websocket, and
        # forgets the session after its TTL (then answers 500): say so.
        return SESSION_ENDED
    if binding.activity_due():
        records.touch_later(session_id)
    return binding


def check_body(body: bytes) -> Refusal | None:
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
