"""The kernel websocket through Channels' real stack (session cookie ->
AuthMiddlewareStack -> URLRouter -> KernelConsumer -> marimo, in process)."""

from __future__ import annotations

import json

import pytest
from asgiref.sync import sync_to_async
from channels.security.websocket import AllowedHostsOriginValidator
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.contrib.auth.models import Group, User
from django.test import Client, override_settings

from django_notebooks import consumers, notices
from django_notebooks.models import NotebookSession
from django_notebooks.sessions import owners
from tests.helpers import (
    FIRST_RUN_TIMEOUT,
    async_wait_until,
    communicator,
    connected_and_run,
    first_run,
    login,
    new_session_id,
    notebooks_with,
    outputs,
    printed,
    running,
    websocket_application,
)
from tests.live import free_port
from tests.settings import NOTEBOOKS_DIR

pytestmark = pytest.mark.django_db(transaction=True)


@sync_to_async
def another_login(username: str) -> str:
    client = Client()
    client.force_login(User.objects.get(username=username))
    return client.cookies["sessionid"].value


async def refused(ws: WebsocketCommunicator) -> int:
    """Connect; assert the handshake is refused; the close code."""
    try:
        connected, code = await ws.connect(timeout=10)
    finally:
        await ws.disconnect()
    assert connected is False, "the websocket was accepted"
    return code


async def test_unknown_notebook_is_refused_before_accept():
    sessionid = await login("alice")
    for path in (
        "/notebooks/nope/ws",
        "/notebooks/lab/nope/ws",
        "/notebooks/lab/helpers/ws",
        "/notebooks/lab/escape/ws",
        "/elsewhere/square/ws",
        "/notebooks/square/assets/ws",
    ):
        code = await refused(
            communicator(f"{path}?session_id={new_session_id()}", sessionid=sessionid)
        )
        assert code == consumers.CLOSE_NOT_FOUND, path


async def test_anonymous_is_refused():
    code = await refused(
        communicator(f"/notebooks/square/ws?session_id={new_session_id()}")
    )
    assert code == consumers.CLOSE_REFUSED


async def test_missing_session_id_is_refused():
    sessionid = await login("alice")
    for path in ("/notebooks/square/ws", "/notebooks/square/ws?session_id="):
        code = await refused(communicator(path, sessionid=sessionid))
        assert code == consumers.CLOSE_BAD_REQUEST


@pytest.mark.parametrize(
    "origin", ["https://evil.example", "null", "http://testserver.evil.example"]
)
async def test_foreign_origin_is_refused_without_origin_validator(origin):
    sessionid = await login("alice")
    path = f"/notebooks/square/ws?session_id={new_session_id()}"
    code = await refused(communicator(path, sessionid=sessionid, origin=origin))
    assert code == consumers.CLOSE_REFUSED


@override_settings(CSRF_TRUSTED_ORIGINS=["https://*.trusted.example"])
async def test_trusted_origin_passes_the_origin_check():
    # Refused only for the missing session id: the origin check was passed.
    sessionid = await login("alice")
    ws = communicator(
        "/notebooks/square/ws",
        sessionid=sessionid,
        origin="https://app.trusted.example",
    )
    assert await refused(ws) == consumers.CLOSE_BAD_REQUEST


async def test_forbidden_user_is_refused():
    sessionid = await login("bob")
    path = f"/notebooks/sales/ws?session_id={new_session_id()}"
    assert (
        await refused(communicator(path, sessionid=sessionid))
        == consumers.CLOSE_REFUSED
    )


async def test_allowed_user_runs_the_notebook(close_marimo_sessions):
    sessionid = await login("alice", groups=("sales",))
    frames = await first_run(
        f"/notebooks/whoami/ws?session_id={new_session_id()}", sessionid
    )
    ops = [frame["op"] for frame in frames]
    assert ops[0] == "kernel-ready"
    assert ops[-1] == "completed-run"
    seen = printed(frames, "WHOAMI")
    assert seen["user"]["username"] == "alice"
    assert seen["user"]["groups"] == ["sales"]
    assert seen["user"]["is_authenticated"] is True
    assert seen["meta"] == {"site": "tests"}
    assert seen["cookies"] == []
    assert "cookie" not in seen["headers"]
    assert seen["path"] == "/notebooks/whoami/ws"


async def test_allowed_user_through_the_projects_full_stack(close_marimo_sessions):
    sessionid = await login("alice")
    full_stack = AllowedHostsOriginValidator(websocket_application())
    frames = await first_run(
        f"/notebooks/lab/demo/ws?session_id={new_session_id()}",
        sessionid,
        app=full_stack,
    )
    assert "lab demo notebook" in outputs(frames)


async def test_session_id_owned_by_someone_else_is_refused(close_marimo_sessions):
    alice = await login("alice")
    bob = await login("bob")
    alice_elsewhere = await another_login("alice")
    session_id = new_session_id()
    path = f"/notebooks/square/ws?session_id={session_id}"
    owner = communicator(path, sessionid=alice)
    try:
        await connected_and_run(owner)
        assert (
            await refused(communicator(path, sessionid=bob)) == consumers.CLOSE_REFUSED
        )
        # The same user from another login (another browser) does not own it either.
        assert (
            await refused(communicator(path, sessionid=alice_elsewhere))
            == consumers.CLOSE_REFUSED
        )
        # Nor may alice reuse the id for another notebook.
        other = f"/notebooks/whoami/ws?session_id={session_id}"
        assert (
            await refused(communicator(other, sessionid=alice))
            == consumers.CLOSE_REFUSED
        )
    finally:
        await owner.disconnect()


async def test_session_binding_is_recorded_for_the_opener(close_marimo_sessions):
    sessionid = await login("alice")
    session_id = new_session_id()
    await first_run(f"/notebooks/square/ws?session_id={session_id}", sessionid)
    # Kernel calls from this login find the session, with the user the
    # notebook saw; another login does not.
    binding = owners.bindings.get_for_login(
        session_id, notebook="square", session_key=sessionid, visitor=None
    )
    assert binding is not None
    assert binding.user_context["username"] == "alice"
    other = await another_login("alice")
    assert (
        owners.bindings.get_for_login(
            session_id, notebook="square", session_key=other, visitor=None
        )
        is None
    )


@override_settings(ROOT_URLCONF="tests.urls_prefix")
async def test_websocket_follows_a_different_include_prefix(close_marimo_sessions):
    sessionid = await login("alice")
    session_id = new_session_id()
    assert (
        await refused(
            communicator(
                f"/notebooks/square/ws?session_id={session_id}", sessionid=sessionid
            )
        )
        == consumers.CLOSE_NOT_FOUND
    )
    frames = await first_run(
        f"/deep/under/here/square/ws?session_id={session_id}", sessionid
    )
    assert "square=9 user=alice" in outputs(frames)


async def messages_until_close(ws: WebsocketCommunicator) -> tuple[list[dict], dict]:
    """Frames sent before the server closed the socket, and the close."""
    frames = []
    while True:
        message = await ws.receive_output(timeout=10)
        if message["type"] == "websocket.close":
            return frames, message
        frames.append(json.loads(message["text"]))


@override_settings(
    DJANGO_NOTEBOOKS={**settings.DJANGO_NOTEBOOKS, "MAX_SESSIONS_PER_USER": 1}
)
async def test_sessions_per_user_are_capped_with_a_reason_the_page_shows(
    close_marimo_sessions,
):
    sessionid = await login("alice")
    other_login = await another_login("alice")
    first = communicator(
        f"/notebooks/lab/demo/ws?session_id={new_session_id()}", sessionid=sessionid
    )
    try:
        await connected_and_run(first)
        # Also from another browser: the cap is per user, not per login.
        for cookie in (sessionid, other_login):
            extra = communicator(
                f"/notebooks/square/ws?session_id={new_session_id()}", sessionid=cookie
            )
            try:
                connected, _ = await extra.connect(timeout=10)
                assert connected  # accepted, so that the page can say why it closes
                frames, close = await messages_until_close(extra)
            finally:
                await extra.disconnect()
            assert [frame["op"] for frame in frames] == [notices.OP]
            assert frames[0]["data"]["title"] == "Too many open notebook sessions"
            assert close["code"] == consumers.CLOSE_TOO_MANY
    finally:
        await first.disconnect()
    # Closing the first session frees its place.
    await first_run(f"/notebooks/square/ws?session_id={new_session_id()}", sessionid)


@override_settings(
    DJANGO_NOTEBOOKS={**settings.DJANGO_NOTEBOOKS, "MAX_WEBSOCKET_MESSAGE_BYTES": 1000}
)
async def test_oversized_client_message_closes_the_socket(close_marimo_sessions):
    sessionid = await login("alice")
    ws = communicator(
        f"/notebooks/square/ws?session_id={new_session_id()}", sessionid=sessionid
    )
    try:
        await connected_and_run(ws)
        await ws.send_to(
            text_data="{}"
        )  # small client frames are fine (marimo ignores them)
        assert await ws.receive_nothing(timeout=0.2)
        await ws.send_to(text_data="x" * 1001)
        _frames, close = await messages_until_close(ws)
    finally:
        await ws.disconnect()
    assert close["code"] == consumers.CLOSE_TOO_BIG


async def test_logout_closes_the_sessions_of_that_login(
    close_marimo_sessions, either_channel_layer
):
    sessionid = await login("alice")
    other_login = await another_login("alice")
    session_id = new_session_id()
    ws = communicator(
        f"/notebooks/square/ws?session_id={session_id}", sessionid=sessionid
    )
    untouched = communicator(
        f"/notebooks/square/ws?session_id={new_session_id()}", sessionid=other_login
    )
    async with running(ws, untouched):
        await logout(sessionid)
        frames, close = await messages_until_close(ws)
        assert frames[-1]["op"] == notices.OP
        assert frames[-1]["data"]["text"] == "Your access to this notebook has ended."
        assert close["code"] == consumers.CLOSE_REVOKED
        assert close["reason"] == "MARIMO_UNAUTHORIZED"
        # The user's other login keeps its session.
        assert await untouched.receive_nothing(timeout=0.5)
    # Kernel calls for the revoked session are refused from now on.
    assert (
        owners.bindings.get_for_login(
            session_id, notebook="square", session_key=sessionid, visitor=None
        )
        is None
    )


async def test_losing_the_group_closes_the_session(close_marimo_sessions):
    sessionid = await login("alice", groups=("sales",))
    ws = communicator(
        f"/notebooks/sales/ws?session_id={new_session_id()}", sessionid=sessionid
    )
    still_allowed = communicator(
        f"/notebooks/square/ws?session_id={new_session_id()}", sessionid=sessionid
    )
    async with running(ws, still_allowed):
        await remove_from_group("alice", "sales")
        _frames, close = await messages_until_close(ws)
        assert close["code"] == consumers.CLOSE_REVOKED
        assert await still_allowed.receive_nothing(timeout=0.5)


@sync_to_async
def logout(sessionid: str) -> None:
    client = Client()
    client.cookies[settings.SESSION_COOKIE_NAME] = sessionid
    client.logout()


@sync_to_async
def remove_from_group(username: str, group: str) -> None:
    User.objects.get(username=username).groups.remove(Group.objects.get(name=group))


@pytest.mark.parametrize(
    "backend",
    [
        "channels_redis.core.RedisChannelLayer",
        "channels_redis.pubsub.RedisPubSubChannelLayer",
    ],
)
async def test_a_new_session_is_refused_with_a_reason_while_the_layer_is_down(
    close_marimo_sessions, backend, caplog
):
    """A notebook that revocation could not reach is not opened: the page
    says why (no 500, no traceback), and nothing of the session is left."""
    sessionid = await login("alice")
    dead_redis = {"hosts": [f"redis://127.0.0.1:{free_port()}/0"]}
    with override_settings(
        CHANNEL_LAYERS={"default": {"BACKEND": backend, "CONFIG": dead_redis}}
    ):
        session_id = new_session_id()
        ws = communicator(
            f"/notebooks/square/ws?session_id={session_id}", sessionid=sessionid
        )
        try:
            connected, _ = await ws.connect(timeout=FIRST_RUN_TIMEOUT)
            assert connected
            frames, close = await messages_until_close(ws)
        finally:
            await ws.disconnect()
    assert frames[-1]["op"] == notices.OP
    assert frames[-1]["data"]["title"] == "Notebook unavailable"
    assert close["code"] == consumers.CLOSE_UNAVAILABLE
    assert not await NotebookSession.objects.filter(session_id=session_id).aexists()
    assert session_id not in owners.bindings._bindings
    assert "The channel layer failed" in caplog.text


@notebooks_with(ISOLATION="process")
async def test_a_session_whose_kernel_cannot_start_is_refused_with_a_reason(
    close_marimo_sessions, monkeypatch, caplog
):
    """No fork server, or no fork: the page says to try again, and the
    visitor's notebook never runs in the web process instead."""
    from django_notebooks.kernels import processes
    from django_notebooks.marimo.apps import notebook_apps

    async def cannot(*args, **kwargs):
        raise processes.KernelUnavailable("no more processes")

    monkeypatch.setattr(processes.kernel_processes, "start", cannot)
    sessionid = await login("alice")
    session_id = new_session_id()
    ws = communicator(
        f"/notebooks/square/ws?session_id={session_id}", sessionid=sessionid
    )
    try:
        connected, _ = await ws.connect(timeout=FIRST_RUN_TIMEOUT)
        assert connected  # accepted, so that the page can say why it closes
        frames, close = await messages_until_close(ws)
    finally:
        await ws.disconnect()
    assert [frame["data"]["title"] for frame in frames] == [
        "The notebook could not start"
    ]
    assert close["code"] == consumers.CLOSE_UNAVAILABLE
    assert session_id not in owners.bindings._bindings
    manager = notebook_apps.session_manager_for(NOTEBOOKS_DIR / "square.py")
    assert manager is None or manager.get_session(session_id) is None


# Flow control (sessions/flow.py): what the browser sends never reaches
# marimo, and the server sends only so far ahead of what the page has read.

OUTPUTS_PAGE = "/notebooks/outputs/"
with_outputs_notebook = override_settings(
    DJANGO_NOTEBOOKS={
        **settings.DJANGO_NOTEBOOKS,
        "NOTEBOOKS": {
            **settings.DJANGO_NOTEBOOKS["NOTEBOOKS"],
            "outputs": settings.NOTEBOOKS_DIR / "outputs.py",
        },
        "MAX_UNREAD_WEBSOCKET_BYTES": 64 * 1024,
        "WEBSOCKET_READ_TIMEOUT": 1,
    }
)


async def ask_for_outputs(
    sessionid: str, session_id: str, frames: list[dict], count: int, size_kb: int
) -> None:
    """Have the outputs notebook send ``count`` outputs of ``size_kb`` KB."""
    from django.test import AsyncClient

    from tests.helpers import ORIGIN
    from tests.live import UI_ELEMENT

    count_id, size_id = UI_ELEMENT.findall(outputs(frames))[:2]
    client = AsyncClient()
    client.cookies["sessionid"] = sessionid
    for widget, value in ((size_id, size_kb), (count_id, count)):
        response = await client.post(
            f"{OUTPUTS_PAGE}api/kernel/set_ui_element_value",
            {"objectIds": [widget], "values": [value]},
            content_type="application/json",
            headers={"Origin": ORIGIN, "Marimo-Session-Id": session_id},
        )
        assert response.status_code == 200, response.content


async def test_a_binary_frame_from_the_browser_does_not_reach_marimo(
    close_marimo_sessions,
):
    # marimo's handler reads a client frame as text: a binary one would
    # end it (and the socket, with 4011).
    sessionid = await login("alice")
    ws = communicator(
        f"/notebooks/square/ws?session_id={new_session_id()}", sessionid=sessionid
    )
    try:
        await connected_and_run(ws)
        await ws.send_to(bytes_data=b"\x00\x01")
        assert await ws.receive_nothing(timeout=0.5)
    finally:
        await ws.disconnect()


async def test_a_client_that_sends_more_than_a_page_does_is_closed(
    close_marimo_sessions, caplog
):
    from django_notebooks.sessions import flow

    sessionid = await login("alice")
    ws = communicator(
        f"/notebooks/square/ws?session_id={new_session_id()}", sessionid=sessionid
    )
    try:
        await connected_and_run(ws)
        for _ in range(flow.STRAY_FRAMES_AT_ONCE):
            await ws.send_to(text_data="{}")
        assert await ws.receive_nothing(timeout=0.2)
        await ws.send_to(text_data="{}")
        _frames, close = await messages_until_close(ws)
    finally:
        await ws.disconnect()
    assert close["code"] == consumers.CLOSE_FLOODED
    assert "sent more frames than a notebook's page does" in caplog.text


async def frames_until_close(
    ws: WebsocketCommunicator, count: int, *, acknowledge: bool
):
    """Text frames up to the close (or, if it does not come, up to the
    notebook's "sent ``count`` outputs"), acknowledging each mark if
    ``acknowledge``; ``(frames, marks, close)``."""
    from django_notebooks.sessions import flow

    frames, marks = [], []
    while True:
        message = await ws.receive_output(timeout=FIRST_RUN_TIMEOUT)
        if message["type"] == "websocket.close":
            return frames, marks, message
        mark = flow.mark_in(message["text"])
        if mark is not None:
            marks.append(mark)
            if acknowledge:
                await ws.send_to(text_data=flow.acknowledgement(mark))
            continue
        frames.append(json.loads(message["text"]))
        if f"sent {count} outputs" in outputs(frames[-1:]):
            return frames, marks, None


@with_outputs_notebook
async def test_a_page_that_acknowledges_gets_every_output(close_marimo_sessions):
    from django_notebooks.sessions import flow

    sessionid = await login("alice")
    session_id = new_session_id()
    ws = communicator(f"{OUTPUTS_PAGE}ws?session_id={session_id}", sessionid=sessionid)
    try:
        first = await connected_and_run(ws)
        await ask_for_outputs(sessionid, session_id, first, count=20, size_kb=16)
        frames, marks, close = await frames_until_close(ws, 20, acknowledge=True)
    finally:
        await ws.disconnect()
    assert close is None
    text = outputs(frames)
    assert all(f"output {n} of 20\n" in text for n in range(1, 21))
    assert "sent 20 outputs" in text
    # 320 KB through a 64 KiB window: the page acknowledged many marks,
    # and none of them counted as a frame a page should not send.
    assert len(marks) > flow.STRAY_FRAMES_AT_ONCE


@with_outputs_notebook
async def test_a_page_that_does_not_acknowledge_is_closed_after_the_read_timeout(
    close_marimo_sessions, caplog
):
    sessionid = await login("alice")
    session_id = new_session_id()
    ws = communicator(f"{OUTPUTS_PAGE}ws?session_id={session_id}", sessionid=sessionid)
    try:
        first = await connected_and_run(ws)
        await ask_for_outputs(sessionid, session_id, first, count=20, size_kb=16)
        frames, marks, close = await frames_until_close(ws, 20, acknowledge=False)
    finally:
        await ws.disconnect()
    assert close is not None and close["code"] == consumers.CLOSE_NOT_READING
    # At most the 64 KiB window, plus the frame that found it full.
    outputs_sent = outputs(frames).count(" of 20\n")
    assert 1 <= outputs_sent <= 5
    assert marks, "no mark the page could have acknowledged"
    assert "the page read nothing for 1 seconds" in caplog.text


def _uvicorns_client_gone() -> Exception:
    from uvicorn.protocols.utils import ClientDisconnected

    return ClientDisconnected()


def _daphnes_client_gone() -> Exception:
    from autobahn.exception import Disconnected

    return Disconnected("Attempt to send on a closed protocol")


@with_outputs_notebook
@pytest.mark.parametrize(
    "gone", [_uvicorns_client_gone, _daphnes_client_gone], ids=["uvicorn", "daphne"]
)
async def test_a_page_gone_with_output_on_its_way_is_an_ordinary_disconnect(
    close_marimo_sessions, caplog, monkeypatch, gone
):
    """The server's send fails once the client's socket has closed, before
    its disconnect reaches the consumer: no error, no traceback."""
    sessionid = await login("alice")
    session_id = new_session_id()
    ws = communicator(f"{OUTPUTS_PAGE}ws?session_id={session_id}", sessionid=sessionid)
    failed_sends = []
    page_went = False
    send = consumers.KernelConsumer.send

    async def send_after_the_page_went(self, message):
        if page_went and message["type"] == "websocket.send":
            failed_sends.append(message)
            raise gone()
        await send(self, message)

    monkeypatch.setattr(consumers.KernelConsumer, "send", send_after_the_page_went)
    try:
        first = await connected_and_run(ws)
        page_went = True
        await ask_for_outputs(sessionid, session_id, first, count=5, size_kb=16)
        await async_wait_until(
            lambda: failed_sends, 30, "marimo sent the page nothing more"
        )
    finally:
        await ws.disconnect()
    assert len(failed_sends) == 1  # nothing more was tried
    assert "failed" not in caplog.text
    assert not [record for record in caplog.records if record.levelname == "ERROR"]
