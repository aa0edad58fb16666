"""Real servers for end-to-end tests: daphne or uvicorn running the test
project on a free loopback port, with a client that speaks to notebooks the
way marimo's frontend does."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

from django_notebooks.kernels import titles
from django_notebooks.sessions import flow
from tests.helpers import new_session_id, wait_until

ROOT = Path(__file__).resolve().parent.parent
USERS = {
    # username: (password, groups, permissions)
    "alice": ("alice-pw", ["sales"], []),
    "bob": ("bob-pw", [], []),
    "carol": ("carol-pw", [], ["auth.view_user", "auth.change_user"]),
    "ops-dan": ("dan-pw", [], []),
}
SETUP_SCRIPT = """
import django
django.setup()
from django.core.management import call_command
call_command("migrate", verbosity=0)
from django.contrib.auth.models import Group, Permission, User
for username, (password, groups, perms) in {users!r}.items():
    user = User.objects.create_user(username, password=password, first_name=username.title())
    for name in groups:
        user.groups.add(Group.objects.get_or_create(name=name)[0])
    for perm in perms:
        app_label, codename = perm.split(".")
        user.user_permissions.add(
            Permission.objects.get(content_type__app_label=app_label, codename=codename)
        )
"""


@contextlib.contextmanager
def machines(count: int) -> Iterator[list[dict[str, str]]]:
    """The environments of ``count`` machines, as far as the bridge can
    tell: each with a kernel hosts' folder of its own, so that servers on
    two of them share no kernel host, and reach each other's sessions only
    through the channel layer."""
    # Short paths: a Unix socket's has a length limit.
    folders = [tempfile.mkdtemp(prefix="dn-machine-") for _ in range(count)]
    try:
        yield [{"XDG_RUNTIME_DIR": folder} for folder in folders]
    finally:
        for folder in folders:
            shutil.rmtree(folder, ignore_errors=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_listening(
    process: subprocess.Popen[bytes],
    port: int,
    name: str,
    log: Callable[[], str],
    timeout: float = 60,
) -> None:
    """Return once ``process`` takes connections on 127.0.0.1:``port``; fail
    with ``log()`` if it exits first or is not listening by ``timeout``."""

    def listening() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"{name} exited early:\n{log()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            return False

    wait_until(
        listening,
        timeout,
        lambda: f"{name} did not start listening:\n{log()}",
        interval=0.1,
    )


def stop_process(process: subprocess.Popen[bytes], sig: int, timeout: float) -> bool:
    """Send ``sig`` to ``process`` (if it still runs) and wait for it to
    exit; kill it after ``timeout`` seconds. Whether it exited by itself."""
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            return False
    return True


def end_kernel_host(pid: int, timeout: float = 10) -> None:
    """End a kernel host a test found (it outlives the servers that used
    it, and is no child of the test's): SIGTERM, SIGKILL after ``timeout``."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        if state == "Z":
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def server_env(db_path: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        DJANGO_SETTINGS_MODULE="tests.settings",
        DJANGO_NOTEBOOKS_TEST_SQLITE=str(db_path),
        PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""),
        PYTHONUNBUFFERED="1",
        **extra,
    )
    return env


def prepare_database(db_path: Path, **extra: str) -> Path:
    """Create a SQLite database with the test users, in a subprocess (or, with
    ``DJANGO_NOTEBOOKS_TEST_DB=postgres`` in ``extra``, the PostgreSQL one)."""
    subprocess.run(
        [sys.executable, "-c", SETUP_SCRIPT.format(users=USERS)],
        env=server_env(db_path, **extra),
        cwd=ROOT,
        check=True,
        timeout=120,
    )
    return db_path


def run_in_other_process(db_path: Path, env: dict[str, str], code: str) -> None:
    """Run ``code`` with Django set up on the database ``db_path``, in a
    process of its own (the auth models imported)."""
    script = (
        "import django\ndjango.setup()\nfrom django.contrib.auth.models import User, Group, Permission\n"
        + code
    )
    subprocess.run(
        [sys.executable, "-c", script],
        env=server_env(db_path, **env),
        cwd=ROOT,
        check=True,
        timeout=60,
    )


def database_of_its_own(live_db: Path, folder: Path, *, superuser: bool) -> Path:
    """A copy of the live servers' database in ``folder``, for a server that
    may leave session rows behind (killed) or needs the superuser ``root``
    (password ``root-pw``)."""
    db_path = folder / "db.sqlite3"
    db_path.write_bytes(live_db.read_bytes())
    if superuser:
        run_in_other_process(
            db_path, {}, "User.objects.create_superuser('root', password='root-pw')"
        )
    return db_path


def server_command(kind: str, port: int) -> list[str]:
    if kind == "daphne":
        return [
            sys.executable,
            "-m",
            "daphne",
            "-b",
            "127.0.0.1",
            "-p",
            str(port),
            "tests.asgi:application",
        ]
    if kind == "uvicorn":
        return [
            sys.executable,
            "-m",
            "uvicorn",
            "tests.asgi:application",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--lifespan",
            "off",
        ]
    if kind == "gunicorn":
        # WSGI (the test project's pages beside an ASGI server); no control
        # socket, whose one default path concurrent gunicorns would share.
        return [
            sys.executable,
            "-m",
            "gunicorn",
            "tests.wsgi:application",
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            "2",
            "--no-control-socket",
            # Load Django before listening, so a test's first request does
            # not wait for the workers to import it.
            "--preload",
            "--access-logfile",
            "-",
        ]
    raise ValueError(kind)


class LiveServer:
    """One server process; stopped by whoever started it. It listens on a
    free port, or on ``port`` (the port of a server stopped before, say)."""

    def __init__(
        self,
        kind: str,
        db_path: Path,
        log_path: Path,
        port: int | None = None,
        **env: str,
    ) -> None:
        self.kind = kind
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.process = subprocess.Popen(
            server_command(kind, self.port),
            env=server_env(db_path, **env),
            cwd=ROOT,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_until_listening(self.process, self.port, self.kind, self.log)
        except AssertionError:
            self.stop()
            raise

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def kernel_pids(self) -> list[int]:
        """The server's kernel processes (its kernel host's children named
        ``django-notebooks kernel ...``), those of closed tabs included."""
        return [
            pid
            for host in self.kernel_hosts()
            for pid in children_of(host)
            if process_title(pid).startswith("django-notebooks kernel ")
        ]

    def spare_pids(self, slug: str) -> list[int]:
        """The spare kernels (forked ahead, for no session yet) of the
        server's kernel host for notebook ``slug``."""
        title = titles.spare(slug)
        return [
            pid
            for host in self.kernel_hosts()
            for pid in children_of(host)
            if process_title(pid) == title
        ]

    def kernel_hosts(self) -> list[int]:
        """The kernel hosts the server started (while it runs: a host
        outlives the web process that started it)."""
        return [
            pid
            for pid in descendants_of(self.process.pid)
            if process_title(pid).startswith("django-notebooks kernel-host ")
        ]

    def stop(self, timeout: float = 15) -> float:
        """SIGTERM the server; return the seconds it took to exit."""
        started = time.monotonic()
        exited = stop_process(self.process, signal.SIGTERM, timeout)
        self._log.close()
        if not exited:
            return float("inf")
        self.returncode = self.process.returncode
        return time.monotonic() - started


def children_of(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (Linux's /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue  # it has gone
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry))
    return found


def descendants_of(pid: int) -> list[int]:
    """The processes below ``pid``: its children, theirs, and so on."""
    found, parents = [], [pid]
    while parents:
        children = [child for parent in parents for child in children_of(parent)]
        found += children
        parents = children
    return found


def process_title(pid: int) -> str:
    """A process's command line as ``ps`` shows it ("" once it has gone)."""
    try:
        command_line = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return command_line.replace(b"\0", b" ").decode(errors="replace").strip()


def redis_is_up() -> bool:
    """Whether Redis answers on 127.0.0.1:6379."""
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


# channels_redis's two layers, as DJANGO_NOTEBOOKS_TEST_CHANNEL_LAYER names
# them (tests/settings.py): multi-process tests run on each.
REDIS_LAYERS = ("redis", "redis-pubsub")


def require_redis() -> None:
    """Skip the calling test without Redis; fail it under CI, which starts
    Redis (.ci/run), so that a missing Redis cannot pass unnoticed."""
    if not redis_is_up():
        import pytest

        message = "Redis is not running on 127.0.0.1:6379 (.ci/run starts it)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


async def communicator_outputs(communicator: Any) -> list[str]:
    """Cell outputs from an in-process ``WebsocketCommunicator``, up to the
    next ``completed-run``."""
    outputs = []
    while True:
        frame = await communicator.receive_json_from(timeout=30)
        if frame["op"] == "cell-op":
            data = ((frame.get("data") or {}).get("output") or {}).get("data")
            if isinstance(data, str):
                outputs.append(data)
        if frame["op"] == "completed-run":
            return outputs


UI_ELEMENT = re.compile(r"object-id=(?:\\?['\"])([^'\"\\]+)")


@dataclass
class KernelSession:
    """A notebook session driven as marimo's frontend drives it."""

    client: NotebookClient
    page: str
    session_id: str
    websocket: Any
    outputs: list[str] = field(default_factory=list)

    async def recv(self, timeout: float = 60) -> dict[str, Any]:
        """The next frame, as marimo's frontend gets it on the page: the
        bridge's marks are acknowledged, as the page's script does, and not
        returned (the server sends only so much ahead of the acknowledged)."""
        while True:
            text = await asyncio.wait_for(self.websocket.recv(), timeout)
            mark = flow.mark_in(text)
            if mark is None:
                return json.loads(text)
            await self.websocket.send(flow.acknowledgement(mark))

    async def read_until_completed(self, timeout: float = 60) -> list[dict[str, Any]]:
        """Frames up to and including the next ``completed-run``."""
        frames = []
        while True:
            frame = await self.recv(timeout)
            frames.append(frame)
            if frame.get("op") == "cell-op":
                output = (frame.get("data") or {}).get("output") or {}
                data = output.get("data")
                if isinstance(data, str) and data:
                    self.outputs.append(data)
            if frame.get("op") == "completed-run":
                return frames

    def ui_element_ids(self) -> list[str]:
        return [m for text in self.outputs for m in UI_ELEMENT.findall(text)]

    async def set_ui_value(self, object_id: str, value: Any) -> httpx.Response:
        return await self.client.post_kernel(
            self.page,
            "set_ui_element_value",
            self.session_id,
            {"objectIds": [object_id], "values": [value]},
        )


class NotebookClient:
    """A logged-in (or anonymous) browser, minus the browser."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.http = httpx.AsyncClient(base_url=base_url, timeout=30)

    async def __aenter__(self) -> NotebookClient:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.http.aclose()

    async def login(self, username: str, password: str | None = None) -> None:
        password = password or USERS[username][0]
        await self.http.get("/accounts/login/")
        response = await self.http.post(
            "/accounts/login/",
            data={
                "username": username,
                "password": password,
                "csrfmiddlewaretoken": self.http.cookies["csrftoken"],
            },
            headers={"Referer": f"{self.base_url}/accounts/login/"},
        )
        assert response.status_code == 302, f"login failed for {username}"

    async def raw_get(self, path: str) -> int:
        """GET ``path`` exactly as written (HTTP clients normalise dots away);
        returns the status code."""
        host, port = self.base_url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        request = (
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
            f"Cookie: {self.cookie_header()}\r\nConnection: close\r\n\r\n"
        )
        writer.write(request.encode("latin-1"))
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), 30)
        writer.close()
        return int(status_line.split()[1])

    def cookie_header(self) -> str:
        return "; ".join(f"{name}={value}" for name, value in self.http.cookies.items())

    async def post_kernel(
        self,
        page: str,
        endpoint: str,
        session_id: str | None,
        body: Any,
        **headers: str,
    ) -> httpx.Response:
        sent = {"Origin": self.base_url, **headers}
        if session_id is not None:
            sent["Marimo-Session-Id"] = session_id
        return await self.http.post(
            f"{page}api/kernel/{endpoint}", json=body, headers=sent
        )

    @asynccontextmanager
    async def kernel(
        self, page: str, session_id: str | None = None, origin: str | None = None
    ):
        """Open ``<page>ws?session_id=...`` as the frontend does."""
        session_id = session_id or new_session_id()
        ws_url = (
            self.base_url.replace("http://", "ws://")
            + f"{page}ws?session_id={session_id}"
        )
        headers = {"Origin": origin or self.base_url}
        cookie = self.cookie_header()
        if cookie:
            headers["Cookie"] = cookie
        async with websockets.connect(
            ws_url, additional_headers=headers, max_size=None, open_timeout=30
        ) as websocket:
            yield KernelSession(self, page, session_id, websocket)


@asynccontextmanager
async def logged_in(base_url: str, *usernames: str):
    """One browser per username, each logged in as that user."""
    async with AsyncExitStack() as stack:
        clients = []
        for username in usernames:
            client = await stack.enter_async_context(NotebookClient(base_url))
            await client.login(username)
            clients.append(client)
        yield clients


@asynccontextmanager
async def square_session(base_url: str, username: str = "alice"):
    """``username``'s browser with the square notebook open and run once:
    ``(client, kernel, slider)``, the slider's widget id."""
    async with NotebookClient(base_url) as client:
        await client.login(username)
        async with client.kernel("/notebooks/square/") as kernel:
            await kernel.read_until_completed()
            [slider] = kernel.ui_element_ids()
            yield client, kernel, slider


async def terminate_in_admin(client: NotebookClient, sessions_url: str, row: str):
    """Run the admin's "terminate" action on session row ``row``, as the
    logged-in staff ``client``; the admin's answer."""
    return await client.http.post(
        sessions_url,
        data={
            "action": "terminate_sessions",
            "_selected_action": row,
            "index": "0",
            "csrfmiddlewaretoken": client.http.cookies["csrftoken"],
        },
    )


def run_script(args: list[str], timeout: float) -> str:
    """Run a repository script (a benchmark) with this Python; its standard
    output. Over ``timeout`` it gets SIGTERM (to stop the servers it started)
    and the test fails; a non-zero exit fails it too."""
    process = subprocess.Popen(
        [sys.executable, *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGTERM)
        try:
            stdout, stderr = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            stdout, stderr = process.communicate()
        pytest.fail(f"{' '.join(args)} ran over {timeout} s:\n{stderr[-3000:]}")
    assert process.returncode == 0, f"exit {process.returncode}:\n{stderr[-3000:]}"
    return stdout


def whoami(outputs: list[str]) -> dict:
    """What the whoami notebook printed about its request."""
    for text in outputs:
        match = re.search(r"WHOAMI (\{.*\})", text.replace("&quot;", '"'))
        if match:
            return json.loads(match.group(1).split("</")[0])
    raise AssertionError(f"no WHOAMI output in {outputs!r}")


def square_output(outputs: list[str]) -> list[str]:
    return re.findall(r"square=\d+ user=[\w-]+", " ".join(outputs))
