"""What the bridge tells the person on a notebook's page, in plain words.

When the bridge ends a session (an administrator terminated it, the user's
access ended, it sat idle) or refuses to open one (the server is busy, the
query is invalid), the page must say why. marimo's run-mode page has no place
for such words: its ``alert`` is a toast gone in 5 seconds, its banners show
only in the editor, and a close reason is never shown (and daphne drops close
reasons altogether), so the page would show "kernel not found" whatever
happened.

So the bridge adds a small script to the notebook's page (``notices.js``,
put in by marimo/pages.py) and sends a :class:`Notice` as a kernel-websocket
frame of its own. The script takes that frame before marimo's frontend sees
it and shows the notice at the top of the page until the person acts on it.
For a notice that ends the session it also gives marimo's frontend the close
reason (which daphne lost) that stops its reconnecting.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path

from django.utils.html import escape

from django_notebooks.marimo import routes

# The frame's "op": not one of marimo's, and the script swallows it anyway.
OP = "django-notebooks-notice"
SCRIPT_FILE = Path(__file__).parent / "static" / "django_notebooks" / "notices.js"


@dataclass(frozen=True)
class Notice:
    """Words for the page: a short title and a sentence or two of text."""

    title: str
    text: str
    #: The session is over (or never opened): the page offers a reload and
    #: marimo's frontend stops reconnecting. A notice that is not final (a
    #: cell was stopped, the session lives on) can be dismissed.
    final: bool = True
    #: The close reason marimo's frontend is given when ``final``: it
    #: decides the status marimo shows under the notice.
    reason: str = routes.REASON_SHUTDOWN
    #: What the page says once its notebook has started again on a new
    #: kernel (marimo's frontend reconnected after the server restarted).
    then: Notice | None = None

    def frame(self) -> str:
        """The kernel-websocket text frame that carries the notice."""
        # marimo's frames repeat their op inside "data": so does this one, in
        # case a frontend without the script reads it (it ignores the op).
        return json.dumps({"op": OP, "data": {"op": OP, **asdict(self)}})


@cache
def page_script() -> str:
    """The script that shows notices, as an inline ``<script>`` element.

    It carries :data:`SITE_RESTARTING` too, for a server that closes the
    page's websocket with 1012 ("service restart") without the bridge's
    notice first (see sessions/stopping.py).
    """
    restarting = escape(json.dumps(asdict(SITE_RESTARTING)))
    return f'<script data-restarting="{restarting}">{SCRIPT_FILE.read_text()}</script>'


# The words, in one place.

ADMIN_ENDED = Notice(
    "Notebook session ended",
    "An administrator ended this session. Reload the page to start it again.",
)
ACCESS_ENDED = Notice(
    "Notebook closed",
    "Your access to this notebook has ended.",
    reason=routes.REASON_UNAUTHORIZED,
)
SESSION_LOST = Notice(
    "Notebook session lost",
    "The server process running this session stopped or cannot be reached. "
    "Reload the page to start again.",
)
SERVICE_UNAVAILABLE = Notice(
    "Notebook unavailable",
    "The server cannot open notebooks right now (its message service is not "
    "answering). Reload the page in a moment.",
)
SERVER_BUSY = Notice(
    "The notebook server is busy",
    "It is running as many notebooks as it can. Try again in a few minutes.",
)
# Anonymous visitors together hold LIMITS["MAX_ANONYMOUS_SESSIONS"]. True
# on a site without accounts too: it promises no login.
VISITORS_BUSY = Notice(
    "The notebook is busy",
    "It is running as many notebooks for visitors as it can. Try again in a "
    "few minutes. If you have an account on this site, logging in may let "
    "you in now.",
)
# A snapshot's run, ended once its page is exported (nobody is watching).
SNAPSHOT_DONE = Notice(
    "Snapshot made",
    "This run made the notebook's snapshot and has ended.",
)
# A closed tab's kernel, ended when its person opened one too many (nobody
# sees it unless that tab's page reconnects).
MADE_ROOM = Notice(
    "Notebook closed",
    "This notebook was closed to make room for another one you opened. "
    "Reload the page to start it again.",
)


def admin_ended(message: str | None) -> Notice:
    """An administrator's terminate, with their own words if they gave some."""
    return Notice(ADMIN_ENDED.title, message) if message else ADMIN_ENDED


def too_many_for_user(limit: int | None) -> Notice:
    return Notice(
        "Too many open notebook sessions",
        f"You have {limit} open already: close one, then reload this page.",
    )


def too_many_for_address(limit: int | None) -> Notice:
    return Notice(
        "Too many notebook sessions from your network",
        f"{limit} notebooks are already open from your network address. Close "
        "one, or try again in a few minutes.",
    )


def idle(timeout: float) -> Notice:
    return Notice(
        "Notebook closed",
        f"This notebook was closed after {duration(timeout)} without use. "
        "Reload the page to start it again.",
    )


def invalid_query(problems: list[tuple[str | None, str]]) -> Notice:
    """The notebook's query parameters are invalid, one problem each."""
    return Notice(
        "Invalid query parameters",
        " ".join(
            f"{name}: {message}" if name else message for name, message in problems
        ),
        reason=routes.REASON_NO_SESSION,
    )


def duration(seconds: float) -> str:
    """``3600`` -> "1 hour", ``90`` -> "90 seconds": for the page's words."""
    whole = int(seconds)
    for unit, size in (("hour", 3600), ("minute", 60)):
        if whole >= size and whole % size == 0:
            count = whole // size
            return f"{count} {unit}{'s' if count != 1 else ''}"
    return f"{whole} second{'s' if whole != 1 else ''}"


# A kernel process's misbehaviour (process isolation: topics/isolation). The
# words are for a site's visitors; what happened exactly goes to the log.

OUT_OF_MEMORY = Notice(
    "Not enough memory",
    "This notebook needed more memory than it may use, so its last step "
    "failed. Try a smaller input, or reload the page to start again.",
    final=False,
)
KERNEL_OUT_OF_MEMORY = Notice(
    "Notebook stopped: not enough memory",
    "This notebook used more memory than it may, so it was closed. Reload "
    "the page to start it again.",
)
KERNEL_CRASHED = Notice(
    "Notebook stopped",
    "This notebook stopped unexpectedly. Reload the page to start it again.",
)
KERNEL_UNRESPONSIVE = Notice(
    "Notebook stopped",
    "This notebook stopped responding, so it was closed. Reload the page to "
    "start it again.",
)
NOT_ANSWERING = Notice(
    "The notebook is not responding",
    "Your last change could not be applied: the notebook did not respond in "
    "time. It may be busy; try again in a moment.",
    final=False,
)
CANNOT_START = Notice(
    "The notebook could not start",
    "The server cannot start this notebook right now. Reload the page in a "
    "moment to try again.",
)


def cell_stopping(timeout: float) -> Notice:
    """A cell ran past ``CELL_TIMEOUT``: it is being interrupted."""
    return Notice(
        "Stopping a long calculation",
        f"Part of this notebook has been running for longer than "
        f"{duration(timeout)}, and it is being stopped.",
        final=False,
    )


def cell_stopped(timeout: float) -> Notice:
    """The cell interrupted at ``CELL_TIMEOUT`` has stopped; the session lives."""
    return Notice(
        "Calculation stopped",
        f"Part of this notebook ran for longer than {duration(timeout)}, so it "
        "was stopped. The rest of the notebook still works.",
        final=False,
    )


def kernel_stopped(timeout: float) -> Notice:
    """A cell ran past ``CELL_TIMEOUT`` and did not stop when interrupted."""
    return Notice(
        "Notebook stopped",
        f"Part of this notebook ran for longer than {duration(timeout)} and "
        "could not be stopped, so the notebook was closed. Reload the page to "
        "start it again.",
    )


# A restart of the server (sessions/stopping.py): the open page's websocket
# closes, and marimo's frontend reconnects once the server is back. With
# kernels in processes the page goes on with its own kernel, as it was (the
# kernel host keeps it: kernels/forking.py) and the notice goes away; with a
# new kernel (kernels as threads, or the host ended too) it says so.

SITE_RESTARTING = Notice(
    "The site is restarting",
    "This notebook will reconnect by itself when the site is back.",
    final=False,
    then=Notice(
        "The notebook started again",
        "The site restarted and could not keep this notebook running, so it "
        "started afresh: anything you had chosen or entered in it was reset.",
        final=False,
    ),
)
