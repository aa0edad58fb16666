"""Follow docs/tutorial.md in a temporary directory and check every claim it makes.

The tutorial shows the files in this folder with ``literalinclude``; this script
builds the project from the same files and the same commands, runs the
development server on a free loopback port, and drives the notebook the way
marimo's frontend does. Run it from the repository root, with the package and
its test extras installed (or ``PYTHONPATH`` pointing at the checkout):

    python docs/_tutorial/verify.py

It exits non-zero, saying which step failed, when the tutorial no longer works.
"""

from __future__ import annotations

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
    def __init__(self, project: Path, env: dict[str, str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tempfile.TemporaryFile()
        self.process = subprocess.Popen(
            [
                sys.executable,
                "manage.py",
                "runserver",
                "--noreload",
                f"127.0.0.1:{self.port}",
            ],
            cwd=project,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
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

    def stop(self) -> float:
        started = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(30)
        return time.monotonic() - started


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
            await until_completed(ws)
            check("7 squared is 49." in " ".join(outputs), "the dependent cell re-ran")


async def groups_step(server: Server, expect_status: int) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        await log_in_without_check(client)
        response = await client.get("/notebooks/hello/")
        check(
            response.status_code == expect_status,
            f"with groups=['analysts'] the page answers {expect_status}",
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


def main() -> None:
    env = dict(os.environ)
    env.pop("DJANGO_SETTINGS_MODULE", None)
    env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(ROOT), env.get("PYTHONPATH", "")])
    )
    django_admin = shutil.which("django-admin") or None
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        if django_admin:
            run(django_admin, "startproject", "mysite", cwd=workdir, env=env)
        else:
            run(
                sys.executable,
                "-m",
                "django",
                "startproject",
                "mysite",
                cwd=workdir,
                env=env,
            )
        project = workdir / "mysite"
        edit_settings(project / "mysite" / "settings.py")
        for relative in (
            "mysite/urls.py",
            "mysite/asgi.py",
            "templates/registration/login.html",
            "notebooks/hello.py",
        ):
            target = project / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(HERE / "mysite" / relative, target)

        run(sys.executable, "manage.py", "migrate", cwd=project, env=env)
        run(
            sys.executable,
            "manage.py",
            "shell",
            "-c",
            CREATE_USER,
            cwd=project,
            env=env,
        )
        output = run(sys.executable, "manage.py", "check", cwd=project, env=env)
        check(
            "System check identified no issues" in output,
            "manage.py check reports no issues",
        )

        server = Server(project, env)
        try:
            asyncio.run(drive_notebook(server))
        finally:
            seconds = server.stop()
        check(seconds < 10, f"the server stopped {seconds:.1f}s after SIGTERM")

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
        server = Server(project, env)
        try:
            asyncio.run(groups_step(server, 403))
            run(
                sys.executable,
                "manage.py",
                "shell",
                "-c",
                ADD_TO_GROUP,
                cwd=project,
                env=env,
            )
            asyncio.run(groups_step(server, 200))
        finally:
            server.stop()
    print("The tutorial works.")


if __name__ == "__main__":
    main()
