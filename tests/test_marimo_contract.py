"""What the bridge relies on in marimo, checked against the installed version.

Only ``marimo.create_asgi_app`` and ``mo.app_meta()`` are public; the session
manager on the notebook app's state, the cell executor registry and the
virtual file store are internals (see ``django_notebooks/marimo/internals.py``), and
the routes below a notebook are facts the bridge decides on one by one
(``django_notebooks/marimo/routes.py``). When marimo moves any of this, these tests
fail and name the marimo version that did.
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import marimo
import pytest

from django_notebooks.marimo import internals, orm, routes
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
    """A marimo app built as marimo/apps.py builds it, and what its middleware
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
        assert internals.session_manager(notebook_app) is manager
    except internals.MarimoInternalsChanged as error:
        pytest.fail(f"{MARIMO}: {error}", pytrace=False)


def test_the_bridge_says_loudly_when_the_internal_is_gone():
    class NotAStarletteApp:
        pass

    with pytest.raises(internals.MarimoInternalsChanged, match="session_manager"):
        internals.session_manager(NotAStarletteApp())

    class State:
        session_manager = object()

    class App:
        state = State()

    with pytest.raises(internals.MarimoInternalsChanged, match="close_all_sessions"):
        internals.session_manager(App())


async def open_kernel(
    app, scope: dict[str, Any]
) -> tuple[list[dict], asyncio.Queue, asyncio.Task]:
    """Open marimo's kernel websocket with plain ASGI messages; the frames
    up to the first completed-run (each with its text as sent, ``_text``)."""
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
        frames.append({**frame, "_text": message["text"]})
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
        runs = [routes.run_change_in(frame["_text"]) for frame in frames]
        runs = [change for change in runs if change is not None]
        contract(
            runs[:1] == [True] and runs[-1:] == [False],
            "says a run started in a compact cell-op frame (status running) and "
            f"ended with completed-run, as routes.run_change_in reads (got {runs})",
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


# The cell executor (django_notebooks/marimo/orm.py).


def test_marimo_has_the_executor_registry_and_default_executor():
    from marimo._runtime.executor import resolve_executor

    try:
        default = internals.default_cell_executor()
    except internals.MarimoInternalsChanged as error:
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
        internals.register_cell_executor(name, Probe)
        contract(
            isinstance(resolve_executor(), Probe),
            "builds cell executors with the factory registered under "
            "marimo.cell.executor",
        )
    except internals.MarimoInternalsChanged as error:
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


# marimo's routes below a notebook (django_notebooks/marimo/routes.py).

# Each route marimo has that the bridge lets through, as marimo writes it
# (relative to the notebook's page), with a sub-path that stands for it.
ALLOWED_ROUTES = {
    "": "",
    "health": "health",
    "ws": "ws",
    "public-files-sw.js": "public-files-sw.js",
    "public/{filepath:path}": "public/hello.txt",
    "@file/{filename_and_length:path}": "@file/12-3456-AbCdEfGh.csv",
    "assets/{path}": "assets/index-abc.js",
    # The catch-all serves the icons and manifest the page links.
    "{path:path}": "favicon.ico",
    "api/kernel/set_ui_element_value": "api/kernel/set_ui_element_value",
    "api/kernel/set_model_value": "api/kernel/set_model_value",
    "api/kernel/function_call": "api/kernel/function_call",
    "api/kernel/read_code": "api/kernel/read_code",
}
# Each route marimo has that the bridge answers 404 for, on purpose.
REFUSED_ROUTES = {
    # A second kernel transport: it would bypass the consumer (binding,
    # caps, records, query validation, revocation). The frontend uses ws.
    "sse",
    # Other websockets: the editor's synchronisation and terminal.
    "ws_sync",
    "terminal/ws",
    # marimo's own login form and token: Django does the auth.
    "auth/login",
    "auth/token",
    # Facts about the server: paths, sessions, versions, resources.
    "healthz",
    "api/home/workspace_files",
    "api/home/recent_files",
    "api/home/running_notebooks",
    "api/home/shutdown_session",
    "api/home/tutorial/open",
    "api/status",
    "api/status/connections",
    "api/sessions",
    "api/version",
    "api/environment",
    "api/usage",
    # Open Graph thumbnails and exports (a read-only page offers neither).
    "og/thumbnail",
    "api/export/availability",
    "api/export/html",
    "api/export/requirements/install",
    "api/export/auto_export/html",
    "api/export/script",
    "api/export/markdown",
    "api/export/ipynb",
    "api/export/auto_export/markdown",
    "api/export/auto_export/ipynb",
    "api/export/pdf",
    "api/export/update_cell_outputs",
    # The editor's kernel API (marimo refuses it in run mode anyway).
    *(
        f"api/kernel/{name}"
        for name in (
            "instantiate",
            "interrupt",
            "run",
            "status",
            "execute",
            "scratchpad/run",
            "pdb/pm",
            "pdb/breakpoints",
            "restart_session",
            "shutdown",
            "takeover",
            "save_user_config",
            "code_autocomplete",
            "delete",
            "focus_cell",
            "format",
            "set_cell_config",
            "stdin",
            "install_missing_packages",
            "rename",
            "save",
            "copy",
            "save_app_config",
        )
    ),
    # The editor's other APIs.
    *(
        f"api/files/{name}"
        for name in (
            "roots",
            "list_files",
            "file_details",
            "download",
            "create",
            "delete",
            "copy",
            "move",
            "update",
            "open",
            "search",
        )
    ),
    "api/secrets/keys",
    "api/secrets/create",
    "api/secrets/delete",
    "api/cache/clear",
    "api/cache/info",
    "api/documentation/snippets",
    "api/document/transaction",
    *(
        f"api/datasources/{name}"
        for name in (
            "discover",
            "preview_column",
            "preview_sql_table",
            "preview_sql_table_list",
            "preview_sql_schema_list",
            "preview_datasource_connection",
        )
    ),
    "api/sql/validate",
    "api/storage/list_entries",
    "api/storage/download",
    "api/ai/completion",
    "api/ai/chat",
    "api/ai/inline_completion",
    "api/ai/invoke_tool",
    "api/ai/mcp/status",
    "api/ai/mcp/refresh",
    *(
        f"api/packages/{name}"
        for name in ("add", "remove", "list", "tree", "sandbox", "manifest", "sync")
    ),
    "api/lsp/health",
    "api/lsp/restart",
}


def marimo_routes_of(app: Any) -> set[str]:
    """Every route of a notebook's Starlette app, relative to its page."""
    from starlette.routing import Mount

    found = set()

    def walk(routes: list[Any], prefix: str) -> None:
        for route in routes:
            if isinstance(route, Mount) and route.routes:
                walk(route.routes, prefix + route.path)
            elif isinstance(route, Mount):  # an app mounted whole
                found.add((prefix + route.path).lstrip("/") + "/{path}")
            else:
                found.add((prefix + route.path).lstrip("/"))

    walk(app.routes, "")
    return found


def test_every_route_marimo_has_is_decided(built):
    _app, [notebook_app] = built
    marimo_has = marimo_routes_of(notebook_app)
    undecided = marimo_has - set(ALLOWED_ROUTES) - REFUSED_ROUTES
    contract(
        not undecided,
        f"has only the routes the bridge decided on: it has new ones, "
        f"{sorted(undecided)}. Decide for each whether the run-mode frontend "
        "needs it (allow it in django_notebooks/marimo/routes.py) or not "
        "(list it in REFUSED_ROUTES here)",
    )
    gone = set(ALLOWED_ROUTES) - marimo_has
    contract(not gone, f"has the routes the bridge lets through (gone: {sorted(gone)})")
    for route, subpath in ALLOWED_ROUTES.items():
        assert routes.route_of(subpath) is not None, route
    for route in REFUSED_ROUTES:
        assert routes.route_of(route) is None, route


@pytest.mark.parametrize("name", sorted(routes.FILES))
async def test_marimo_serves_each_allowed_file(built, name):
    import httpx

    app, _ = built
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        response = await client.get(f"/{name}")
    contract(response.status_code == 200, f"serves {name} below a notebook's page")


def test_virtual_file_storage_is_set_before_any_kernel_starts():
    from marimo._runtime.virtual_file.storage import (
        InMemoryStorage,
        VirtualFileStorageManager,
    )

    manager = VirtualFileStorageManager()
    try:
        internals.set_virtual_file_storage()
    except internals.MarimoInternalsChanged as error:
        pytest.fail(f"{MARIMO}: {error}", pytrace=False)
    contract(
        isinstance(manager.storage, InMemoryStorage),
        "keeps the virtual file store at VirtualFileStorageManager().storage",
    )
    # Reading an unknown name asks that store, not the host's shared memory.
    with pytest.raises(KeyError):
        b"".join(manager.read_chunked("psm_not_ours", 4))


def test_virtual_file_urls_are_shaped_as_the_bridge_reads_them():
    from marimo._runtime.virtual_file.virtual_file import VirtualFile, random_filename

    url = VirtualFile(random_filename("csv"), b"a,b\n").url
    contract(
        url.startswith("./@file/"), f"writes virtual file URLs as ./@file/... ({url})"
    )
    names = routes.virtual_files_in(f'<a href="{url}">x</a>')
    contract(
        names == {url.removeprefix("./@file/")},
        f"names virtual files <byte length>-<name> (got {url})",
    )


# Private Python calls the bridge makes (marimo/orm.py, marimo/apps.py): they
# are not marimo's, but fail the same way when Python changes them.


def test_the_private_python_calls_the_bridge_makes_exist():
    import asyncio
    import threading

    # orm.py hides the running loop while a synchronous cell uses the ORM.
    assert callable(asyncio._get_running_loop)
    assert callable(asyncio._set_running_loop)
    # apps.py closes marimo sessions before Python joins non-daemon threads
    # (it falls back to atexit, too late for kernel threads, without it).
    assert callable(threading._register_atexit)
