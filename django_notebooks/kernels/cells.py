"""The cell a kernel process is running: reported to its parent, so that the
parent can time it, and interruptible.

The bridge's cell executor (``marimo/orm.py``) runs every cell inside
:func:`running`. In a kernel process (one session, one kernel thread), the
process tells its kernel host when a cell starts and ends
(:data:`reporter`, set by ``child.py``): the kernel host times the cell
against ``CELL_TIMEOUT``, lowers the kernel's priority when it runs long,
and interrupts it (``SIGINT``, which the kernel process turns into
:func:`interrupt`). In thread mode nothing listens, and this costs two
assignments.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import threading
from collections.abc import Iterator
from typing import Protocol

# The thread running a cell of this process's kernel, while one runs; the
# lock keeps an interrupt from landing after the cell has ended.
_running_thread: int | None = None
_interrupted = False  # an interrupt was sent to the cell running now
_lock = threading.Lock()


class Reporter(Protocol):
    """Who hears of the kernel's cells (the kernel process's status channel)."""

    def started(self) -> None: ...

    def ended(self, *, interrupted: bool, out_of_memory: bool) -> None: ...


#: Set in a kernel process (``child.py``); called on the kernel thread.
reporter: Reporter | None = None


class CellInterrupted(KeyboardInterrupt):
    """Raised inside a cell that ran past its time limit. marimo shows a
    cell ended by ``KeyboardInterrupt`` as interrupted, as marimo's own
    interrupt button does in the editor."""


def is_out_of_memory(error: BaseException) -> bool:
    """Whether a cell failed for lack of memory: a ``MemoryError``, or a
    mapping the system refused (``mmap`` and ``shared_memory`` raise
    ``OSError(ENOMEM)``), itself or as the cause marimo's executor gives
    its own error."""
    for found in (error, error.__cause__):
        if isinstance(found, MemoryError):
            return True
        if isinstance(found, OSError) and found.errno == errno.ENOMEM:
            return True
    return False


@contextlib.contextmanager
def running() -> Iterator[None]:
    """Run a cell (on the kernel thread)."""
    global _running_thread, _interrupted
    with _lock:
        outer, _running_thread = _running_thread, threading.get_ident()
        _interrupted = False
    told = reporter
    if told is not None and outer is None:
        told.started()
    out_of_memory = False
    try:
        yield
    except BaseException as error:
        out_of_memory = is_out_of_memory(error)
        raise
    finally:
        with _lock:
            interrupted = _interrupted
            if _interrupted:
                # An interrupt sent as the cell ended must not go off in
                # marimo's own code: it is withdrawn.
                _set_async_exception(threading.get_ident(), None)
                _interrupted = False
            _running_thread = outer
        if told is not None and outer is None:
            told.ended(interrupted=interrupted, out_of_memory=out_of_memory)


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
