"""The servers a benchmark starts: bare marimo (``bench/bare_marimo.py``
under uvicorn) and the bridge (the test project, ``tests.asgi``, through
``tests/live.py``'s ``LiveServer``), each a process on a free 127.0.0.1 port.

Whoever starts servers stops them, by pid with SIGTERM, also when a run
fails or is interrupted: ``stopping()`` does it around a block, and
``stop_on_sigterm()`` turns a SIGTERM to the script into an exception, so
that the ``finally`` blocks run."""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from django_notebooks import conf
from tests import live

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = ROOT / "bench"
NOTEBOOK = ROOT / "tests" / "notebooks" / "square.py"
CPU_NOTEBOOK = ROOT / "tests" / "notebooks" / "cpu.py"
# LIMITS["MAX_SESSIONS"] of the bridge servers: above what a run opens.
BRIDGE_MAX_SESSIONS = 1000
# The bridge servers a run may start: the server, and "-thread" for kernels
# as threads (ISOLATION = "thread") instead of processes of their own.
BRIDGE_KINDS = ("uvicorn", "daphne", "uvicorn-thread", "daphne-thread")
BRIDGE_PAGE = "/notebooks/square/"  # tests/settings.py serves square.py here
CPU_PAGE = "/notebooks/cpu/"  # tests/settings.py serves tests/notebooks/cpu.py here
BARE_PAGE = "/square/"  # bench/bare_marimo.py mounts whatever notebook at /square
# More people for the concurrent runs: the bridge caps open sessions per user
# (MAX_SESSIONS_PER_USER), and many sessions at once are many people anyway.
BENCH_USER_PASSWORD = "bench-pw"
BENCH_USERS_SCRIPT = """
import django
django.setup()
from django.contrib.auth.hashers import make_password
from django.contrib.auth.models import User
password = make_password({password!r})  # hashed once, shared: creating users stays fast
User.objects.bulk_create(
    [User(username=f"bench-{{i:02d}}", password=password)
     for i in range(1, {count} + 1)]
)
"""


class BareServer(live.LiveServer):
    """bench/bare_marimo.py under uvicorn, serving ``notebook`` at /square/
    (and ``second_notebook`` at /hello/): what marimo documents, nothing more.

    ``env`` is added to this process's environment for it (the notebook's
    own variables). Stopped like the bridge's LiveServer (SIGTERM by pid),
    only started with a different command."""

    def __init__(
        self,
        log_path: Path,
        notebook: Path = NOTEBOOK,
        session_ttl: int | None = None,
        second_notebook: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.kind = "uvicorn"
        self.port = live.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self._log = log_path.open("wb")
        env = dict(
            os.environ,
            **(env or {}),
            BENCH_NOTEBOOK=str(notebook),
            PYTHONUNBUFFERED="1",
        )
        if session_ttl is not None:
            env["BENCH_SESSION_TTL"] = str(session_ttl)
        if second_notebook is not None:  # served at /hello/
            env["BENCH_SECOND_NOTEBOOK"] = str(second_notebook)
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "bare_marimo:app",
                "--app-dir",
                str(BENCH_DIR),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
            ],
            env=env,
            cwd=ROOT,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        try:
            live.wait_until_listening(self.process, self.port, "bare marimo", self.log)
        except AssertionError:
            self.stop()
            raise


def in_parallel(jobs: list[Callable[[], Any]]) -> list[BaseException]:
    """Run every job in a thread of its own and wait for all of them; the
    errors they raised (each job runs to its end whatever the others do)."""
    errors: list[BaseException] = []

    def call(job: Callable[[], Any]) -> None:
        try:
            job()
        except BaseException as error:  # handed to the caller
            errors.append(error)

    threads = [threading.Thread(target=call, args=(job,)) for job in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return errors


def stop_servers(servers: list[Any]) -> dict[str, float]:
    """SIGTERM every server (by pid, in parallel); seconds each took to exit."""
    took: dict[str, float] = {}

    def stopper(server: Any) -> Callable[[], None]:
        def stop() -> None:
            took[f"{server.kind}:{server.port}"] = server.stop()

        return stop

    for error in in_parallel([stopper(server) for server in servers]):
        print(f"stopping a server failed: {error!r}", file=sys.stderr)
    return took


def print_log_tail(who: str, name: str, server: Any) -> None:
    """The end of a server's log on stderr (after a failure)."""
    with contextlib.suppress(Exception):
        tail = server.log()[-3000:]
        if tail.strip():
            print(
                f"[{who}] --- log of {name} (port {server.port}, tail) ---\n{tail}",
                file=sys.stderr,
            )


@contextlib.contextmanager
def stopping(
    servers: Callable[[], list[tuple[str, Any]]],
    who: str,
    stop_times: dict[str, float] | None = None,
) -> Iterator[None]:
    """Stop the servers ``servers()`` names when the block ends, also when
    it fails or is interrupted; on a failure print the tail of their logs.
    ``servers`` is asked at the end, so it names whatever started meanwhile."""
    try:
        yield
    except BaseException:
        for name, server in servers():
            print_log_tail(who, name, server)
        raise
    finally:
        took = stop_servers([server for _, server in servers()])
        if stop_times is not None:
            stop_times.update(took)


def stop_on_sigterm() -> None:
    """A SIGTERM to this script raises SystemExit, so that the ``finally``
    blocks stop the servers it started."""

    def terminate(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, terminate)


def command_parser(doc: str) -> argparse.ArgumentParser:
    """A benchmark command's argument parser: its description (the first
    paragraph of ``doc``), ``--quick`` and ``--out``."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short smoke run")
    parser.add_argument("--out", type=Path, help="also write the report to this file")
    return parser


def publish(text: str, out: Path | None) -> int:
    """Print a command's report, and write it to ``out`` if given; exit 0."""
    print(text)
    if out:
        out.write_text(text)
    return 0


def command(main: Callable[[], int]) -> None:
    """Run a benchmark command's ``main`` and exit with its status; Ctrl-C
    ends it without a traceback (its ``finally`` blocks stop its servers)."""
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())


@contextlib.contextmanager
def work_directory(prefix: str, keep: bool, who: str) -> Iterator[Path]:
    """A temporary directory for the databases and server logs; removed at
    the end unless ``keep`` (then its path is printed)."""
    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield workdir
    finally:
        if keep:
            print(f"[{who}] server logs kept in {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


# --------------------------------------------------------------------------
# bench/run.py: bare marimo and one bridge server per kind, on one database


@dataclass
class Target:
    """One server under test and how a browser reaches its notebook."""

    name: str  # column title
    server: Any
    page: str
    login: bool
    # One logged-in browser per person: alice first, then bench-01, ...
    cookies: list[Any] = field(default_factory=list)  # httpx.Cookies
    db_path: Path | None = None  # the bridge's SQLite database

    @property
    def url(self) -> str:
        return self.server.url

    def rss(self) -> int:
        """Resident memory of the server process and any children, in bytes."""
        try:
            process = psutil.Process(self.server.process.pid)
            total = process.memory_info().rss
            for child in process.children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    total += child.memory_info().rss
            return total
        except psutil.Error:
            return 0

    def threads(self) -> int:
        try:
            return psutil.Process(self.server.process.pid).num_threads()
        except psutil.Error:
            return 0

    def db_connections(self) -> int | None:
        """Open file descriptors of the SQLite database file in the server
        process: one per open database connection (None: not a bridge)."""
        if self.db_path is None:
            return None
        try:
            wanted = os.path.realpath(self.db_path)
            return sum(
                1
                for f in psutil.Process(self.server.process.pid).open_files()
                if os.path.realpath(f.path) == wanted
            )
        except psutil.Error:
            return -1


def prepare_users(workdir: Path, users: int) -> Path:
    """A fresh SQLite database with the test users and ``bench-01`` ..."""
    db = live.prepare_database(workdir / "db.sqlite3")
    subprocess.run(
        [
            sys.executable,
            "-c",
            BENCH_USERS_SCRIPT.format(password=BENCH_USER_PASSWORD, count=users),
        ],
        env=live.server_env(db),
        cwd=ROOT,
        check=True,
        timeout=120,
    )
    return db


def host_folder(workdir: Path, name: str) -> Path:
    """A folder for one bridge server's kernel host (tests.live.machines)."""
    folder = workdir / f"host-{name}"
    folder.mkdir(exist_ok=True)
    return folder


def start_servers(
    kinds: list[str], workdir: Path, db: Path, session_ttl: int, tag: str = ""
) -> list[Target]:
    """Start bare marimo and the bridge servers in parallel; all or none."""
    started: dict[str, Any] = {}

    def bare() -> None:
        started["bare"] = BareServer(
            workdir / f"bare{tag}.log", NOTEBOOK, session_ttl=session_ttl
        )

    def bridge(kind: str) -> Callable[[], None]:
        server_kind, _, mode = kind.partition("-")

        def start() -> None:
            started[kind] = live.LiveServer(
                server_kind,
                db,
                workdir / f"bridge-{kind}{tag}.log",
                DJANGO_NOTEBOOKS_TEST_SESSION_TTL=str(session_ttl),
                # The burst and the churn's closed sessions (kept for their
                # TTL) go past the default cap: measure speed, not the cap.
                DJANGO_NOTEBOOKS_TEST_LIMIT_MAX_SESSIONS=str(BRIDGE_MAX_SESSIONS),
                DJANGO_NOTEBOOKS_TEST_ISOLATION=mode or "process",
                # The package's default (the test suite runs without spares).
                DJANGO_NOTEBOOKS_TEST_SPARES=os.environ.get(
                    "BENCH_KERNEL_SPARES", str(conf.KEYS["KERNEL_SPARES"].default)
                ),
                # A kernel host of its own (a machine of its own, as far as
                # the bridge can tell): its memory is this server's.
                XDG_RUNTIME_DIR=str(host_folder(workdir, kind + tag)),
            )

        return start

    errors = in_parallel([bare, *(bridge(kind) for kind in kinds)])
    if errors:
        stop_servers([*started.values()])
        raise errors[0]
    targets = [Target("bare marimo (uvicorn)", started["bare"], BARE_PAGE, login=False)]
    for kind in kinds:
        targets.append(
            Target(f"bridge {kind}", started[kind], BRIDGE_PAGE, login=True, db_path=db)
        )
    return targets


# --------------------------------------------------------------------------
# bench/workers.py: configurations of several processes over Redis


# The channel layers processes can share (DJANGO_NOTEBOOKS_TEST_CHANNEL_LAYER).
LAYERS = {
    "redis": "RedisChannelLayer",
    "redis-pubsub": "RedisPubSubChannelLayer",
}


@dataclass
class Deployment:
    """One configuration: its server processes, sharing a database and a
    Redis prefix of their own."""

    name: str
    page: str
    login: bool
    starters: list[Any] = field(default_factory=list)  # each starts one process
    servers: list[Any] = field(default_factory=list)
    prefix: str | None = None
    cookies: Any = None

    def cpu_seconds(self) -> float:
        total = 0.0
        for server in self.servers:
            with contextlib.suppress(psutil.Error):
                times = psutil.Process(server.process.pid).cpu_times()
                total += times.user + times.system
        return total


def bare_deployment(workdir: Path, notebook: Path) -> Deployment:
    """Bare marimo serving ``notebook``: one process, no login."""
    return Deployment(
        "bare marimo, 1 process",
        BARE_PAGE,
        login=False,
        starters=[lambda: BareServer(workdir / "bare.log", notebook)],
    )


def bridge_deployment(
    name: str,
    count: int,
    workdir: Path,
    db: Path,
    page: str,
    tag: str,
    layer: str = "redis",
) -> Deployment:
    """``count`` uvicorn processes of the test project on one database copy
    and one Redis prefix of channel layer ``layer`` (started by
    start_deployments)."""
    own_db = workdir / f"db-{tag}.sqlite3"
    shutil.copyfile(db, own_db)
    prefix = f"dn-bench-{uuid.uuid4().hex[:8]}-{tag}"
    env = {
        "DJANGO_NOTEBOOKS_TEST_CHANNEL_LAYER": layer,
        "DJANGO_NOTEBOOKS_TEST_REDIS_PREFIX": prefix,
        # One user opens all the sessions of a run.
        "DJANGO_NOTEBOOKS_TEST_MAX_SESSIONS": "64",
        "DJANGO_NOTEBOOKS_TEST_SESSION_TTL": "10",
    }
    starters = [
        lambda index=index: live.LiveServer(
            "uvicorn", own_db, workdir / f"{tag}-{index}.log", **env
        )
        for index in range(count)
    ]
    return Deployment(name, page, login=True, starters=starters, prefix=prefix)


def start_deployments(deployments: list[Deployment]) -> None:
    """Start every process of every deployment in parallel. Each lands in its
    deployment's ``servers`` as soon as it listens, so that whoever stops the
    servers afterwards (also after an error here) finds all that started."""

    def job(deployment: Deployment, starter: Any) -> Callable[[], None]:
        return lambda: deployment.servers.append(starter())

    errors = in_parallel(
        [job(d, starter) for d in deployments for starter in d.starters]
    )
    if errors:
        raise errors[0]


def deployment_servers(deployments: list[Deployment]) -> list[tuple[str, Any]]:
    return [(d.name, server) for d in deployments for server in d.servers]


def forget_redis_keys(prefix: str) -> None:
    """Delete this run's channel-layer keys (groups last a day otherwise)."""
    import redis

    with contextlib.suppress(Exception):
        client = redis.Redis(host="127.0.0.1", port=6379, socket_timeout=5)
        keys = list(client.scan_iter(f"{prefix}*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()
