"""Running a notebook without a browser: a load check and a static HTML export.

Each run is a separate ``python -m marimo export ...`` process (marimo's
public CLI), so a notebook that crashes the interpreter, leaks threads or
never finishes cannot break or hang the caller: after ``timeout`` seconds
the process and the kernel process it started are killed.

Which cells failed is read from the session snapshot marimo writes after a
run: a JSON document whose schema marimo keeps backwards compatible for
outside readers (``marimo/_schemas/session.py``). marimo writes it to
``__marimo__/session/`` beside the notebook, or below ``sys.pycache_prefix``
when that is set: each run sets ``PYTHONPYCACHEPREFIX`` to a directory of
ours, so nothing is written next to the notebooks (where ``marimo edit``
keeps its own snapshot).

A headless run has no request: ``mo.app_meta().request`` is ``None``, as
under ``python notebook.py``. It runs in a new Python process with the
caller's environment and import path, where Django is not set up.
"""

from __future__ import annotations

import ast
import hashlib
import html
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django_notebooks import conf

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]
from django_notebooks.registry import Notebook

# Error kinds marimo itself does not count as failures: mo.stop() in an
# ancestor, a cell skipped because of it, an interrupted run.
NOT_FAILURES = frozenset({"ancestor-stopped", "ancestor-prevented", "interruption"})
TRACEBACK_MIMETYPE = "application/vnd.marimo+traceback"
# marimo's `app.setup` block is a cell with this id and no function name.
SETUP_CELL = "setup"
# How much of marimo's output a HeadlessRun keeps (the end matters most).
MAX_OUTPUT_CHARS = 20_000


@dataclass(frozen=True)
class CellFailure:
    """A cell that raised, or an error that stopped the whole notebook.

    ``cell`` is the cell's function name, ``"cell 3"`` (1-based, in file
    order) for unnamed cells, or ``"notebook"`` when no cell is to blame
    (the run timed out, the file could not be loaded).
    """

    cell: str
    message: str


@dataclass(frozen=True)
class HeadlessRun:
    """The outcome of :func:`check`."""

    ok: bool
    failures: tuple[CellFailure, ...]
    # marimo's own output, then the traceback of each failing cell.
    output: str
    seconds: float


class HeadlessError(Exception):
    """A headless run produced nothing usable (timeout, marimo failed)."""

    def __init__(self, message: str, output: str = "") -> None:
        super().__init__(message)
        self.output = output


class CellsFailed(HeadlessError):
    """The export was written, but some cells failed: their errors show in
    the exported page, as in marimo's own export."""

    def __init__(self, path: Path, failures: Sequence[CellFailure], output: str):
        super().__init__(
            f"{len(failures)} cell(s) failed; {path} shows their errors.", output
        )
        self.path = path
        self.failures = tuple(failures)


@dataclass(frozen=True)
class _Process:
    returncode: int | None  # None: killed after the timeout
    output: str
    seconds: float
    failures: tuple[CellFailure, ...]
    tracebacks: str


def check(notebook: Notebook, *, timeout: float = 120) -> HeadlessRun:
    """Run every cell of ``notebook`` once, headless, and report the failures.

    Never raises for a broken notebook: a timeout or a file marimo cannot
    load is a failure of the ``"notebook"`` pseudo-cell.
    """
    if not Path(notebook.path).is_file():
        return HeadlessRun(
            ok=False,
            failures=(CellFailure("notebook", f"{notebook.path} is not a file"),),
            output="",
            seconds=0.0,
        )
    process = _run_marimo(
        ["export", "session", "--no-sandbox", "--force-overwrite"],
        notebook,
        timeout,
    )
    failures = list(process.failures)
    if process.returncode is None:
        failures.append(
            CellFailure("notebook", f"did not finish within {timeout:g} seconds")
        )
    elif process.returncode != 0 and not failures:
        failures.append(CellFailure("notebook", _error_line(process.output)))
    return HeadlessRun(
        ok=not failures,
        failures=tuple(failures),
        output=_clip(process.output + process.tracebacks),
        seconds=process.seconds,
    )


def export_html(
    notebook: Notebook,
    destination: Path,
    *,
    timeout: float = 300,
    include_code: bool | None = None,
) -> Path:
    """Run ``notebook`` headless and write its outputs as one static HTML file.

    ``include_code`` defaults to the ``include_code`` option of the
    ``MARIMO`` setting (off unless the project turned it on), so an export
    shows the code only if the served notebook does. An existing file at
    ``destination`` is replaced.

    Raises :class:`CellsFailed` (after writing the file) when cells raised,
    and :class:`HeadlessError` when no file was written.
    """
    if include_code is None:
        include_code = bool(conf.get_settings().MARIMO.get("include_code", False))
    destination = Path(destination).absolute()
    destination.parent.mkdir(parents=True, exist_ok=True)
    # So that an old file is never taken for this run's.
    destination.unlink(missing_ok=True)
    process = _run_marimo(
        [
            "export",
            "html",
            "--no-sandbox",
            "--force",
            "--include-code" if include_code else "--no-include-code",
            "--output",
            str(destination),
        ],
        notebook,
        timeout,
    )
    if process.returncode is None:
        raise HeadlessError(
            f"Exporting {notebook.slug!r} did not finish within {timeout:g} seconds.",
            process.output,
        )
    if process.failures and destination.is_file():
        raise CellsFailed(
            destination, process.failures, process.output + process.tracebacks
        )
    if process.returncode != 0 or not destination.is_file():
        raise HeadlessError(
            f"marimo could not export {notebook.slug!r}: {_error_line(process.output)}",
            process.output,
        )
    return destination


def _run_marimo(arguments: list[str], notebook: Notebook, timeout: float) -> _Process:
    # Absolute and normalised (symlinks kept), as marimo mirrors it.
    path = Path(os.path.abspath(notebook.path))
    with _snapshot_prefix(path) as prefix:
        environment = {
            **os.environ,
            # Where marimo writes its session snapshot instead of beside
            # the notebook (and Python its bytecode).
            "PYTHONPYCACHEPREFIX": str(prefix),
            # The notebook imports what the served notebook could import.
            "PYTHONPATH": os.pathsep.join(entry or os.getcwd() for entry in sys.path),
        }
        # Bytecode goes to our own cache directory, never the source tree.
        environment.pop("PYTHONDONTWRITEBYTECODE", None)
        snapshot = _snapshot_path(prefix, path)
        snapshot.unlink(missing_ok=True)  # left by an earlier run
        started = time.monotonic()
        process = subprocess.Popen(
            [sys.executable, "-m", "marimo", *arguments, str(path)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=environment,
            # Its own process group, so that the kernel process marimo starts
            # dies with it on a timeout.
            start_new_session=True,
        )
        returncode: int | None
        try:
            raw, _ = process.communicate(timeout=timeout)
            returncode = process.returncode
        except subprocess.TimeoutExpired:
            _kill_group(process)
            try:
                raw, _ = process.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                # A process the notebook started in a session of its own
                # still holds the output pipe: stop reading it.
                process.kill()
                if process.stdout is not None:
                    process.stdout.close()
                process.wait()
                raw = b""
            returncode = None
        seconds = time.monotonic() - started
        failures: tuple[CellFailure, ...] = ()
        tracebacks = ""
        if snapshot.is_file():
            failures, tracebacks = _read_snapshot(snapshot, path)
            snapshot.unlink(missing_ok=True)
    output = raw.decode("utf-8", errors="replace")
    return _Process(returncode, output, seconds, failures, tracebacks)


def _snapshot_path(prefix: Path, notebook_path: Path) -> Path:
    """Where marimo writes the session snapshot under a pycache prefix: the
    notebook's directory mirrored below it (``marimo/_utils/paths.py``)."""
    mirrored = Path(*notebook_path.parent.parts[1:])  # without the root
    return prefix / mirrored / "__marimo__" / "session" / f"{notebook_path.name}.json"


@contextmanager
def _snapshot_prefix(notebook_path: Path) -> Iterator[Path]:
    """The ``PYTHONPYCACHEPREFIX`` for one run.

    A fresh directory would make Python compile marimo on every run (about
    three times slower), so a per-user cache directory is reused, with a
    lock per notebook: two runs of one notebook would write the same
    snapshot file. Without a usable cache (no home directory, not POSIX),
    a temporary directory.
    """
    cache = _cache_directory()
    if cache is None or fcntl is None:
        with tempfile.TemporaryDirectory(prefix="django_notebooks-") as scratch:
            yield Path(scratch)
        return
    key = hashlib.sha256(str(notebook_path).encode()).hexdigest()[:32]
    with open(cache / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield cache / "prefix"
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _cache_directory() -> Path | None:
    """``~/.cache/django_notebooks/headless`` (or under ``XDG_CACHE_HOME``),
    if it can be created and only this user can write to it: Python loads
    bytecode from it."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    directory = Path(base) / "django_notebooks" / "headless"
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        status = directory.stat()
    except (OSError, RuntimeError):  # RuntimeError: no home directory
        return None
    if hasattr(os, "getuid") and (
        status.st_uid != os.getuid() or status.st_mode & 0o077
    ):
        return None
    return directory


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    if os.name == "posix":
        try:
            os.killpg(process.pid, signal.SIGKILL)
            return
        except ProcessLookupError:
            return
    process.kill()


def _read_snapshot(
    snapshot: Path, notebook_path: Path
) -> tuple[tuple[CellFailure, ...], str]:
    try:
        cells = json.loads(snapshot.read_text(encoding="utf-8"))["cells"]
    except (OSError, ValueError, KeyError, TypeError):
        return (), ""
    names = cell_names(notebook_path)
    if len(names) != len(cells):
        names = [""] * len(cells)  # cannot match them: use positions
    failures = []
    tracebacks = []
    for index, (cell, name) in enumerate(zip(cells, names, strict=True), start=1):
        errors = [
            output
            for output in cell.get("outputs", ())
            if output.get("type") == "error" and output.get("ename") not in NOT_FAILURES
        ]
        if not errors:
            continue
        label = name if name and name != "_" else f"cell {index}"
        traceback = _traceback_text(cell)
        for error in errors:
            failures.append(CellFailure(label, _describe(error, traceback)))
        if traceback:
            tracebacks.append(f"\n--- {label} ---\n{traceback}")
    return tuple(failures), "".join(tracebacks)


def _traceback_text(cell: dict[str, Any]) -> str:
    """The plain-text traceback marimo recorded for a cell (as HTML)."""
    for line in cell.get("console", ()):
        if line.get("mimetype") == TRACEBACK_MIMETYPE:
            return html.unescape(re.sub(r"<[^>]+>", "", line.get("text", ""))).strip()
    return ""


def _describe(error: dict[str, Any], traceback: str) -> str:
    """``ExceptionType: message`` for an exception, marimo's wording otherwise."""
    kind, message = error.get("ename", ""), error.get("evalue", "").strip()
    if kind == "exception" and traceback:
        # The traceback ends with "Type: first line of the message" (and the
        # message's other lines, if any).
        first_line = message.splitlines()[0] if message else ""
        for line in reversed(traceback.splitlines()):
            match = re.fullmatch(r"([A-Za-z_][\w.]*)(?:: (.*))?", line)
            if match and (match.group(2) or "") == first_line:
                return f"{match.group(1)}: {message}" if message else match.group(1)
    if kind in ("exception", ""):
        return str(message)
    return f"{kind}: {message}"


def cell_names(path: Path) -> list[str]:
    """The names of a notebook's cells in file order, as marimo orders them:
    ``"setup"`` for ``with app.setup:``, the function or class name for
    ``@app.cell``, ``@app.function`` and ``@app.class_definition`` (``"_"``
    for unnamed cells). Empty if the file does not parse."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, ValueError):
        return []
    names = []
    for node in tree.body:
        if isinstance(node, ast.With) and any(
            _is_app_attribute(item.context_expr, "setup") for item in node.items
        ):
            names.append(SETUP_CELL)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            if any(
                _is_app_attribute(decorator, "cell", "function", "class_definition")
                for decorator in node.decorator_list
            ):
                names.append(node.name)
    return names


def _is_app_attribute(node: ast.expr, *attributes: str) -> bool:
    """``app.<attribute>`` or ``app.<attribute>(...)``."""
    if isinstance(node, ast.Call):
        node = node.func
    return (
        isinstance(node, ast.Attribute)
        and node.attr in attributes
        and isinstance(node.value, ast.Name)
        and node.value.id == "app"
    )


def _error_line(output: str) -> str:
    """The line of marimo's output that says what went wrong."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    # marimo prints "error: <file>: <reason>" (or "error: invalid value ..."
    # from its CLI parser), then a summary "Error: ... failed".
    for line in lines:
        if line.startswith("error: "):
            return line.removeprefix("error: ")
    return lines[-1] if lines else "marimo exited without a message"


def _clip(text: str) -> str:
    if len(text) <= MAX_OUTPUT_CHARS:
        return text
    return "...\n" + text[-MAX_OUTPUT_CHARS:]
