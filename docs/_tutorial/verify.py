"""Follow docs/tutorial.md in a temporary directory and check every claim it makes.

The tutorial shows the files in this folder (tests/test_tutorial.py checks
that the page agrees with them); this script builds the project from the same
files and the same commands, runs the development server (with its
autoreloader) on a free loopback port, and drives the notebook the way
marimo's frontend does. Run it from the repository root, with the package and
its test extras installed (or ``PYTHONPATH`` pointing at the checkout):

    python docs/_tutorial/verify.py

With ``--python``, the tutorial's commands (``django-admin``, ``manage.py``)
run with that interpreter of a virtual environment where the package was
installed, as step 1 installs it, and the checkout stays off their path; this
script still drives the server from its own interpreter:

    python docs/_tutorial/verify.py --python /tmp/venv/bin/python

It exits non-zero, saying which step failed, when the tutorial no longer works.
"""

from __future__ import annotations

import argparse
import asyncio
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
from pathlib import Path

import httpx
import websockets

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
PASSWORD = "wonderland-42"
CREATE_USER = (
    "from django.contrib.auth.models import User; "
    "User.objects.create_user('alice', password='wonderland-42', first_name='Alice')"
)
ADD_TO_GROUP = (
    "from django.contrib.auth.models import Group, User; "
    "User.objects.get(username='alice').groups.add("
    "Group.objects.get_or_create(name='analysts')[0])"
)


def run(*args: str, cwd: Path, env: dict[str, str]) -> str:
    result = subprocess.run(
        args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )
    if result.returncode != 0:
        raise SystemExit(f"FAILED: {' '.join(args)}\n{result.stdout}\n{result.stderr}")
    return result.stdout + result.stderr


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def edit_settings(settings: Path) -> None:
    """The edits of step 3: INSTALLED_APPS, TEMPLATES' DIRS and the end block."""
    text = settings.read_text()
    quote = "'" if "'django.contrib.admin'" in text else '"'

    def q(name: str) -> str:
        return f"{quote}{name}{quote}"

    replacements = [
        (
            f"INSTALLED_APPS = [\n    {q('django.contrib.admin')},",
            f"INSTALLED_APPS = [\n    {q('daphne')},\n    {q('django.contrib.admin')},",
        ),
        (
            f"    {q('django.contrib.staticfiles')},\n]",
            f"    {q('django.contrib.staticfiles')},\n"
            f"    {q('channels')},\n"
            f"    {q('django_notebooks')},\n]",
        ),
        (f"{q('DIRS')}: [],", f"{q('DIRS')}: [BASE_DIR / {q('templates')}],"),
    ]
    for old, new in replacements:
        if old not in text:
            raise SystemExit(f"FAILED: settings.py from startproject has no {old!r}")
        text = text.replace(old, new)
    end = (
        (HERE / "settings_end.py").read_text().split("\n", 2)[2]
    )  # without the two comment lines
    settings.write_text(text + "\n" + end)


class Server:
    """``manage.py runserver`` as step 9 starts it: with Django's autoreloader,
    which runs the server in a child process. Both live in a process group of
    their own, so that stopping it reaches both, as CONTROL-C in a terminal
    does."""

    def __init__(self, python: str, project: Path, env: dict[str, str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tempfile.TemporaryFile()
        self.process = subprocess.Popen(
            [python, "manage.py", "runserver", f"127.0.0.1:{self.port}"],
            cwd=project,
            env={**env, "PYTHONUNBUFFERED": "1"},  # its output, as it happens
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.wait_until_listening()

    def wait_until_listening(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                if self.process.poll() is not None:
                    break
                time.sleep(0.2)
        raise SystemExit(f"FAILED: runserver did not start\n{self.output()}")

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")

    def running(self) -> bool:
        return self.process.poll() is None

    def group_alive(self) -> bool:
        try:
            os.killpg(self.process.pid, 0)
        except ProcessLookupError:
            return False
        return True

    def stop(self) -> float:
        """CONTROL-C: SIGINT to the server's process group. Seconds until
        every process of the group has exited (what is left after 30 s is
        killed, and the time says so)."""
        started = time.monotonic()
        if self.group_alive():
            os.killpg(self.process.pid, signal.SIGINT)
        deadline = started + 30
        while self.group_alive() and time.monotonic() < deadline:
            self.process.poll()  # reap the parent once it exits
            time.sleep(0.1)
        seconds = time.monotonic() - started
        if self.group_alive():
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)
        return seconds


async def log_in(client: httpx.AsyncClient) -> None:
    await client.get("/accounts/login/")
    response = await client.post(
        "/accounts/login/",
        data={
            "username": "alice",
            "password": PASSWORD,
            "csrfmiddlewaretoken": client.cookies["csrftoken"],
            "next": "/notebooks/hello/",
        },
        headers={"Referer": f"{client.base_url}/accounts/login/"},
    )
    check(
        response.status_code == 302
        and response.headers["location"] == "/notebooks/hello/",
        "logging in redirects back to the notebook",
    )


def check(condition: bool, claim: str) -> None:
    if not condition:
        raise SystemExit(f"FAILED: {claim}")
    print(f"ok: {claim}")


async def drive_notebook(server: Server) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        response = await client.get("/notebooks/hello/")
        check(
            response.status_code == 302
            and response.headers["location"]
            == "/accounts/login/?next=/notebooks/hello/",
            "an anonymous visitor is sent to the login page",
        )
        response = await client.get("/notebooks/hello/health")
        check(response.status_code == 401, "an anonymous kernel or asset call gets 401")

        await log_in(client)
        index = await client.get("/notebooks/")
        check('href="/notebooks/hello/"' in index.text, "the index lists the notebook")
        page = await client.get("/notebooks/hello/")
        check(
            page.status_code == 200 and "<marimo" in page.text,
            "the notebook page loads",
        )

        cookie = "; ".join(f"{name}={value}" for name, value in client.cookies.items())
        session_id = "s_tutor1"
        ws_url = (
            server.url.replace("http://", "ws://")
            + f"/notebooks/hello/ws?session_id={session_id}"
        )
        outputs: list[str] = []

        async def until_completed(websocket) -> None:
            while True:
                frame = json.loads(await asyncio.wait_for(websocket.recv(), 60))
                if frame.get("op") == "cell-op":
                    data = ((frame.get("data") or {}).get("output") or {}).get("data")
                    if isinstance(data, str):
                        outputs.append(data)
                if frame.get("op") == "completed-run":
                    return

        async with websockets.connect(
            ws_url, additional_headers={"Cookie": cookie, "Origin": server.url}
        ) as ws:
            await until_completed(ws)
            text = " ".join(outputs)
            check("Hello, Alice!" in text, "the notebook greets the logged-in user")
            check("3 squared is 9." in text, "the slider's cell ran")
            [slider] = re.findall(r"object-id=(?:\\?['\"])([^'\"\\]+)", text)
            response = await client.post(
                "/notebooks/hello/api/kernel/set_ui_element_value",
                json={"objectIds": [slider], "values": [7]},
                headers={"Origin": server.url, "Marimo-Session-Id": session_id},
            )
            check(response.status_code == 200, "moving the slider is accepted")
            check(
                "x-frame-options" not in response.headers,
                "FastPathMiddleware answered the widget change (Django's views "
                "would have added X-Frame-Options)",
            )
            await until_completed(ws)
            check("7 squared is 49." in " ".join(outputs), "the dependent cell re-ran")

            await check_frontend_files(client, page.text)

            # Step 3: the channel layer lets logging out close open notebooks;
            # step 6: the login page offers the logout form (a POST).
            login_page = (await client.get("/accounts/login/")).text
            check(
                'action="/accounts/logout/"' in login_page and "Log out" in login_page,
                "the login page offers a logged-in user the logout form",
            )
            response = await client.post(
                "/accounts/logout/",
                data={"csrfmiddlewaretoken": client.cookies["csrftoken"]},
            )
            check(
                response.status_code == 302
                and response.headers["location"] == "/accounts/login/",
                "logging out works and goes to LOGOUT_REDIRECT_URL",
            )
            started = time.monotonic()
            try:
                while True:
                    await asyncio.wait_for(ws.recv(), 2)
            except websockets.ConnectionClosed:
                pass
            except TimeoutError:
                raise SystemExit(
                    "FAILED: the notebook was still open 2 s after logout"
                ) from None
            check(
                time.monotonic() - started < 2,
                "logging out closed the open notebook within 2 seconds",
            )

        # Step 9: the autoreloader reads every module once a second; a marimo
        # session that ended used to crash it.
        await asyncio.sleep(3)
        index = await client.get("/notebooks/")
        check(
            server.running() and index.status_code == 200,
            "runserver keeps running after the notebook session ended",
        )


async def check_frontend_files(client: httpx.AsyncClient, page: str) -> None:
    """Step 11: marimo's frontend comes from one versioned URL, compressed
    and cached for a year."""
    scripts = re.findall(r'src="(/notebooks/_marimo/[^/"]+/assets/[^"]+\.js)"', page)
    check(bool(scripts), "the page loads marimo's frontend from /notebooks/_marimo/")
    response = await client.get(scripts[0], headers={"Accept-Encoding": "gzip"})
    check(
        response.status_code == 200
        and response.headers.get("content-encoding") == "gzip"
        and response.headers.get("cache-control")
        == "public, max-age=31536000, immutable",
        "frontend files are served compressed and cached for a year",
    )


async def groups_step(server: Server, expect_status: int) -> None:
    """Log in and load the page until it answers ``expect_status`` (the
    autoreloader restarts the server after settings.py changes)."""
    deadline = time.monotonic() + 60
    status, page, index = None, "", ""
    while time.monotonic() < deadline:
        try:
            async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
                await log_in_without_check(client)
                response = await client.get("/notebooks/hello/")
                status, page = response.status_code, response.text
                index = (await client.get("/notebooks/")).text
        except httpx.TransportError:
            status = None  # restarting
        if status == expect_status:
            break
        await asyncio.sleep(0.5)
    check(
        status == expect_status,
        f"with groups=['analysts'] the page answers {expect_status}",
    )
    if expect_status == 403:
        check(
            "<h1>Not allowed</h1>" in page
            and "You may not open this notebook." in page,
            "the refusal is the project's templates/403.html, with the reason",
        )
    listed = 'href="/notebooks/hello/"' in index
    check(
        listed is (expect_status == 200),
        f"the index {'lists' if listed else 'does not list'} the notebook",
    )


async def log_in_without_check(client: httpx.AsyncClient) -> None:
    await client.get("/accounts/login/")
    await client.post(
        "/accounts/login/",
        data={
            "username": "alice",
            "password": PASSWORD,
            "csrfmiddlewaretoken": client.cookies["csrftoken"],
        },
        headers={"Referer": f"{client.base_url}/accounts/login/"},
    )


def commands(venv_python: Path | None) -> tuple[str, list[str], dict[str, str]]:
    """The interpreter, the ``django-admin`` command and the environment the
    tutorial's commands run with."""
    env = dict(os.environ)
    env.pop("DJANGO_SETTINGS_MODULE", None)
    if venv_python is None:
        python = sys.executable
        env["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(ROOT), env.get("PYTHONPATH", "")])
        )
    else:
        # What `source .venv/bin/activate` does; nothing from this checkout.
        python = str(venv_python)
        env.pop("PYTHONPATH", None)
        env["VIRTUAL_ENV"] = str(venv_python.parent.parent)
        env["PATH"] = os.pathsep.join([str(venv_python.parent), env["PATH"]])
    # The django-admin of this interpreter's Django (PATH may hold another).
    django_admin = Path(python).parent / "django-admin"
    if django_admin.exists():
        return python, [str(django_admin)], env
    return python, [python, "-m", "django"], env


def check_installed_package(python: str, project: Path, env: dict[str, str]) -> None:
    """With ``--python``: the project runs the installed package."""
    where = run(
        python,
        "-c",
        "import django_notebooks; print(django_notebooks.__file__)",
        cwd=project,
        env=env,
    ).strip()
    check(
        "site-packages" in where and not Path(where).is_relative_to(ROOT),
        f"the project uses the installed package ({where})",
    )
    versions = run(
        python,
        "-c",
        "import sys; from importlib.metadata import version; "
        "print('Python', sys.version.split()[0], *(f'{n} {version(n)}' for n in "
        "('django-notebooks', 'django', 'channels', 'daphne', 'marimo')))",
        cwd=project,
        env=env,
    )
    print(f"versions: {versions.strip()}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--python",
        type=Path,
        help="the python of a virtual environment where django_notebooks is "
        "installed; the tutorial's commands run with it",
    )
    args = parser.parse_args(argv)
    python, django_admin, env = commands(args.python)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        run(*django_admin, "startproject", "mysite", cwd=workdir, env=env)
        project = workdir / "mysite"
        edit_settings(project / "mysite" / "settings.py")
        for relative in (
            "mysite/urls.py",
            "mysite/asgi.py",
            "templates/registration/login.html",
            # Step 12's, made before the server refuses anyone, as it says.
            "templates/403.html",
            "notebooks/hello.py",
        ):
            target = project / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(HERE / "mysite" / relative, target)

        if args.python is not None:
            check_installed_package(python, project, env)
        run(python, "manage.py", "migrate", cwd=project, env=env)
        output = run(
            python,
            "manage.py",
            "showmigrations",
            "django_notebooks",
            cwd=project,
            env=env,
        )
        check(
            "[X] 0001_initial" in output and "[ ]" not in output,
            "migrate applied django_notebooks' migrations",
        )
        run(
            python,
            "manage.py",
            "shell",
            "-c",
            CREATE_USER,
            cwd=project,
            env=env,
        )
        output = run(python, "manage.py", "check", cwd=project, env=env)
        check(
            "System check identified no issues" in output,
            "manage.py check reports no issues",
        )

        server = Server(python, project, env)
        try:
            deadline = time.monotonic() + 10
            while "Quit the server with CONTROL-C." not in server.output():
                if time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            output = server.output()
            check(
                "Starting ASGI/Daphne" in output
                and "Quit the server with CONTROL-C." in output,
                "runserver runs Daphne, with the autoreloader",
            )
            check(
                "Watching for file changes" in output,
                "the autoreloader is on (no --noreload)",
            )
            asyncio.run(drive_notebook(server))

            # Step 12: edit the settings while the server runs.
            settings = project / "mysite" / "settings.py"
            text = settings.read_text()
            old = '"hello": BASE_DIR / "notebooks" / "hello.py",'
            new = (
                '"hello": {\n'
                '            "path": BASE_DIR / "notebooks" / "hello.py",\n'
                '            "groups": ["analysts"],\n'
                "        },"
            )
            check(old in text, "the settings hold the tutorial's NOTEBOOKS entry")
            settings.write_text(text.replace(old, new))
            asyncio.run(groups_step(server, 403))
            check(
                "changed, reloading." in server.output(),
                "the autoreloader restarted the server after settings.py changed",
            )
            run(
                python,
                "manage.py",
                "shell",
                "-c",
                ADD_TO_GROUP,
                cwd=project,
                env=env,
            )
            asyncio.run(groups_step(server, 200))
        finally:
            seconds = server.stop()
        check(seconds < 10, f"the server stopped {seconds:.1f}s after CONTROL-C")
        # (Tracebacks are expected: with DEBUG, Django logs the 403 of step 12
        # with one.) These are the crashes marimo's sessions used to cause.
        crashes = ("AttributeError", "Fatal Python error", "Exception in thread")
        found = [crash for crash in crashes if crash in server.output()]
        if found:
            print(server.output()[-6000:])
        check(not found, "the server did not crash")
    print("The tutorial works.")


if __name__ == "__main__":
    main()
