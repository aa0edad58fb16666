"""marimo's routes below a notebook's page, and the few the bridge lets through.

marimo answers about a hundred routes below every notebook it serves: its
page and frontend files, the kernel calls a read-only app makes, and also the
editor's APIs (refused in run mode, but a refusal is still a door), a second
kernel transport (``sse``, server-sent events) that would bypass the kernel
websocket's consumer and all its rules, APIs that answer facts about the
server (``api/home/workspace_files`` gives the notebook's absolute path,
``api/status/connections`` how many sessions it has) and marimo's own login
form. The run-mode frontend needs only what this module names; everything
else below a notebook answers 404, whoever asks.

This is the one place that knows marimo's routes. Adding one is a decision:
``tests/test_marimo_contract.py`` lists every route marimo has and fails when
one appears that is neither allowed here nor refused on purpose there.
"""

from __future__ import annotations

import enum
import re


class Route(enum.Enum):
    """What a path below a notebook's page is, to the bridge."""

    # The notebook's page (the sub-path "").
    PAGE = "page"
    # A file: marimo's frontend files below the page, the notebook's
    # ``public/`` folder, and ``@file/`` virtual files (downloads).
    FILE = "file"
    # A POST to the kernel API, with the ``Marimo-Session-Id`` header.
    KERNEL_CALL = "kernel call"
    # The kernel websocket: only ever through the Channels consumer.
    WEBSOCKET = "websocket"


WEBSOCKET_PATH = "ws"
VIRTUAL_FILE_PREFIX = "@file/"
KERNEL_API_PREFIX = "api/kernel/"
# Query parameters marimo's frontend and server use themselves, never the
# notebook's (query.py leaves them out of a notebook's query form).
QUERY_PARAMETERS = frozenset({"session_id", "access_token", "refresh_token"})
# The header that names the session a kernel call is for.
SESSION_HEADER = "Marimo-Session-Id"
# Close reasons marimo's frontend acts on (where the server passes reasons
# on): it stops reconnecting and says the user is not authorised, that the
# kernel is not found, or that the server shut down.
REASON_UNAUTHORIZED = "MARIMO_UNAUTHORIZED"
REASON_NO_SESSION = "MARIMO_NO_SESSION"
REASON_SHUTDOWN = "MARIMO_SHUTDOWN"

# Files the run-mode page asks for below its own URL: the health check the
# frontend makes before it connects, the icons and manifest the page links,
# and the service worker that serves the notebook's public/ folder.
FILES = frozenset(
    {
        "health",
        "public-files-sw.js",
        "favicon.ico",
        "manifest.json",
        "android-chrome-192x192.png",
        "android-chrome-512x512.png",
        "apple-touch-icon.png",
        "logo.png",
    }
)
# assets/ is marimo's frontend where FRONTEND = "marimo" (otherwise the page
# loads it from the bridge's own URL); public/ holds the notebook folder's
# public files.
FILE_PREFIXES = ("assets/", "public/", VIRTUAL_FILE_PREFIX)

# The kernel calls of a read-only app: widget changes, anywidget model
# updates, function calls (tables, chat, lazy downloads) and, when the
# operator sets marimo's include_code, reading the notebook's code.
KERNEL_CALLS = frozenset(
    f"{KERNEL_API_PREFIX}{name}"
    for name in (
        "set_ui_element_value",
        "set_model_value",
        "function_call",
        "read_code",
    )
)

METHODS: dict[Route, frozenset[str]] = {
    Route.PAGE: frozenset({"GET", "HEAD"}),
    Route.FILE: frozenset({"GET", "HEAD"}),
    Route.KERNEL_CALL: frozenset({"POST"}),
    # Never over plain HTTP: the consumer answers the websocket.
    Route.WEBSOCKET: frozenset(),
}

# A virtual file's URL, as marimo writes it into outputs: ``./@file/`` then
# the byte length, a dash and a generated name (``<thread id>-<8 letters and
# digits>.<extension>``).
VIRTUAL_FILE_NAME = re.compile(r"[0-9]{1,15}-[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
_VIRTUAL_FILE_IN_TEXT = re.compile(
    re.escape(VIRTUAL_FILE_PREFIX) + "(" + VIRTUAL_FILE_NAME.pattern + ")"
)


def route_of(subpath: str) -> Route | None:
    """The route a sub-path below a notebook's page is, or ``None`` if the
    bridge does not let it reach marimo."""
    if subpath == "":
        return Route.PAGE
    if subpath == WEBSOCKET_PATH:
        return Route.WEBSOCKET
    if subpath in KERNEL_CALLS:
        return Route.KERNEL_CALL
    if subpath in FILES:
        return Route.FILE
    if subpath.startswith(VIRTUAL_FILE_PREFIX):
        name = subpath[len(VIRTUAL_FILE_PREFIX) :]
        return Route.FILE if VIRTUAL_FILE_NAME.fullmatch(name) else None
    if subpath.startswith(FILE_PREFIXES) and "\x00" not in subpath:
        return Route.FILE
    return None


def virtual_file_name(subpath: str) -> str | None:
    """The virtual file an ``@file/`` sub-path names, if it is one."""
    if not subpath.startswith(VIRTUAL_FILE_PREFIX):
        return None
    name = subpath[len(VIRTUAL_FILE_PREFIX) :]
    return name if VIRTUAL_FILE_NAME.fullmatch(name) else None


def virtual_files_in(text: str) -> set[str]:
    """The virtual files a kernel message refers to (usually none: the
    cheap test comes first, since every output passes through here)."""
    if VIRTUAL_FILE_PREFIX not in text:
        return set()
    return set(_VIRTUAL_FILE_IN_TEXT.findall(text))


# Kernel messages that say a run started or ended: marimo's frames begin with
# their op ('{"op": "cell-op", "data": {...}}'), their data is compact JSON
# (msgspec). tests/test_marimo_contract.py reads them off a real run.
_CELL_OP = '{"op": "cell-op"'
_COMPLETED_RUN = '{"op": "completed-run"'
_RUNNING = '"status":"running"'


def run_change_in(text: str) -> bool | None:
    """``True`` if a kernel message says a cell started running, ``False``
    if it says the run completed, ``None`` for any other message."""
    if text.startswith(_COMPLETED_RUN):
        return False
    if text.startswith(_CELL_OP) and _RUNNING in text:
        return True
    return None
