"""What the bridge relies on in marimo, checked against the installed version.

Only ``marimo.create_asgi_app`` and ``mo.app_meta()`` are public; the session
manager on the notebook app's state and the cell executor registry are
internals (see ``django_notebooks/_marimo.py``). When marimo moves any of this, these tests
fail and name the marimo version that did.
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import marimo
import pytest

from django_notebooks import _marimo, orm
from tests.settings import NOTEBOOKS_DIR

WHOAMI = NOTEBOOKS_DIR / "whoami.py"
EVENT_LOOP = NOTEBOOKS_DIR / "event_loop.py"
MARIMO = f"marimo {marimo.__version__}"
TIMEOUT = 60


def contract(condition: bool, what: str) -> None:
    if not condition:
        pytest.fail(
            f"{MARIMO} no longer {what}; django_notebooks relies on it.", pytrace=False
        )


def build(middleware: list[Any]) -> Any:
    return (
        marimo.create_asgi_app(quiet=True, session_ttl=5)
        .with_app(path="", root=str(WHOAMI), middleware=middleware)
        .build()
    )


@pytest.fixture(scope="module")
def built():
    """A marimo app built as server.py builds it, and what its middleware
    factory was given."""
    given = []

    def factory(notebook_app):
        given.append(notebook_app)
        return notebook_app

    app = build([factory])
    return app, given


def test_middleware_factory_is_called_at_build_with_the_notebook_app(built):
    _app, given = built
    contract(
        len(given) == 1,
        "calls with_app(middleware=[factory]) factories once, at build()",
    )


def test_session_manager_is_on_the_notebook_apps_state(built):
    _app, [notebook_app] = built
    state = getattr(notebook_app, "state", None)
    contract(
        state is not None,
        "passes a Starlette app (with .state) to middleware factories",
    )
    manager = getattr(state, "session_manager", None)
    contract(
        manager is not None, "keeps the session manager at app.state.session_manager"
    )
    for method in ("close_all_sessions", "close_session"):
        contract(
            callable(getattr(manager, method, None)), f"has SessionManager.{method}()"
        )
    try:
        assert _marimo.session_manager(notebook_app) is manager
    except _marimo.MarimoInternalsChanged as error:
        pytest.fail(f"{MARIMO}: {error}", pytrace=False)


def test_the_bridge_says_loudly_when_the_internal_is_gone():
    class NotAStarletteApp:
        pass

    with pytest.raises(_marimo.MarimoInternalsChanged, match="session_manager"):
        _marimo.session_manager(NotAStarletteApp())

    class State:
        session_manager = object()

    class App:
        state = State()

    with pytest.raises(_marimo.MarimoInternalsChanged, match="close_all_sessions"):
        _marimo.session_manager(App())


async def open_kernel(
    app, scope: dict[str, Any]
) -> tuple[list[dict], asyncio.Queue, asyncio.Task]:
    """Open marimo's kernel websocket with plain ASGI messages; the frames
    up to the first completed-run."""
    inbox: asyncio.Queue = asyncio.Queue()
    outbox: asyncio.Queue = asyncio.Queue()
    await inbox.put({"type": "websocket.connect"})
    task = asyncio.create_task(app(scope, inbox.get, outbox.put))
    accept = await asyncio.wait_for(outbox.get(), TIMEOUT)
    contract(
        accept["type"] == "websocket.accept",
        f"accepts the kernel websocket (got {accept})",
    )
    frames = []
    while True:
        message = await asyncio.wait_for(outbox.get(), TIMEOUT)
        contract(
            message["type"] == "websocket.send",
            f"keeps the websocket open during the run (got {message})",
        )
        frame = json.loads(message["text"])
        frames.append(frame)
        if frame.get("op") == "completed-run":
            return frames, inbox, task


def whoami(frames: list[dict]) -> dict:
    for frame in frames:
        output = (frame.get("data") or {}).get("output") or {}
        data = output.get("data")
        if isinstance(data, str) and "WHOAMI" in data:
            text = re.search(r"WHOAMI (\{.*\})", data.replace("&quot;", '"')).group(1)
            return json.loads(text.split("</")[0])
    raise AssertionError(f"no WHOAMI output in {frames!r}")


async def test_scope_user_dict_reaches_app_meta_request_unchanged(built):
    app, [notebook_app] = built
    manager = notebook_app.state.session_manager
    user = {
        "id": 42,
        "username": "alice",
        "is_authenticated": True,
        "groups": ["b", "a"],
        "extra": {"nested": [1, 2]},
        "display_name": "Alice",
    }
    meta = {"site": "contract", "tenant": 7}
    session_id = "s_contract"
    scope = {
        "type": "websocket",
        "asgi": {"version": "3.0"},
        "scheme": "ws",
        "server": ("testserver", 80),
        # The bridge mounts each notebook at its real URL: the full path,
        # with the page URL (without its slash) as root_path.
        "root_path": "/deep/prefix/whoami",
        "path": "/deep/prefix/whoami/ws",
        "query_string": f"session_id={session_id}".encode(),
        "headers": [(b"host", b"testserver"), (b"x-custom", b"1")],
        "subprotocols": [],
        "user": user,
        "meta": meta,
    }
    frames, inbox, task = await open_kernel(app, scope)
    try:
        ops = [frame["op"] for frame in frames]
        contract(
            ops[0] == "kernel-ready",
            f"starts the kernel websocket with kernel-ready (got {ops[:3]})",
        )
        seen = whoami(frames)
        contract(
            seen["user"] == user,
            "passes a scope['user'] dict unchanged to mo.app_meta().request.user "
            f"(got {seen['user']})",
        )
        contract(
            seen["meta"] == meta,
            f"passes scope['meta'] to mo.app_meta().request.meta (got {seen['meta']})",
        )
        contract(
            seen["path"] == "/deep/prefix/whoami/ws",
            f"reports the full path in request.url (got {seen['path']})",
        )
        contract(
            "x-custom" in seen["headers"], "passes request headers to the notebook"
        )
    finally:
        await inbox.put({"type": "websocket.disconnect", "code": 1000})
        await asyncio.wait_for(task, TIMEOUT)
        closed = manager.close_session(session_id)
    contract(closed is True, "returns True from close_session() for a live session")
    contract(
        manager.close_session(session_id) is False,
        "returns False from close_session() for an unknown session",
    )


# The cell executor (django_notebooks/orm.py).


def test_marimo_has_the_executor_registry_and_default_executor():
    from marimo._runtime.executor import resolve_executor

    try:
        default = _marimo.default_cell_executor()
    except _marimo.MarimoInternalsChanged as error:
        pytest.fail(f"{MARIMO}: {error}", pytrace=False)
    for method in ("execute_cell", "execute_cell_async"):
        contract(
            callable(getattr(default, method, None)),
            f"has DefaultExecutor.{method}()",
        )

    class Probe:
        name = "probe"

    # A name that sorts first: marimo uses the first registered executor.
    name = "0-django_notebooks-contract-probe"
    try:
        _marimo.register_cell_executor(name, Probe)
        contract(
            isinstance(resolve_executor(), Probe),
            "builds cell executors with the factory registered under "
            "marimo.cell.executor",
        )
    except _marimo.MarimoInternalsChanged as error:
        pytest.fail(f"{MARIMO}: {error}", pytrace=False)
    finally:
        from marimo._runtime.executor import _EXECUTOR_REGISTRY

        _EXECUTOR_REGISTRY.unregister(name)


def loop_seen(frames: list[dict]) -> dict[str, bool]:
    seen = {}
    for frame in frames:
        output = (frame.get("data") or {}).get("output") or {}
        data = output.get("data")
        if isinstance(data, str):
            for kind, value in re.findall(r"LOOP-(SYNC|ASYNC) (true|false)", data):
                seen[kind] = value == "true"
    return seen


async def test_run_mode_kernels_run_cells_through_the_registered_executor():
    orm.install()  # as the server does before its first notebook app
    managers = []

    def factory(notebook_app):
        managers.append(notebook_app.state.session_manager)
        return notebook_app

    app = (
        marimo.create_asgi_app(quiet=True, session_ttl=5)
        .with_app(path="", root=str(EVENT_LOOP), middleware=[factory])
        .build()
    )
    session_id = "s_executor"
    scope = {
        "type": "websocket",
        "asgi": {"version": "3.0"},
        "scheme": "ws",
        "server": ("testserver", 80),
        "root_path": "/event_loop",
        "path": "/event_loop/ws",
        "query_string": f"session_id={session_id}".encode(),
        "headers": [(b"host", b"testserver")],
        "subprotocols": [],
    }
    frames, inbox, task = await open_kernel(app, scope)
    try:
        seen = loop_seen(frames)
    finally:
        await inbox.put({"type": "websocket.disconnect", "code": 1000})
        await asyncio.wait_for(task, TIMEOUT)
        managers[0].close_session(session_id)
    contract(
        seen == {"SYNC": False, "ASYNC": True},
        "runs run-mode cells through the registered executor's "
        "execute_cell_async (a cell without await saw no running event loop, "
        f"one with await saw it: expected {{'SYNC': False, 'ASYNC': True}}, got {seen})",
    )
