"""marimo's ASGI apps, one per notebook file, built with the public
``marimo.create_asgi_app()`` builder.

Each notebook gets its own app (marimo gives each its own session manager
anyway), built the first time the notebook is requested and kept for the life
of the process, so a notebook that appears in a directory needs no restart.
The app is mounted at the empty path: the bridge sends it scopes whose
``root_path`` is the notebook's page URL and whose ``path`` is the full URL,
which is how Starlette matches mounted apps.

At interpreter exit every session is closed, because marimo's kernel threads
would otherwise keep the process alive after the server has stopped.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import marimo

from django_notebooks import conf
from django_notebooks.marimo import frontend, internals, orm

ASGIApp = Callable[..., Any]
logger = logging.getLogger(__name__)


class NotebookApps:
    """The marimo apps of this process, by notebook file."""

    def __init__(self) -> None:
        self._apps: dict[tuple[Path, tuple[Any, ...]], ASGIApp] = {}
        self._session_managers: dict[tuple[Path, tuple[Any, ...]], Any] = {}
        self._lock = threading.Lock()
        self._exit_hook_installed = False
        self._options_for: object = None
        self._options: dict[str, Any] = {}
        self._options_key: tuple[Any, ...] = ()

    def app_for(self, path: Path, options: dict[str, Any] | None = None) -> ASGIApp:
        """The marimo app serving the notebook file at ``path``, built with
        ``options`` (a kernel process gets its web process's) or this
        process's own."""
        if options is None:
            options = self.options()
            options_key = self._options_key
        else:
            options_key = tuple(sorted(options.items()))
        key = (path, options_key)
        app = self._apps.get(key)
        if app is None:
            with self._lock:
                app = self._apps.get(key)
                if app is None:
                    app = self._build(key, path, dict(options))
        return app

    def options(self) -> dict[str, Any]:
        """The ``marimo.create_asgi_app()`` options of this process."""
        # Every kernel call asks: the options are worked out once per setting.
        config = conf.get_settings()
        if self._options_for is not config:
            self._options = self._current_options()
            self._options_key = tuple(sorted(self._options.items()))
            self._options_for = config
        return self._options

    @staticmethod
    def _current_options() -> dict[str, Any]:
        options = conf.marimo_options()
        if "asset_url" not in options:
            options["asset_url"] = frontend.asset_url()
        return options

    def session_manager_for(self, path: Path) -> Any | None:
        """marimo's session manager for a notebook file, if its app exists."""
        for (app_path, _options), manager in self._session_managers.items():
            if app_path == path:
                return manager
        return None

    def _build(
        self, key: tuple[Path, tuple[Any, ...]], path: Path, options: dict[str, Any]
    ) -> ASGIApp:
        def remember_session_manager(app: Any) -> Any:
            # marimo calls this with the notebook's own Starlette app.
            self._session_managers[key] = internals.session_manager(app)
            return app

        orm.install()  # before any kernel of this process runs a cell
        internals.set_virtual_file_storage()  # before any @file is served
        app = (
            marimo.create_asgi_app(**options)
            .with_app(path="", root=str(path), middleware=[remember_session_manager])
            .build()
        )
        self._apps[key] = app
        self.install_exit_hook()
        return app

    def close_all_sessions(self) -> None:
        """Close every marimo session of this process, and delete their
        records (other processes would forward calls to them)."""
        for manager in list(self._session_managers.values()):
            internals.close_all_sessions(manager)
        try:
            _forget_records()
        except Exception:  # the database may be gone by now: rows of a
            # stopped process are also deleted when a call to them times out.
            logger.info("Could not delete this process's session records")

    def install_exit_hook(self) -> None:
        """Close this process's sessions, and delete their records, when it
        exits (once; kernels in processes need the records deleted too)."""
        if self._exit_hook_installed:
            return
        self._exit_hook_installed = True
        # atexit handlers run only after non-daemon threads are joined, which
        # is too late: the kernel threads never end by themselves. This hook
        # runs before the join; concurrent.futures uses it for the same need.
        register = getattr(threading, "_register_atexit", None)
        if register is not None:
            register(self.close_all_sessions)
        else:  # pragma: no cover - every supported Python has it
            import atexit

            atexit.register(self.close_all_sessions)
        # Under daphne, close them earlier still: while the event loop runs.
        # Closing a session touches its asyncio objects; doing that after
        # the loop has stopped crashed the interpreter at exit.
        if "twisted.internet.reactor" in sys.modules:
            from twisted.internet import reactor

            # (twisted's interface stubs omit ``self``, confusing mypy.)
            trigger = reactor.addSystemEventTrigger
            trigger("before", "shutdown", self.close_all_sessions)  # type: ignore[arg-type]


def _forget_records() -> None:
    from django_notebooks.sessions.records import forget_this_process

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        forget_this_process()
        return
    # Under daphne this runs on the event loop's thread, where Django
    # refuses synchronous database calls.
    thread = threading.Thread(target=forget_this_process)
    thread.start()
    thread.join(timeout=5)


notebook_apps = NotebookApps()
