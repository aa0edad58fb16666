"""Bare marimo, the baseline: exactly what marimo documents for serving a
notebook from your own ASGI server, nothing added.

    BENCH_NOTEBOOK=tests/notebooks/square.py \
        python -m uvicorn bare_marimo:app --app-dir bench --port 8000

serves the notebook at ``/square/``. ``BENCH_SESSION_TTL`` sets marimo's
``session_ttl`` (how long a session outlives its websocket) so that the
baseline and the bridge keep disconnected sessions equally long.
``BENCH_SECOND_NOTEBOOK`` mounts a second notebook at ``/hello/`` (marimo's
``with_app`` again), as the bridge's test project serves its public one
(bench/caps.py loops on it while a bystander uses ``/square/``).
"""

import os
from pathlib import Path

import marimo

NOTEBOOK = os.environ.get(
    "BENCH_NOTEBOOK",
    str(Path(__file__).resolve().parent.parent / "tests" / "notebooks" / "square.py"),
)

builder = marimo.create_asgi_app(
    quiet=True, session_ttl=int(os.environ.get("BENCH_SESSION_TTL", "120"))
).with_app(path="/square", root=NOTEBOOK)
if os.environ.get("BENCH_SECOND_NOTEBOOK"):
    builder = builder.with_app(path="/hello", root=os.environ["BENCH_SECOND_NOTEBOOK"])
app = builder.build()
