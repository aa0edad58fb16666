"""The only module that touches marimo internals.

Besides the session manager below, the bridge relies on where marimo's
package keeps its built frontend (to serve it compressed) and on its store
of virtual files (set before anything is served). marimo's routes and the
close reasons its frontend understands are in routes.py.

marimo's public API builds the notebook apps (``marimo.create_asgi_app``) but
offers no way to close their sessions: a session's kernel thread is not a
daemon, so while one lives the interpreter cannot exit and servers hang on
SIGTERM. marimo's own CLI closes them through its session manager, which it
keeps on the notebook app's Starlette state. We do the same, here and nowhere
else. ``tests/test_marimo_contract.py`` fails loudly when marimo moves it.

The same goes for the executor that runs notebook cells (see
``django_notebooks/marimo/orm.py``): marimo looks executors up in a registry whose
entry-point group, ``marimo.cell.executor``, it declares internal and
unstable, so the bridge registers its executor at run time, in the server
process only, through the functions below.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
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


def set_virtual_file_storage() -> None:
    """Give this process marimo's in-memory store of virtual files now.

    marimo sets the store when the first kernel of a process starts; until
    then it reads a requested ``@file`` name from the host's shared memory
    (``/dev/shm/<name>``), another program's data. The bridge already asks
    marimo only for names a session made, and this closes the fallback
    itself: kernels started later find the store set and use it.
    """
    try:
        from marimo._runtime.virtual_file.storage import (
            InMemoryStorage,
            VirtualFileStorageManager,
        )
    except ImportError as error:
        raise MarimoInternalsChanged(
            "marimo no longer has marimo._runtime.virtual_file.storage."
            "VirtualFileStorageManager; @file downloads cannot be served safely."
        ) from error
    manager = VirtualFileStorageManager()
    if manager.storage is None:
        manager.storage = InMemoryStorage()


def register_cell_executor(name: str, factory: Callable[[], Any]) -> None:
    """Make marimo run the cells of this process's kernels with the executor
    ``factory`` returns (marimo calls it once per run of cells).

    marimo uses one registered executor: if another package registered one,
    marimo picks by name and warns; so do we, naming the one left out.
    """
    try:
        from marimo._runtime.executor.evaluator import _EXECUTOR_REGISTRY
    except ImportError as error:
        raise MarimoInternalsChanged(
            "marimo no longer has marimo._runtime.executor.evaluator."
            "_EXECUTOR_REGISTRY; synchronous ORM calls in cells will fail."
        ) from error
    if not callable(getattr(_EXECUTOR_REGISTRY, "register", None)):
        raise MarimoInternalsChanged(
            "marimo's executor registry has no register(); synchronous ORM "
            "calls in cells will fail."
        )
    others = [other for other in _EXECUTOR_REGISTRY.names() if other != name]
    if others:
        logger.warning(
            "Other marimo cell executors are installed (%s); marimo uses only "
            "the first by name, so %s may not run notebook cells.",
            ", ".join(others),
            name,
        )
    _EXECUTOR_REGISTRY.register(name, factory)


def default_cell_executor() -> Any:
    """marimo's own cell executor (``execute_cell`` runs a synchronous cell,
    ``execute_cell_async`` any cell), which the bridge's executor wraps."""
    try:
        from marimo._runtime.executor import DefaultExecutor
    except ImportError as error:
        raise MarimoInternalsChanged(
            "marimo no longer has marimo._runtime.executor.DefaultExecutor."
        ) from error
    return DefaultExecutor()


def is_async_cell(cell: Any) -> bool:
    """Whether a cell (marimo's ``CellImpl``) uses top-level ``await``, so
    that it must run on the event loop."""
    return bool(cell.is_coroutine())
