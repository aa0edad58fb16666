"""Small helpers shared by the tests, with no server behind them (what talks
to live servers is in tests/live.py, fixtures are in tests/conftest.py)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from django.conf import settings
from django.test import override_settings

from django_notebooks.kernels import wire

T = TypeVar("T")

# The origin of Django's test clients and of Channels' communicators in the
# tests (their host is "testserver").
ORIGIN = "http://testserver"


def new_session_id() -> str:
    """A session id shaped like the ones marimo's frontend makes."""
    alphabet = "0123456789abcdefghijklmnopqrstuvwxyz"
    return "s_" + "".join(secrets.choice(alphabet) for _ in range(6))


def notebooks_with(**options: Any) -> override_settings:
    """The test settings' ``DJANGO_NOTEBOOKS`` with ``options`` changed (a
    decorator or a context manager, as ``override_settings``)."""
    return override_settings(DJANGO_NOTEBOOKS={**settings.DJANGO_NOTEBOOKS, **options})


def _failure(message: str | Callable[[], str], last: Any, timeout: float) -> str:
    said = message() if callable(message) else message
    return f"{said} (still not so after {timeout}s; last value {last!r})"


def wait_until(
    predicate: Callable[[], T],
    timeout: float = 10,
    message: str | Callable[[], str] = "the condition did not hold",
    interval: float = 0.05,
) -> T:
    """Call ``predicate`` until it returns something true, and return that;
    at ``timeout`` seconds fail with ``message`` (a string, or a callable for
    one computed then)."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() >= deadline:
            raise AssertionError(_failure(message, value, timeout))
        time.sleep(interval)
    return value


async def async_wait_until(
    predicate: Callable[[], T | Awaitable[T]],
    timeout: float = 10,
    message: str | Callable[[], str] = "the condition did not hold",
    interval: float = 0.05,
) -> T:
    """:func:`wait_until` for a coroutine: the event loop runs meanwhile
    (``predicate`` may be a coroutine function)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(_failure(message, value, timeout))
        await asyncio.sleep(interval)


async def logged_in_client(username: str, *, groups: tuple[str, ...] = ()) -> Any:
    """A Django ``AsyncClient`` logged in as a new user ``username`` (a
    member of ``groups``), who is ``client.user``."""
    from django.contrib.auth.models import Group, User
    from django.test import AsyncClient

    from tests.compat import force_login

    user = await User.objects.acreate(username=username, first_name=username.title())
    for name in groups:
        group, _ = await Group.objects.aget_or_create(name=name)
        await user.groups.aadd(group)
    client = AsyncClient()
    await force_login(client, user)
    client.user = user
    return client


# In-process kernel websockets (Channels' WebsocketCommunicator)

FIRST_RUN_TIMEOUT = 60  # seconds: a fresh kernel starts and runs the notebook


def websocket_application() -> Any:
    """The kernel websocket's routes behind the session cookie and
    ``AuthMiddlewareStack``. No ``AllowedHostsOriginValidator``, on purpose:
    the consumer must refuse other sites by itself, for projects that forgot
    the validator (a test adds it where it wants it)."""
    from channels.auth import AuthMiddlewareStack
    from channels.routing import URLRouter

    import django_notebooks.routing

    return AuthMiddlewareStack(
        URLRouter(django_notebooks.routing.websocket_urlpatterns)
    )


async def login(username: str, *, groups: tuple[str, ...] = ()) -> str:
    """Create ``username`` (a member of ``groups``) and a Django login for
    it; the session cookie's value."""
    from asgiref.sync import sync_to_async
    from django.contrib.auth.models import Group, User
    from django.test import Client

    def create() -> str:
        user = User.objects.create_user(
            username, password=None, first_name=username.title()
        )
        for name in groups:
            user.groups.add(Group.objects.get_or_create(name=name)[0])
        client = Client()
        client.force_login(user)
        return client.cookies["sessionid"].value

    return await sync_to_async(create)()


def communicator(
    path: str,
    *,
    sessionid: str | None = None,
    origin: str | None = ORIGIN,
    app: Any = None,
) -> Any:
    """A ``WebsocketCommunicator`` for ``path`` on ``app`` (by default
    :func:`websocket_application`), with this login's cookie and origin."""
    from channels.testing import WebsocketCommunicator

    headers = [(b"host", b"testserver")]
    if origin is not None:
        headers.append((b"origin", origin.encode()))
    if sessionid is not None:
        headers.append((b"cookie", f"sessionid={sessionid}".encode()))
    return WebsocketCommunicator(app or websocket_application(), path, headers=headers)


async def frames_until_completed(ws: Any) -> list[dict]:
    """Frames up to and including the next ``completed-run``."""
    frames = []
    while True:
        frame = json.loads(await ws.receive_from(timeout=FIRST_RUN_TIMEOUT))
        frames.append(frame)
        if frame["op"] == "completed-run":
            return frames


async def connected_and_run(ws: Any) -> list[dict]:
    """Connect; assert the handshake is accepted; the frames of the first run."""
    connected, _ = await ws.connect(timeout=FIRST_RUN_TIMEOUT)
    assert connected, "the websocket was refused"
    return await frames_until_completed(ws)


@contextlib.asynccontextmanager
async def running(*sockets: Any) -> AsyncIterator[list[list[dict]]]:
    """Connect each of ``sockets`` and let its first run finish (the frames
    of each); disconnect them all after."""
    try:
        yield [await connected_and_run(ws) for ws in sockets]
    finally:
        for ws in sockets:
            await ws.disconnect()


async def first_run(path: str, sessionid: str, **options: Any) -> list[dict]:
    """Open the kernel websocket at ``path`` with this login (``options`` as
    for :func:`communicator`), and close it after the first run; its frames."""
    ws = communicator(path, sessionid=sessionid, **options)
    try:
        return await connected_and_run(ws)
    finally:
        await ws.disconnect()


def outputs(frames: list[dict]) -> str:
    """The text of the cell outputs in ``frames``."""
    texts = []
    for frame in frames:
        output = (frame.get("data") or {}).get("output") or {}
        if isinstance(output.get("data"), str):
            texts.append(output["data"])
    return " ".join(texts)


def printed(frames: list[dict], tag: str) -> dict:
    """The JSON a notebook printed after ``tag`` (WHOAMI, QUERY)."""
    text = outputs(frames).replace("&quot;", '"')
    return json.loads(text.split(f"{tag} ", 1)[1].split("</")[0])


#: A kernel host's fork request, as a web process makes one.
START_FORK = wire.Fork(
    id=1,
    notebook="/n.py",
    slug="n",
    session_id="s-1",
    user="alice",
    options={},
    memory_mb=None,
    cell_timeout=None,
    unresponsive_after=10.0,
    session_ttl=5,
    log_output=True,
)
