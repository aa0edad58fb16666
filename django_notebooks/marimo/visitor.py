"""Which notebooks read who is visiting them.

A notebook's cells learn about their visitor from marimo's API only:
``mo.app_meta()`` (the request, its user and the project's meta),
``mo.query_params()`` (the page's query) and ``mo.cli_args()``. A notebook
whose source names none of them shows every visitor the same thing on its
first run, so that run can be made before anyone asks (a spare kernel's
pre-run, ``kernels/pre_run.py``).

The reading is of the source, cautious: any mention of those names counts,
wherever it is (a cell that reads the visitor makes the cells below it
depend on the visitor too, so the whole notebook is taken to). A notebook
that cannot be parsed counts as reading the visitor. What a notebook's
imports do is not seen: a notebook that reads the visitor through a helper
module of the project needs ``"pre_run": False`` (docs/settings).
"""

from __future__ import annotations

import ast
import os
from pathlib import Path

#: marimo's functions that tell notebook code about its visitor.
VISITOR_FUNCTIONS = frozenset({"app_meta", "query_params", "cli_args"})

_read: dict[Path, tuple[tuple[int, int], tuple[str, ...]]] = {}


def visitor_reads(path: Path) -> tuple[str, ...]:
    """Where the notebook at ``path`` reads its visitor, in words ("line 12:
    mo.app_meta"); empty if it does not. Remembered until the file changes."""
    try:
        stat = os.stat(path)
    except OSError:
        return ("the notebook file cannot be read",)
    version = (stat.st_mtime_ns, stat.st_size)
    remembered = _read.get(path)
    if remembered is not None and remembered[0] == version:
        return remembered[1]
    found = _visitor_reads(path)
    _read[path] = (version, found)
    return found


def file_version(path: Path) -> str:
    """What changes when the notebook file does (its time and size)."""
    try:
        stat = os.stat(path)
    except OSError:
        return ""
    return f"{stat.st_mtime_ns}-{stat.st_size}"


def reads_the_visitor(path: Path) -> bool:
    """Whether the notebook at ``path`` may show each visitor something of
    their own."""
    return bool(visitor_reads(path))


def _visitor_reads(path: Path) -> tuple[str, ...]:
    try:
        tree = ast.parse(path.read_bytes(), filename=str(path))
    except (OSError, SyntaxError, ValueError):
        return ("the notebook file cannot be parsed",)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in VISITOR_FUNCTIONS:
            found.append(f"line {node.lineno}: {ast.unparse(node)}")
        elif isinstance(node, ast.Name) and node.id in VISITOR_FUNCTIONS:
            found.append(f"line {node.lineno}: {node.id}")
        elif (
            isinstance(node, ast.alias)
            and node.name.split(".")[-1] in VISITOR_FUNCTIONS
        ):
            found.append(f"line {node.lineno}: import of {node.name}")
        elif isinstance(node, ast.Constant) and node.value in VISITOR_FUNCTIONS:
            found.append(f"line {node.lineno}: {node.value!r}")  # getattr(mo, "...")
    return tuple(found)


def forget() -> None:
    """Forget what was read (tests)."""
    _read.clear()
