"""A spare kernel's pre-run (``kernels/pre_run.py``), in process: the
visitor gets the run that was made before they came, and takes its session
over, without the notebook running again."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import pytest
from asgiref.testing import ApplicationCommunicator
from channels.testing import WebsocketCommunicator
from django.core.exceptions import ImproperlyConfigured

from django_notebooks import registry
from django_notebooks.kernels import forkserver, pre_run, router, wire
from django_notebooks.marimo import internals, routes, visitor
from django_notebooks.marimo.apps import notebook_apps
from tests.helpers import START_FORK, async_wait_until, frames_until_completed, outputs

NOTEBOOK = Path(__file__).parent / "notebooks" / "pre_run.py"
VISITOR = "s_visitor"
TIMEOUT = 30


@pytest.fixture
def runs(tmp_path, monkeypatch) -> Path:
    """The file the notebook counts its runs in."""
    counted = tmp_path / "runs"
    monkeypatch.setenv("DJANGO_NOTEBOOKS_TEST_RUNS", str(counted))
    return counted


def run_count(runs: Path) -> int:
    return len(runs.read_text().splitlines()) if runs.exists() else 0


@pytest.fixture
def app():
    marimo_app = notebook_apps.app_for(NOTEBOOK, {"quiet": True})
    yield marimo_app
    notebook_apps.close_all_sessions()


def has_run_to_its_end(running: pre_run.PreRun) -> bool:
    """Whether the pre-run sent its "completed-run" (or was given up)."""
    return running.given_up or any(
        routes.run_change_in(message.get("text") or "") is False
        for message in running.kept
    )


async def ran_to_its_end(running: pre_run.PreRun) -> None:
    await async_wait_until(lambda: has_run_to_its_end(running), TIMEOUT)


def new_pre_run(app: Any) -> pre_run.PreRun:
    def close_run() -> None:
        manager = notebook_apps.session_manager_for(NOTEBOOK)
        if manager is not None:
            internals.close_session(manager, pre_run.SESSION_ID)

    return pre_run.PreRun(app, close_run)


def with_request(app: Any) -> Any:
    """``app`` with the request keys the bridge gives marimo's scopes."""

    async def called(scope, receive, send):
        user = {"username": "ada", "is_authenticated": True, "display_name": "ada"}
        await app({**scope, "user": user, "meta": {}}, receive, send)

    return called


def visitor_socket(app: Any, session_id: str = VISITOR) -> WebsocketCommunicator:
    return WebsocketCommunicator(with_request(app), f"/ws?session_id={session_id}")


async def set_slider(app: Any, frames: list[dict], value: int) -> int:
    """Move the notebook's slider as the visitor's page does; the status."""
    html = outputs(frames)
    object_id = html.split("object-id='", 1)[1].split("'", 1)[0]
    body = json.dumps({"objectIds": [object_id], "values": [value]}).encode()
    call = ApplicationCommunicator(
        with_request(app),
        {
            "type": "http",
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": "/api/kernel/set_ui_element_value",
            "root_path": "",
            "query_string": b"",
            "headers": [
                (b"host", b"localhost"),
                (b"content-type", b"application/json"),
                (b"marimo-session-id", VISITOR.encode()),
            ],
        },
    )
    await call.send_input({"type": "http.request", "body": body})
    start = await call.receive_output(TIMEOUT)
    await call.receive_output(TIMEOUT)
    return int(start["status"])


async def test_the_visitor_gets_the_run_made_before_they_came(app, runs):
    running = new_pre_run(app)
    running.start()
    await ran_to_its_end(running)
    assert run_count(runs) == 1

    ws = visitor_socket(running)
    connected, _ = await ws.connect(timeout=TIMEOUT)
    assert connected
    frames = await frames_until_completed(ws)
    assert frames[0]["op"] == "kernel-ready"
    assert "cube=27" in outputs(frames)
    # The page is told nothing of a reconnection: it is new to the session.
    await asyncio.sleep(0.5)
    later = []
    while not await ws.receive_nothing(timeout=0.1):
        later.append(json.loads(await ws.receive_from()))
    assert [f["op"] for f in later if f["op"] in ("reconnected", "alert")] == []
    assert running.taken
    assert run_count(runs) == 1  # the notebook did not run again

    # The session is the visitor's: their widget moves its output.
    assert await set_slider(running, frames, 5) == 200
    moved = await frames_until_completed(ws)
    assert "cube=125" in outputs(moved)
    assert run_count(runs) == 1
    await ws.disconnect()


async def test_a_visitor_who_comes_during_the_run_watches_it_end(
    app, runs, monkeypatch
):
    monkeypatch.setenv("DJANGO_NOTEBOOKS_TEST_RUN_SECONDS", "1.5")
    running = new_pre_run(app)
    running.start()
    await asyncio.sleep(0.3)
    assert not has_run_to_its_end(running)

    ws = visitor_socket(running)
    connected, _ = await ws.connect(timeout=TIMEOUT)
    assert connected
    frames = await frames_until_completed(ws)
    assert "cube=27" in outputs(frames)
    assert [f["op"] for f in frames].count("kernel-ready") == 1
    assert run_count(runs) == 1
    assert await set_slider(running, frames, 2) == 200
    assert "cube=8" in outputs(await frames_until_completed(ws))
    await ws.disconnect()


async def test_a_page_that_comes_again_is_reconnected_as_marimo_does(app, runs):
    running = new_pre_run(app)
    running.start()
    ws = visitor_socket(running)
    assert (await ws.connect(timeout=TIMEOUT))[0]
    frames = await frames_until_completed(ws)
    await ws.disconnect()

    # The same page back (its connection was lost): marimo's reconnection,
    # to the same session; its widgets work.
    again = visitor_socket(running)
    assert (await again.connect(timeout=TIMEOUT))[0]
    assert json.loads(await again.receive_from(timeout=TIMEOUT))["op"] == "reconnected"
    assert await set_slider(running, frames, 4) == 200
    assert "cube=64" in outputs(await frames_until_completed(again))
    assert run_count(runs) == 1
    await again.disconnect()


async def test_a_run_that_shows_too_much_is_not_kept(app, runs, monkeypatch):
    monkeypatch.setattr(pre_run, "MAX_KEPT_BYTES", 1000)
    running = new_pre_run(app)
    running.start()
    await ran_to_its_end(running)
    assert running.given_up and not running.kept
    manager = notebook_apps.session_manager_for(NOTEBOOK)
    assert manager.get_session(pre_run.SESSION_ID) is None  # its memory is free

    # The visitor's session is a session like any other: it runs.
    ws = visitor_socket(running)
    assert (await ws.connect(timeout=TIMEOUT))[0]
    frames = await frames_until_completed(ws)
    assert "cube=27" in outputs(frames)
    assert manager.get_session(VISITOR) is not None
    assert manager.get_session(pre_run.SESSION_ID) is None
    await ws.disconnect()


async def test_other_sessions_calls_are_left_as_they_are(app, runs):
    running = new_pre_run(app)
    running.start()
    await ran_to_its_end(running)
    running.visitor = VISITOR
    other = visitor_socket(running, "s_other")
    assert (await other.connect(timeout=TIMEOUT))[0]
    frames = await frames_until_completed(other)
    assert "cube=27" in outputs(frames)
    assert run_count(runs) == 2  # a session of its own
    assert not running.taken
    await other.disconnect()


def test_calls_are_given_the_pre_run_session():
    ws = pre_run._with_session(
        {"type": "websocket", "query_string": b"session_id=s_1&x=&y=2"}, "p"
    )
    assert ws["query_string"] == b"session_id=p&x=&y=2"
    http = pre_run._with_session(
        {"type": "http", "headers": [(b"host", b"h"), (b"marimo-session-id", b"s_1")]},
        "p",
    )
    assert http["headers"] == [(b"host", b"h"), (b"marimo-session-id", b"p")]


# Which notebooks are run ahead: those that do not read their visitor.


@pytest.mark.parametrize(
    "source",
    [
        "user = mo.app_meta().request.user",
        "page = mo.query_params().get('page')",
        "args = mo.cli_args()",
        "from marimo import app_meta",
        "meta = getattr(mo, 'app_meta')()",
        "import marimo\nx = marimo.app_meta",
        "def (:",  # cannot be parsed: taken to read it
    ],
)
def test_a_notebook_that_reads_its_visitor_is_seen_to(tmp_path, source):
    notebook = tmp_path / "n.py"
    notebook.write_text(f"import marimo as mo\n{source}\n")
    assert visitor.reads_the_visitor(notebook)


def test_a_notebook_that_does_not_read_its_visitor_is_seen_not_to(tmp_path):
    assert not visitor.reads_the_visitor(NOTEBOOK)
    assert visitor.reads_the_visitor(NOTEBOOK.with_name("whoami.py"))
    assert visitor.visitor_reads(NOTEBOOK.with_name("whoami.py"))[0].startswith("line ")
    assert visitor.reads_the_visitor(tmp_path / "missing.py")


def test_what_is_read_follows_the_file(tmp_path):
    notebook = tmp_path / "n.py"
    notebook.write_text("import marimo as mo\nx = 1\n")
    version = visitor.file_version(notebook)
    assert not visitor.reads_the_visitor(notebook)
    notebook.write_text("import marimo as mo\nx = mo.app_meta()\n")
    assert visitor.reads_the_visitor(notebook)
    assert visitor.file_version(notebook) != version


def test_the_web_process_asks_for_a_pre_run_only_where_it_may(settings):
    settings.DJANGO_NOTEBOOKS = {
        "NOTEBOOKS": {
            "ahead": NOTEBOOK,
            "never": {"path": NOTEBOOK, "pre_run": False},
            "visitor": NOTEBOOK.with_name("whoami.py"),
        },
        "KERNEL_SPARES": 1,
    }
    found = registry.explicit_notebooks()
    ahead = visitor.file_version(NOTEBOOK)
    assert router._pre_run_version(found["ahead"], VISITOR) == ahead
    assert router._pre_run_version(found["never"], VISITOR) == ""
    assert router._pre_run_version(found["visitor"], VISITOR) == ""
    # A snapshot's run runs the notebook now, never takes a run made before.
    snapshot_run = router.SNAPSHOT_SESSION_PREFIX + "1"
    assert router._pre_run_version(found["ahead"], snapshot_run) == ""
    settings.DJANGO_NOTEBOOKS = {**settings.DJANGO_NOTEBOOKS, "KERNEL_SPARES": 0}
    found = registry.explicit_notebooks()
    # No spares: no pre-run.
    assert router._pre_run_version(found["ahead"], VISITOR) == ""


def test_pre_run_is_true_or_false(settings):
    settings.DJANGO_NOTEBOOKS = {
        "NOTEBOOKS": {"n": {"path": NOTEBOOK, "pre_run": "no"}}
    }
    with pytest.raises(
        ImproperlyConfigured, match="'pre_run' is 'no'; use True or False"
    ):
        registry.explicit_notebooks()


# The kernel host's spares of a pre-run notebook.


class StatusChannel:
    def send(self, data: bytes) -> None:
        pass


class Host(forkserver.ForkServer):
    """The host's bookkeeping of spares, without processes."""

    def __init__(self) -> None:  # no socket, no signals
        self.kernels = {}
        self.spares = {}
        self.spare_count = 1
        self.spare_max_age = 600.0
        self.by_session = {}
        self.users = {}
        self.stopped: list[forkserver.Kernel] = []
        self.told = []
        self.pids = iter(range(1, 1000))

    def _tell(self, client, message):
        self.told.append(message)

    def _start_kernel(self, fork):
        kernel = forkserver.Kernel(
            fork=fork,
            pid=next(self.pids),
            status=StatusChannel(),
            socket_path=Path("x"),
            cgroup=None,
        )
        self.kernels[kernel.pid] = kernel
        return kernel

    def _stop(self, kernel, cause, *, now):
        self.stopped.append(kernel)
        del self.kernels[kernel.pid]


def session_fork(version: str, notebook: Path = NOTEBOOK) -> wire.Fork:
    return dataclasses.replace(START_FORK, notebook=str(notebook), pre_run=version)


def test_a_spare_that_ran_an_older_notebook_ends_when_the_new_one_is_opened(
    tmp_path,
):
    notebook = tmp_path / "n.py"
    notebook.write_text(NOTEBOOK.read_text())
    host = Host()
    old_version = visitor.file_version(notebook)
    host._make_spares(session_fork(old_version, notebook=notebook))
    (old,) = [k for spares in host.spares.values() for k in spares]
    assert old.fork.pre_run == old_version and not old.fork.session_id
    # Another entry of the same file, not run ahead: the spare stays.
    host._make_spares(session_fork("", notebook=notebook))
    assert host.stopped == []

    notebook.write_text(NOTEBOOK.read_text() + "\n# edited\n")
    new_version = visitor.file_version(notebook)
    host._make_spares(session_fork(new_version, notebook=notebook))
    assert host.stopped == [old]
    assert {k.fork.pre_run for spares in host.spares.values() for k in spares} == {
        "",
        new_version,
    }


def test_an_old_spare_is_replaced_while_its_notebook_is_in_use():
    host = Host()
    in_use = host._start_kernel(session_fork(visitor.file_version(NOTEBOOK)))
    host._make_spares(in_use.fork)
    (spare,) = [k for spares in host.spares.values() for k in spares]
    host._end_old_spares(spare.started_at + 599)
    assert host.stopped == []
    host._end_old_spares(spare.started_at + 601)
    assert host.stopped == [spare]
    (replacement,) = [k for spares in host.spares.values() for k in spares]
    assert replacement is not spare
    # No session of the notebook left: an old spare just ends.
    del host.kernels[in_use.pid]
    host._end_old_spares(replacement.started_at + 601)
    assert host.stopped == [spare, replacement]
    assert [k for spares in host.spares.values() for k in spares] == []


def spares(host: Host) -> list[forkserver.Kernel]:
    return [k for waiting in host.spares.values() for k in waiting]


def test_a_sessions_next_spare_is_forked_once_its_first_run_is_done():
    host = Host()
    host._fork(None, session_fork(""))
    (kernel,) = host.kernels.values()
    assert spares(host) == []  # not while its run takes the CPU
    now = time.monotonic()
    host._cell_started(kernel, now)
    host._cell_ended(kernel, wire.CellEnded(False, False), now + 0.01)
    host._cell_started(kernel, now + 0.02)  # the run's next cell
    host._make_spares_due(now + 0.1)
    assert spares(host) == []
    host._cell_ended(kernel, wire.CellEnded(False, False), now + 0.2)
    host._make_spares_due(now + 0.2 + forkserver.SPARES_AFTER_IDLE / 2)
    assert spares(host) == []
    host._make_spares_due(now + 0.2 + forkserver.SPARES_AFTER_IDLE)
    assert len(spares(host)) == 1 and kernel.spares_due is None


def test_a_session_whose_run_does_not_end_gets_its_spare_at_the_latest():
    host = Host()
    host._fork(None, session_fork(""))
    (kernel,) = host.kernels.values()
    host._cell_started(kernel, time.monotonic())
    host._make_spares_due(kernel.spares_latest - 0.01)
    assert spares(host) == []
    host._make_spares_due(kernel.spares_latest)
    assert len(spares(host)) == 1


def test_a_spare_that_ran_ahead_is_replaced_at_once():
    host = Host()
    version = visitor.file_version(NOTEBOOK)
    host._make_spares(session_fork(version))
    (ahead,) = spares(host)
    host._fork(None, dataclasses.replace(session_fork(version), id=7))
    assert host.by_session[START_FORK.session_id] is ahead
    host._make_spares_due(time.monotonic())
    (replacement,) = spares(host)
    assert replacement is not ahead
