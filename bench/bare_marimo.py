"""Bare marimo, the baseline: exactly what marimo documents for serving a
notebook from your own ASGI server, nothing added.

    BENCH_NOTEBOOK=tests/notebooks/square.py \
        python -m uvicorn bare_marimo:app --app-dir bench --port 8000

serves the notebook at ``/square/``. ``BENCH_SESSION_TTL`` sets marimo's
``session_ttl`` (how long a session outlives its websocket) so that the
baseline and the bridge keep disconnected sessions equally long.
"""

import os
from pathlib import Path

import marimo

NOTEBOOK = os.environ.get(
    "BENCH_NOTEBOOK",
    str(Path(__file__).resolve().parent.parent / "tests" / "notebooks" / "square.py"),
)

app = (
    marimo.create_asgi_app(
        quiet=True, session_ttl=int(os.environ.get("BENCH_SESSION_TTL", "120"))
    )
    .with_app(path="/square", root=NOTEBOOK)
    .build()
)
