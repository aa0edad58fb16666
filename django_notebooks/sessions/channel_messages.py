"""Every message the bridge sends over the channel layer, and every group.

A message's ``type`` names the consumer method that handles it (Channels
turns ``notebooks.kernel_call`` into ``KernelConsumer.notebooks_kernel_call``),
so types share the ``notebooks.`` prefix of those methods. Groups are named
``django_notebooks.<what>.<id>``; an id that is a secret (a session key) is
hashed, because group names end up in the layer's storage (Redis).
"""

from __future__ import annotations

import hashlib
from typing import Any

# To the consumer holding a session: run this forwarded request (relay.py).
KERNEL_CALL = "notebooks.kernel_call"
# To the asking process's reply channel: the answer to a forwarded request.
KERNEL_REPLY = "notebooks.kernel_reply"
# To the asking process's reply channel: these forwarded requests (their
# ``call_ids``) are running in the holding process, which is alive. Sent as
# each request arrives, then every second while it runs (relay.py).
KERNEL_RUNNING = "notebooks.kernel_running"
# To the consumer holding a session: an administrator ended it (admin.py).
TERMINATE = "notebooks.terminate"
# To a login's sessions: the login logged out (revocation.py).
REVOKE = "notebooks.revoke"
# To a user's sessions: their account, groups or permissions changed, ask the
# access rules again (revocation.py).
RECHECK = "notebooks.recheck"


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()[:40]


def session_group(session_id: str) -> str:
    """The consumer holding a session's websocket."""
    return f"django_notebooks.session.{_digest(session_id)}"


def user_group(user_id: Any) -> str:
    """Every session of one user, whatever the login."""
    return f"django_notebooks.user.{user_id}"


def login_group(session_key: str) -> str:
    """Every session opened by one browser login (Django session)."""
    return f"django_notebooks.login.{_digest(session_key)}"
