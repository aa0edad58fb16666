"""The cell a kernel process is running, so that it can be interrupted, and
what it ran out of.

The bridge's cell executor (``marimo/orm.py``) runs every cell inside
:func:`running`. In a kernel process (one session, one kernel thread) that
tells the process which thread to interrupt when the web process signals
that a cell has run too long, and lets it tell the page when a cell ran out
of memory. In thread mode nothing listens, and this costs one assignment.
"""

from __future__ import annotations

import contextlib
import ctypes
import threading
from collections.abc import Callable, Iterator

# The thread running a cell of this process's kernel, while one runs; the
# lock keeps an interrupt from landing after the cell has ended.
_running_thread: int | None = None
_interrupted = False  # an interrupt was sent to the cell running now
_lock = threading.Lock()
# Called (on the kernel thread) when a cell raised MemoryError.
on_memory_error: Callable[[], None] | None = None


class CellInterrupted(KeyboardInterrupt):
    """Raised inside a cell that ran past its time limit. marimo shows a
    cell ended by ``KeyboardInterrupt`` as interrupted, as marimo's own
    interrupt button does in the editor."""


@contextlib.contextmanager
def running() -> Iterator[None]:
    """Run a cell (on the kernel thread)."""
    global _running_thread, _interrupted
    with _lock:
        outer, _running_thread = _running_thread, threading.get_ident()
        _interrupted = False
    try:
        yield
    except BaseException as error:
        # marimo's executor raises its own error from the cell's.
        if on_memory_error is not None and (
            isinstance(error, MemoryError) or isinstance(error.__cause__, MemoryError)
        ):
            on_memory_error()
        raise
    finally:
        with _lock:
            if _interrupted:
                # An interrupt sent as the cell ended must not go off in
                # marimo's own code: it is withdrawn.
                _set_async_exception(threading.get_ident(), None)
                _interrupted = False
            _running_thread = outer


def interrupt() -> bool:
    """Interrupt the cell running now, if one is: it raises
    :class:`CellInterrupted` at its next Python instruction (a call into C,
    such as a long ``time.sleep``, ends first). ``False`` if none runs."""
    global _interrupted
    with _lock:
        thread = _running_thread
        if thread is None:
            return False
        _interrupted = _set_async_exception(thread, CellInterrupted)
        return _interrupted


def _set_async_exception(thread: int, error: type[BaseException] | None) -> bool:
    """Raise ``error`` in ``thread`` at its next instruction (``None``
    withdraws one pending)."""
    changed = ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(thread), None if error is None else ctypes.py_object(error)
    )
    return bool(changed)
