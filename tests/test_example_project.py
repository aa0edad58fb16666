"""The example project: its system checks pass, and the one command in the
README (``manage.py demo``) sets everything up and serves the notebooks."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import async_wait_until
from tests.live import (
    NotebookClient,
    free_port,
    require_redis,
    stop_process,
    wait_until_listening,
)

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_DIR = ROOT / "example_project"
NOTEBOOK_LINK = re.compile(r'href="(/notebooks/[^"]+)"')


def example_env(db_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    # pytest-django exported the test project's settings module; the example
    # must pick its own, as it does in a user's shell.
    env.pop("DJANGO_SETTINGS_MODULE", None)
    env["EXAMPLE_PROJECT_DB"] = str(db_path)
    # Its notebook snapshots (MEDIA_ROOT) beside the database, never in the
    # checkout.
    env["EXAMPLE_PROJECT_MEDIA"] = str(db_path.parent / "media")
    env["PYTHONUNBUFFERED"] = "1"
    return env


@pytest.mark.parametrize(
    ("cwd", "manage_py"),
    [(ROOT, "example_project/manage.py"), (EXAMPLE_DIR, "manage.py")],
    ids=["from-repository-root", "from-example-project"],
)
def test_manage_py_check_passes(tmp_path, cwd, manage_py):
    result = subprocess.run(
        [sys.executable, manage_py, "check", "--fail-level", "WARNING"],
        cwd=cwd,
        env=example_env(tmp_path / "db.sqlite3"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


@dataclass
class Demo:
    process: subprocess.Popen[bytes]
    url: str
    log_path: Path

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 30) -> int | None:
        """Ctrl-C, as a user quits runserver; the exit code, or ``None`` if
        the server did not exit in time (it is then killed)."""
        if not stop_process(self.process, signal.SIGINT, timeout):
            return None
        return self.process.returncode


@contextmanager
def serving(
    argv: list[str], cwd: Path, env: dict[str, str], log_path: Path
) -> Iterator[Demo]:
    """A server of the example started with ``argv`` (given the port),
    stopped when done."""
    port = free_port()
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, *argv, str(port)],
            cwd=cwd,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    server = Demo(process, f"http://127.0.0.1:{port}", log_path)
    try:
        wait_until_listening(process, port, " ".join(argv), server.output, 90)
        yield server
    finally:
        server.stop()


def running_demo(db_path: Path, log_path: Path) -> Any:
    """``manage.py demo`` on a free loopback port, from the repository root."""
    # --noreload: runserver's autoreloader would serve from a child process
    # that this test did not start.
    argv = ["example_project/manage.py", "demo", "--noreload", "--port"]
    return serving(argv, ROOT, example_env(db_path), log_path)


async def notebook_links(client: NotebookClient) -> list[str]:
    response = await client.http.get("/notebooks/")
    assert response.status_code == 200
    return NOTEBOOK_LINK.findall(response.text)


@pytest.mark.e2e
async def test_demo_command_serves_the_example(tmp_path):
    db_path = tmp_path / "db.sqlite3"

    with running_demo(db_path, tmp_path / "first.log") as demo:
        output = demo.output()
        assert f"{demo.url}/" in output
        for name in ("alice", "bob", "admin"):
            assert re.search(rf"\b{name} +/ +{name}\b", output), output
        assert demo.stop() == 0, f"Ctrl-C did not stop the server:\n{demo.output()}"

    # A second run on the same database works: set-up is idempotent.
    with running_demo(db_path, tmp_path / "second.log") as demo:
        async with NotebookClient(demo.url) as anonymous:
            home = await anonymous.http.get("/")
            assert home.status_code == 200
            assert 'href="/notebooks/"' in home.text
            assert await notebook_links(anonymous) == [
                "/notebooks/savings/",
                "/notebooks/team/",
            ]
            public = await anonymous.http.get("/notebooks/savings/")
            assert public.status_code == 200
            assert "<marimo-filename" in public.text
            private = await anonymous.http.get("/notebooks/whoami/")
            assert private.status_code == 302
            assert private.headers["location"].startswith("/accounts/login/")
            # The page with embedded notebooks, and the script that sizes them.
            assert 'href="/embed/"' in home.text
            embed = await anonymous.http.get("/embed/")
            assert embed.status_code == 200
            assert '<iframe class="dn-embed" src="/notebooks/savings/"' in embed.text
            assert 'href="/accounts/login/?next=/embed/"' in embed.text
            assert "/notebooks/sales/" not in embed.text
            script = await anonymous.http.get("/static/django_notebooks/embed.js")
            assert script.status_code == 200
            assert "data-notebook-autosize" in script.text
            # The static notebook, embedded in the home page: its page is its
            # snapshot, made in the background once a notebook page is served.
            assert '<iframe class="dn-embed" src="/notebooks/team/"' in home.text

            async def team_page() -> Any:
                page = await anonymous.http.get("/notebooks/team/")
                assert page.status_code in (200, 503), page.status_code
                return page if page.status_code == 200 else None

            team = await async_wait_until(
                team_page,
                timeout=60,
                interval=0.5,
                message=lambda: f"no snapshot of 'team':\n{demo.output()}",
            )
            assert "Snapshot of <time" in team.text
            assert team.headers["cache-control"] == "public, max-age=300"
            assert "set-cookie" not in team.headers

        async with NotebookClient(demo.url) as alice:
            await alice.login("alice", "alice")
            links = await notebook_links(alice)
            assert "/notebooks/sales/" in links
            assert "/notebooks/lab/primes/" in links
            assert (await alice.http.get("/notebooks/sales/")).status_code == 200
            # The orders notebook's URL parameters go through demo.forms.
            orders = "/notebooks/orders/"
            valid = await alice.http.get(f"{orders}?region=North&since=2025-02-01")
            assert valid.status_code == 200
            invalid = await alice.http.get(f"{orders}?since=2025-02-30")
            assert invalid.status_code == 400
            assert "<code>since</code>: Enter a valid date." in invalid.text
            embed = (await alice.http.get("/embed/")).text
            assert 'src="/notebooks/sales/?region=North"' in embed
            # The kernel websocket runs through the example's asgi.py, and
            # the notebook sees the Django user and the REQUEST_META hook.
            async with alice.kernel("/notebooks/whoami/") as kernel:
                await kernel.read_until_completed()
            seen = "\n".join(kernel.outputs)
            assert "Hello, alice!" in seen
            assert "Example Project" in seen
            # A cell that reads alice's groups with the synchronous ORM.
            assert "From the database" in seen
            assert "your groups are sales," in seen
            # Its kernel runs in a process of its own, not in the server.
            async with alice.kernel("/notebooks/runaway/") as kernel:
                await kernel.read_until_completed()
            (kernel_pid,) = re.findall(r"pid (\d+)\)", "\n".join(kernel.outputs))
            # (its process title names the notebook)
            command = Path(f"/proc/{kernel_pid}/cmdline").read_bytes()
            assert command.startswith(b"django-notebooks kernel runaway ")

        async with NotebookClient(demo.url) as bob:
            await bob.login("bob", "bob")
            links = await notebook_links(bob)
            assert "/notebooks/whoami/" in links
            assert "/notebooks/sales/" not in links
            assert (await bob.http.get("/notebooks/sales/")).status_code == 403
            embed = (await bob.http.get("/embed/")).text
            assert "You do not have access to the notebook" in embed
            assert "/notebooks/sales/" not in embed

        # The admin lists the example's notebooks, directory ones included.
        async with NotebookClient(demo.url) as admin:
            await admin.login("admin", "admin")
            page = await admin.http.get("/admin/django_notebooks/registerednotebook/")
            assert page.status_code == 200
            for slug in ("savings", "whoami", "sales", "team", "slow", "lab/primes"):
                assert f'value="{slug}"' in page.text
            snapshots = await admin.http.get(
                "/admin/django_notebooks/notebooksnapshot/"
            )
            assert snapshots.status_code == 200
            assert ">team<" in snapshots.text

        assert demo.stop() == 0, f"Ctrl-C did not stop the server:\n{demo.output()}"


def example_under_uvicorn(db_path: Path, log_path: Path, **env: str) -> Any:
    """The example project under uvicorn, as its README's "two server
    processes" runs it (one process per call here, each on its own port)."""
    argv = ["-m", "uvicorn", "example.asgi:application", "--lifespan", "off"]
    argv += ["--host", "127.0.0.1", "--port"]
    return serving(argv, EXAMPLE_DIR, {**example_env(db_path), **env}, log_path)


@pytest.mark.e2e
async def test_two_processes_of_the_example_share_redis(tmp_path):
    require_redis()
    db_path = tmp_path / "db.sqlite3"
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput"],
        cwd=EXAMPLE_DIR,
        env=example_env(db_path),
        check=True,
        capture_output=True,
        timeout=120,
    )
    redis = {"REDIS_URL": "redis://127.0.0.1:6379/0"}
    page = "/notebooks/savings/"
    with (
        example_under_uvicorn(db_path, tmp_path / "a.log", **redis) as a,
        example_under_uvicorn(db_path, tmp_path / "b.log", **redis) as b,
    ):
        async with NotebookClient(a.url) as on_a, NotebookClient(b.url) as on_b:
            assert (await on_a.http.get(page)).status_code == 200
            on_b.http.cookies.update(on_a.http.cookies)  # one browser
            async with on_a.kernel(page) as kernel:
                await kernel.read_until_completed()
                deposit, _rate, years = kernel.ui_element_ids()
                # Widget changes sent to B reach the kernel on A.
                kernel.outputs.clear()
                response = await on_b.post_kernel(
                    page,
                    "set_ui_element_value",
                    kernel.session_id,
                    {"objectIds": [deposit, years], "values": [100, 2]},
                )
                assert response.status_code == 200, response.text
                await kernel.read_until_completed()
        seen = "\n".join(kernel.outputs)
        # Two years of 100 a month: 2,400 paid in.
        assert "After <strong>2 years</strong>" in seen, seen
        assert '<td style="text-align: right;">2,400</td>' in seen, seen
        for server in (a, b):
            assert "Traceback" not in server.output(), server.output()
