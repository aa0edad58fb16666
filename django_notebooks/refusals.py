"""The answers the bridge gives, below a notebook's URL, to a request it does
not hand to marimo (or that marimo's kernel cannot answer): one shape,
``{"error": message}``, with the HTTP status that says what happened.

admission.py decides which applies; the view, the fast path, the kernel
router and the process relaying a forwarded call all answer with these.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from django_notebooks.marimo import routes
from django_notebooks.marimo.forwarding import Reply


@dataclass(frozen=True)
class Refusal:
    """A request refused with this HTTP status and message."""

    status: int
    message: str

    def body(self) -> bytes:
        """The JSON answer marimo's frontend (or any API client) gets."""
        return error_body(self.message)

    def reply(self) -> Reply:
        """This refusal as a whole answer."""
        return Reply(self.status, [(b"content-type", b"application/json")], self.body())


def error_body(message: str) -> bytes:
    """``{"error": message}``: the shape of every error the bridge answers
    below a notebook's URL."""
    return json.dumps({"error": message}).encode()


CROSS_SITE = Refusal(403, "Cross-site request refused.")
NO_SESSION_HEADER = Refusal(400, f"The {routes.SESSION_HEADER} header is missing.")
NOT_YOURS = Refusal(403, "This notebook session is not yours.")
SESSION_ENDED = Refusal(410, "This notebook session has ended: reload the page.")
# A forwarded call whose channel layer failed (the session may be alive).
UNREACHABLE = Refusal(
    503, "The notebook session cannot be reached right now: try again."
)
# A call its kernel did not answer within its deadline (limits.call_deadline):
# busy with a long cell, or stuck; not taken for ended.
NOT_ANSWERING = Refusal(
    504, "The notebook is not responding right now: try again in a moment."
)
# A call marimo's app failed on before it began its answer (logged).
FAILED = Refusal(500, "The notebook failed to answer.")
TOO_LARGE = Refusal(413, "Request body too large.")
NOT_JSON = Refusal(400, "The request body is not valid JSON.")
NOT_AN_OBJECT = Refusal(400, "The request body must be a JSON object.")
NO_SUCH_FILE = Refusal(404, "No such file.")
