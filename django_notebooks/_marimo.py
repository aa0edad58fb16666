"""The only module that touches marimo internals.

Besides the session manager below, the bridge relies on where marimo's
package keeps its built frontend (to serve it compressed) and on one message
of its websocket protocol (an alert).

marimo's public API builds the notebook apps (``marimo.create_asgi_app``) but
offers no way to close their sessions: a session's kernel thread is not a
daemon, so while one lives the interpreter cannot exit and servers hang on
SIGTERM. marimo's own CLI closes them through its session manager, which it
keeps on the notebook app's Starlette state. We do the same, here and nowhere
else. ``tests/test_marimo_contract.py`` fails loudly when marimo moves it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


class MarimoInternalsChanged(RuntimeError):
    """marimo no longer has an internal this project relies on."""


def frontend_root() -> Path:
    """The folder of marimo's built frontend, inside the installed package
    (``index.html`` and ``assets/``), as ``marimo run`` serves it."""
    import marimo

    root = (Path(marimo.__file__).parent / "_static").resolve()
    if not (root / "index.html").is_file() or not (root / "assets").is_dir():
        raise MarimoInternalsChanged(
            f"marimo {marimo.__version__} has no built frontend at {root}; "
            "set DJANGO_NOTEBOOKS['FRONTEND'] = 'marimo'."
        )
    return root


def session_manager(notebook_app: Any) -> Any:
    """The session manager of one notebook's Starlette app (as passed to a
    ``with_app(middleware=[...])`` factory)."""
    try:
        manager = notebook_app.state.session_manager
    except AttributeError as error:
        raise MarimoInternalsChanged(
            "marimo's notebook app no longer keeps its session manager at "
            "app.state.session_manager; django_notebooks cannot close sessions."
        ) from error
    for method in ("close_all_sessions", "close_session"):
        if not callable(getattr(manager, method, None)):
            raise MarimoInternalsChanged(
                f"marimo's SessionManager has no {method}(); "
                "django_notebooks cannot close sessions."
            )
    return manager


def close_all_sessions(manager: Any) -> None:
    """Close every session of one notebook, stopping its kernel threads."""
    try:
        manager.close_all_sessions()
    except Exception:
        logger.exception("Closing marimo sessions failed")


def close_session(manager: Any, session_id: str) -> bool:
    """Close one session; ``False`` if marimo did not know it."""
    try:
        return bool(manager.close_session(session_id))
    except Exception:
        logger.exception("Closing marimo session %s failed", session_id)
        return False


def alert_frame(title: str, description: str) -> str:
    """A kernel-websocket message that marimo's frontend shows as an alert.

    Close reasons do not reach the browser under every server (daphne drops
    them), so the bridge says why it closes a socket with this message first.
    """
    return json.dumps(
        {
            "op": "alert",
            "data": {"title": title, "description": description, "variant": "danger"},
        }
    )
