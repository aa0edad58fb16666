"""Django's ORM inside notebook cells.

marimo runs every cell from a coroutine on its kernel thread, inside that
thread's running asyncio event loop, and Django refuses synchronous database
calls where a loop runs (``SynchronousOnlyOperation``). The bridge gives
marimo a cell executor that runs each cell the way its code is written:

- A synchronous cell (no top-level ``await``) runs as plain synchronous
  code: while it runs, the kernel thread does not report its event loop as
  running. Nothing else can run on that loop until the cell returns anyway,
  so the ORM is as safe there as in a management command.
- An asynchronous cell runs on the loop, as marimo runs it. The async ORM
  (``await User.objects.acount()``) and ``sync_to_async`` run on a thread of
  the cell's own, as Django gives each ASGI request its own thread, instead
  of the one thread the whole process would otherwise share.
- Every database connection opened while a cell runs is closed when the
  cell finishes, as Django closes a request's connections: an open session,
  which may sit idle for hours, holds none.

The executor is registered in the server process only, when it first
builds a notebook app (``apps.py``): ``marimo edit`` and scripts in the
same environment are untouched. See ``docs/topics/orm.md``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

import marimo
from asgiref.sync import ThreadSensitiveContext, sync_to_async
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.backends.signals import connection_created
from django.db.models import Model, QuerySet

from django_notebooks.kernels import cells
from django_notebooks.marimo import internals

logger = logging.getLogger(__name__)

EXECUTOR_NAME = "django_notebooks"
# Methods by which an object renders itself in marimo (or Jupyter).
DISPLAY_HOOKS = ("_display_", "_mime_", "_repr_html_", "_repr_markdown_")

# The connections opened while the current cell runs. Set by the executor in
# the cell's context; asgiref copies that context into the threads that run
# sync_to_async, so connections opened there are seen too.
_opened: ContextVar[dict[int, BaseDatabaseWrapper] | None] = ContextVar(
    "django_notebooks_opened", default=None
)
_installed = False
_install_lock = threading.Lock()


class CellExecutor:
    """Runs a notebook's cells for marimo so that the ORM works in them.

    It follows marimo's executor protocol and hands the cell itself to
    marimo's default executor.
    """

    name = EXECUTOR_NAME

    def __init__(self) -> None:
        self._cells = internals.default_cell_executor()

    def execute_cell(self, cell: Any, glbls: Any) -> Any:
        """Run a synchronous cell where no event loop runs (marimo does
        this when it runs an app as a script, ``app.run()``)."""
        with cells.running(), _closing_opened_connections():
            return self._cells.execute_cell(cell, glbls)

    async def execute_cell_async(self, cell: Any, glbls: Any) -> Any:
        """Run any cell from the kernel's event loop."""
        if internals.is_async_cell(cell):
            with cells.running():
                return await self._execute_on_loop(cell, glbls)
        with cells.running(), _event_loop_hidden(), _closing_opened_connections():
            return _shown_now(self._cells.execute_cell(cell, glbls))

    async def _execute_on_loop(self, cell: Any, glbls: Any) -> Any:
        opened: dict[int, BaseDatabaseWrapper] = {}
        token = _opened.set(opened)
        try:
            async with ThreadSensitiveContext():
                try:
                    return await self._cells.execute_cell_async(cell, glbls)
                finally:
                    if opened:
                        # On the cell's own thread, where Django allows it.
                        await sync_to_async(_close)(opened)
        finally:
            _opened.reset(token)


def _shown_now(output: Any) -> Any:
    """A cell's output, rendered now if showing it would query the database.

    marimo renders a cell's last expression after the cell has run, on the
    event loop: with ``repr()`` for objects without display hooks. For a
    queryset (or a model whose ``__str__`` follows a relation) that is a
    query, which Django would refuse there; here it is still allowed.
    """
    if not isinstance(output, (QuerySet, Model)):
        return output
    try:
        if any(hasattr(output, hook) for hook in DISPLAY_HOOKS):
            return marimo.as_html(output)
        return marimo.plain_text(repr(output))  # what marimo would show
    except Exception:
        return output  # for marimo to render and report as usual


@contextlib.contextmanager
def _event_loop_hidden() -> Iterator[None]:
    """While the block runs, this thread has no running event loop.

    Django's guard asks ``asyncio.get_running_loop()``. The loop is blocked
    by the synchronous cell until it returns, so no coroutine can interleave
    with the cell's database work.
    """
    loop = asyncio._get_running_loop()
    asyncio._set_running_loop(None)
    try:
        yield
    finally:
        asyncio._set_running_loop(loop)


@contextlib.contextmanager
def _closing_opened_connections() -> Iterator[None]:
    opened: dict[int, BaseDatabaseWrapper] = {}
    token = _opened.set(opened)
    try:
        yield
    finally:
        _opened.reset(token)
        _close(opened)


def _close(opened: dict[int, BaseDatabaseWrapper]) -> None:
    """Close the connections a cell opened.

    Most were opened on this thread; one opened by
    ``sync_to_async(thread_sensitive=False)`` lives on a pool thread, idle
    now that the cell has finished, and Django closes it from here only
    when thread sharing is allowed.
    """
    for connection in list(opened.values()):
        connection.inc_thread_sharing()
        try:
            connection.close()
        except Exception:
            logger.exception("Closing database connection %r failed", connection.alias)
        finally:
            connection.dec_thread_sharing()
    opened.clear()


def _remember_connection(
    sender: Any, connection: BaseDatabaseWrapper, **kwargs: Any
) -> None:
    opened = _opened.get()
    if opened is not None:
        opened[id(connection)] = connection


def install() -> None:
    """Run this process's notebook cells with :class:`CellExecutor` (once).

    If marimo no longer offers what this needs, notebooks still run, and
    synchronous ORM calls in cells raise ``SynchronousOnlyOperation``.
    """
    global _installed
    with _install_lock:
        if _installed:
            return
        _installed = True
        connection_created.connect(
            _remember_connection, dispatch_uid="django_notebooks.marimo.orm"
        )
        try:
            internals.register_cell_executor(EXECUTOR_NAME, CellExecutor)
        except internals.MarimoInternalsChanged as error:
            logger.error("%s", error)
