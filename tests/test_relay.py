"""Session records, signals, "terminate", and kernel calls forwarded to the
process holding a session: in one process, over the in-memory channel layer.

"Another process" is simulated by giving this process a new name
(``records.PROCESS``) after the session opened, so that its row looks like
another process's, and by hiding the session from the asking side's local
check; the holding side (the consumer and ``relay.answer``) is untouched.
"""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator
from django.test import AsyncClient

from django_notebooks import admission, consumers, notices, signals
from django_notebooks.asgi import FastPathMiddleware
from django_notebooks.marimo.apps import notebook_apps
from django_notebooks.models import NotebookSession
from django_notebooks.sessions import channel_messages, owners, records, relay
from tests.asgi import django_asgi_app
from tests.compat import create_user, force_login
from tests.live import UI_ELEMENT, new_session_id
from tests.live import communicator_outputs as read_until_completed
from tests.settings import DJANGO_NOTEBOOKS

pytestmark = pytest.mark.django_db(transaction=True)

ORIGIN = "http://testserver"
CALL = "/notebooks/square/api/kernel/set_ui_element_value"


def websocket(path: str, cookie: str) -> WebsocketCommunicator:
    from tests.asgi import application

    return WebsocketCommunicator(
        application.application_mapping["websocket"],
        path,
        headers=[
            (b"host", b"testserver"),
            (b"origin", ORIGIN.encode()),
            (b"cookie", cookie.encode()),
        ],
    )


@pytest.fixture
async def alice(django_user_model):
    user = await create_user(django_user_model, "alice", "pw")
    login = AsyncClient()
    await force_login(login, user)
    return user, f"sessionid={login.cookies['sessionid'].value}"


@pytest.fixture
async def kernel(alice):
    """An open square-notebook session of alice: (user, cookie, session id,
    slider id, websocket)."""
    user, cookie = alice
    session_id = new_session_id()
    communicator = websocket(f"/notebooks/square/ws?session_id={session_id}", cookie)
    connected, _ = await communicator.connect(timeout=30)
    assert connected
    [slider] = UI_ELEMENT.findall(" ".join(await read_until_completed(communicator)))
    yield user, cookie, session_id, slider, communicator
    await communicator.disconnect()
    manager = notebook_apps.session_manager_for(DJANGO_NOTEBOOKS["NOTEBOOKS"]["square"])
    if manager is not None:
        manager.close_all_sessions()


@pytest.fixture
def elsewhere(monkeypatch):
    """From now on, sessions opened so far belong to "another process"."""

    def move() -> None:
        monkeypatch.setattr(records, "PROCESS", "other-host:1:abc")
        # The asking side does not hold the session: its local check fails.
        monkeypatch.setattr(admission, "kernel_call", _not_here(admission.kernel_call))
        relay._known_elsewhere.clear()

    yield move
    relay._known_elsewhere.clear()


def _not_here(kernel_call):
    """admission.kernel_call() as a process without the session's binding
    decides (the holder's own decision, in relay.py, is left as it is)."""

    async def kernel_call_elsewhere(notebook, caller):
        answer = await kernel_call(notebook, caller)
        if not isinstance(answer, owners.Binding):
            return answer
        if await relay.held_elsewhere(caller.session_id):
            return admission.Elsewhere(caller.session_id)
        return admission.Stranger(caller.session_id)

    return kernel_call_elsewhere


async def test_an_open_session_has_a_record_and_closing_deletes_it(alice):
    user, cookie = alice
    session_id = new_session_id()
    started, ended = [], []

    def on_start(sender, **kwargs):
        started.append(kwargs)

    def on_end(sender, **kwargs):
        ended.append(kwargs)

    signals.notebook_session_started.connect(on_start)
    signals.notebook_session_ended.connect(on_end)
    try:
        communicator = websocket(
            f"/notebooks/square/ws?session_id={session_id}", cookie
        )
        connected, _ = await communicator.connect(timeout=30)
        assert connected
        await read_until_completed(communicator)
        record = await NotebookSession.objects.aget(session_id=session_id)
        assert record.notebook == "square"
        assert record.user_id == user.pk
        assert record.process == records.PROCESS
        assert record.channel_name
        assert record.owner_hash and "sessionid" not in record.owner_hash
        await communicator.disconnect()
        for _ in range(50):
            if ended:
                break
            await asyncio.sleep(0.1)
    finally:
        signals.notebook_session_started.disconnect(on_start)
        signals.notebook_session_ended.disconnect(on_end)
        notebook_apps.close_all_sessions()
    assert not await NotebookSession.objects.filter(session_id=session_id).aexists()
    [start] = started
    assert start["user"].pk == user.pk
    assert start["notebook"].slug == "square"
    assert start["session_id"] == session_id
    [end] = ended
    assert end["session_id"] == session_id
    assert end["notebook"].slug == "square"
    assert 0 < end["duration"].total_seconds() < 120


async def test_terminate_closes_the_session_within_two_seconds(kernel):
    _, _, session_id, _, communicator = kernel
    record = await NotebookSession.objects.aget(session_id=session_id)
    started = time.monotonic()
    await get_channel_layer().send(record.channel_name, {"type": "notebooks.terminate"})
    notice = await communicator.receive_json_from(timeout=2)
    assert notice["op"] == notices.OP
    assert "administrator" in notice["data"]["text"]
    closed = await communicator.receive_output(timeout=2)
    assert closed["type"] == "websocket.close"
    assert closed["code"] == consumers.CLOSE_REVOKED
    assert time.monotonic() - started < 2


async def record_of_a_stopped_process(session_id: str, user) -> None:
    """The row a process killed while holding ``session_id`` left behind."""
    await NotebookSession.objects.acreate(
        session_id=session_id,
        notebook="square",
        user=user,
        channel_name="specific.gone!1",
        process="other-host:1:abc",
    )


async def test_a_reconnect_to_a_process_not_holding_the_kernel_is_told_to_reload(
    alice,
):
    user, cookie = alice
    session_id = new_session_id()
    await record_of_a_stopped_process(session_id, user)
    communicator = websocket(f"/notebooks/square/ws?session_id={session_id}", cookie)
    connected, _ = await communicator.connect(timeout=30)
    assert connected  # accepted, so that the page can show why it closes
    notice = await communicator.receive_json_from(timeout=5)
    assert notice["op"] == notices.OP
    assert "Reload the page" in notice["data"]["text"]
    closed = await communicator.receive_output(timeout=5)
    assert closed["code"] == consumers.CLOSE_GONE
    record = await NotebookSession.objects.aget(session_id=session_id)
    assert record.process == "other-host:1:abc"  # not taken over


@pytest.mark.parametrize("fast_path", [True, False], ids=["fast-path", "view"])
async def test_a_kernel_call_for_a_session_held_elsewhere_is_forwarded(
    kernel, elsewhere, fast_path
):
    _, cookie, session_id, slider, communicator = kernel
    elsewhere()
    app = FastPathMiddleware(django_asgi_app) if fast_path else django_asgi_app
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url=ORIGIN) as http:
        response = await http.post(
            CALL,
            json={"objectIds": [slider], "values": [6]},
            headers={
                "Cookie": cookie,
                "Origin": ORIGIN,
                "Marimo-Session-Id": session_id,
            },
        )
    assert response.status_code == 200, response.text
    assert response.json() == {"success": True}
    assert "access-control-allow-origin" not in response.headers
    assert "square=36 user=alice" in " ".join(await read_until_completed(communicator))


async def test_the_holder_checks_the_owner_of_a_forwarded_call(
    kernel, elsewhere, django_user_model
):
    _, _, session_id, slider, _ = kernel
    bob = await create_user(django_user_model, "bob", "pw")
    login = AsyncClient()
    await force_login(login, bob)
    elsewhere()
    transport = httpx.ASGITransport(app=FastPathMiddleware(django_asgi_app))
    async with httpx.AsyncClient(transport=transport, base_url=ORIGIN) as http:
        response = await http.post(
            CALL,
            json={"objectIds": [slider], "values": [6]},
            headers={
                "Cookie": f"sessionid={login.cookies['sessionid'].value}",
                "Origin": ORIGIN,
                "Marimo-Session-Id": session_id,
            },
        )
        assert response.status_code == 403
        assert response.json() == {"error": admission.NOT_YOURS.message}
        # The asking side's own checks still come first.
        response = await http.post(
            CALL,
            json={"objectIds": [slider], "values": [6]},
            headers={"Origin": "https://evil.example", "Marimo-Session-Id": session_id},
        )
        assert response.status_code == 403
        assert response.json() == {"error": admission.CROSS_SITE.message}


async def test_a_bad_body_is_refused_before_forwarding(kernel, elsewhere):
    _, cookie, session_id, _, _ = kernel
    elsewhere()
    transport = httpx.ASGITransport(app=FastPathMiddleware(django_asgi_app))
    async with httpx.AsyncClient(transport=transport, base_url=ORIGIN) as http:
        response = await http.post(
            CALL,
            content=b"[1, 2]",
            headers={
                "Cookie": cookie,
                "Origin": ORIGIN,
                "Marimo-Session-Id": session_id,
            },
        )
    assert response.status_code == 400


async def test_a_holder_that_never_answers_ends_the_session(alice, monkeypatch, caplog):
    user, cookie = alice
    session_id = new_session_id()
    await record_of_a_stopped_process(session_id, user)
    monkeypatch.setattr(relay, "REPLY_TIMEOUT", 0.5)
    transport = httpx.ASGITransport(app=FastPathMiddleware(django_asgi_app))
    async with httpx.AsyncClient(transport=transport, base_url=ORIGIN) as http:
        response = await http.post(
            CALL,
            json={"objectIds": ["x"], "values": [1]},
            headers={
                "Cookie": cookie,
                "Origin": ORIGIN,
                "Marimo-Session-Id": session_id,
            },
        )
    assert response.status_code == 410
    assert response.json() == {"error": admission.SESSION_ENDED.message}
    assert not await NotebookSession.objects.filter(session_id=session_id).aexists()
    assert session_id not in relay._known_elsewhere


async def test_unknown_sessions_are_not_forwarded(alice):
    assert await relay.held_elsewhere(new_session_id()) is False


async def test_this_processs_records_are_deleted_when_it_stops(alice):
    user, _ = alice
    await NotebookSession.objects.acreate(
        session_id="s_mine", notebook="square", user=user, process=records.PROCESS
    )
    await NotebookSession.objects.acreate(
        session_id="s_theirs", notebook="square", user=user, process="other:1:x"
    )
    await sync_to_async(notebook_apps.close_all_sessions)()
    remaining = [row.session_id async for row in NotebookSession.objects.all()]
    assert remaining == ["s_theirs"]


async def test_a_failing_signal_receiver_is_logged_and_stops_nothing(alice, caplog):
    _, cookie = alice

    def broken(sender, **kwargs):
        raise RuntimeError("the audit database is down")

    signals.notebook_session_started.connect(broken)
    try:
        communicator = websocket(
            f"/notebooks/square/ws?session_id={new_session_id()}", cookie
        )
        connected, _ = await communicator.connect(timeout=30)
        assert connected
        assert "square=9" in " ".join(await read_until_completed(communicator))
        await communicator.disconnect()
    finally:
        signals.notebook_session_started.disconnect(broken)
        notebook_apps.close_all_sessions()
    assert "A receiver of a notebook session signal failed" in caplog.text
    assert "the audit database is down" in caplog.text


async def test_a_request_the_layer_lost_is_sent_again(alice, monkeypatch):
    layer = get_channel_layer()
    session_id = new_session_id()
    holder = await layer.new_channel()
    await layer.group_add(channel_messages.session_group(session_id), holder)
    monkeypatch.setattr(relay, "RESEND_AFTER", 0.2)

    async def holder_that_misses_the_first():
        first = await layer.receive(holder)  # "lost"
        second = await layer.receive(holder)
        assert second["call_id"] == first["call_id"]
        await layer.send(second["reply_to"], reply_to(second, b"ok"))

    answering = asyncio.create_task(holder_that_misses_the_first())
    reply = await relay.forward(session_id, {"type": channel_messages.KERNEL_CALL})
    await answering
    assert (reply.status, reply.body) == (200, b"ok")


def reply_to(request: dict, body: bytes) -> dict:
    return {
        "type": channel_messages.KERNEL_REPLY,
        "call_id": request["call_id"],
        "status": 200,
        "headers": [],
        "body": body,
    }


async def test_answers_reach_their_own_calls_over_one_reply_channel():
    layer = get_channel_layer()
    session_id = new_session_id()
    holder = await layer.new_channel()
    await layer.group_add(channel_messages.session_group(session_id), holder)

    async def holder_answering_in_reverse():
        first = await layer.receive(holder)
        second = await layer.receive(holder)
        # Both calls wait on the same channel: no channel per call.
        assert first["reply_to"] == second["reply_to"]
        await layer.send(second["reply_to"], reply_to(second, second["body"]))
        await layer.send(first["reply_to"], reply_to(first, first["body"]))
        # A stray answer (to a call already answered) is dropped.
        await layer.send(first["reply_to"], reply_to(first, b"again"))

    answering = asyncio.create_task(holder_answering_in_reverse())
    one, two = await asyncio.gather(
        relay.forward(
            session_id, {"type": channel_messages.KERNEL_CALL, "body": b"one"}
        ),
        relay.forward(
            session_id, {"type": channel_messages.KERNEL_CALL, "body": b"two"}
        ),
    )
    await answering
    assert (one.body, two.body) == (b"one", b"two")

    # The next call waits on the same channel again.
    answering = asyncio.create_task(holder_answering_once(layer, holder))
    three = await relay.forward(
        session_id, {"type": channel_messages.KERNEL_CALL, "body": b"three"}
    )
    assert three.body == b"three"
    assert (await answering)["reply_to"] == relay.reply_channel(layer).name


async def holder_answering_once(layer, holder) -> dict:
    request = await layer.receive(holder)
    await layer.send(request["reply_to"], reply_to(request, request["body"]))
    return request


async def test_a_failing_layer_fails_the_waiting_calls_not_the_next(
    monkeypatch, caplog
):
    layer = get_channel_layer()
    session_id = new_session_id()
    holder = await layer.new_channel()
    await layer.group_add(channel_messages.session_group(session_id), holder)
    replies = relay.reply_channel(layer)
    receive = layer.receive

    async def broken_receive(channel):
        if channel == replies.name:
            raise ConnectionError("Redis went away")
        return await receive(channel)

    monkeypatch.setattr(layer, "receive", broken_receive)
    failed = await relay.forward(session_id, {"type": channel_messages.KERNEL_CALL})
    assert failed.status == 503
    assert json.loads(failed.body) == {"error": admission.UNREACHABLE.message}
    assert "Redis went away" in caplog.text
    assert "The reply channel of forwarded calls failed" in caplog.text
    monkeypatch.setattr(layer, "receive", receive)
    await layer.receive(holder)  # (the failed call's request)

    # The next call reads a channel of its own again, and is answered.
    answering = asyncio.create_task(holder_answering_once(layer, holder))
    reply = await relay.forward(
        session_id, {"type": channel_messages.KERNEL_CALL, "body": b"ok"}
    )
    assert reply.body == b"ok"
    await answering


async def test_the_holder_runs_a_resent_call_once(kernel, elsewhere):
    _, cookie, session_id, slider, communicator = kernel
    layer = get_channel_layer()
    reply_to = await layer.new_channel()
    record = await NotebookSession.objects.aget(session_id=session_id)
    message = {
        "type": channel_messages.KERNEL_CALL,
        "kind": "kernel",
        "notebook": "square",
        "session_id": session_id,
        "session_key": cookie.split("=", 1)[1],
        "visitor": None,
        "user": None,
        "method": "POST",
        "scheme": "http",
        "path": CALL,
        "mount": "/notebooks/square/",
        "query_string": b"",
        "headers": [
            [b"host", b"testserver"],
            [b"content-type", b"application/json"],
            [b"marimo-session-id", session_id.encode()],
        ],
        "server": ["testserver", 80],
        "body": b'{"objectIds": ["%s"], "values": [5]}' % slider.encode(),
        "reply_to": reply_to,
        "call_id": "call-1",
    }
    await layer.send(record.channel_name, message)
    answer = await asyncio.wait_for(layer.receive(reply_to), 10)
    assert answer["status"] == 200
    outputs = " ".join(await read_until_completed(communicator))
    assert "square=25 user=alice" in outputs
    # The asking process did not get that answer and sends the call again:
    # it gets the same answer, and the kernel does not run the change twice.
    await layer.send(record.channel_name, message)
    again = await asyncio.wait_for(layer.receive(reply_to), 10)
    assert again == answer
    assert await communicator.receive_nothing(timeout=1)


async def test_a_download_of_a_session_held_elsewhere_is_forwarded(alice, monkeypatch):
    import re

    from django_notebooks.sessions import owners

    _, cookie = alice
    communicator = websocket(
        f"/notebooks/files/ws?session_id={new_session_id()}", cookie
    )
    connected, _ = await communicator.connect(timeout=30)
    assert connected
    try:
        outputs = " ".join(await read_until_completed(communicator))
        [virtual] = re.findall(r"\./(@file/[^\"'\\&]+)", outputs)
        # This process no longer holds the session: the download must be
        # fetched from the one that does.
        monkeypatch.setattr(records, "PROCESS", "other-host:1:abc")
        monkeypatch.setattr(
            owners.bindings, "session_with_file", lambda owner, notebook, name: None
        )
        forwarded = []
        forward = relay.forward

        async def counting_forward(session_id, message):
            forwarded.append(message["kind"])
            return await forward(session_id, message)

        monkeypatch.setattr(relay, "forward", counting_forward)
        transport = httpx.ASGITransport(app=FastPathMiddleware(django_asgi_app))
        async with httpx.AsyncClient(transport=transport, base_url=ORIGIN) as http:
            response = await http.get(
                f"/notebooks/files/{virtual}", headers={"Cookie": cookie}
            )
        assert response.status_code == 200
        assert response.content == b"0123456789" * 50_000
        assert forwarded == ["file"]
    finally:
        await communicator.disconnect()
        notebook_apps.close_all_sessions()


async def test_last_activity_is_written_now_and_then(kernel, monkeypatch):

    _, cookie, session_id, slider, communicator = kernel
    before = (await NotebookSession.objects.aget(session_id=session_id)).last_activity
    monkeypatch.setattr(owners, "ACTIVITY_EVERY", 0.0)
    transport = httpx.ASGITransport(app=FastPathMiddleware(django_asgi_app))
    async with httpx.AsyncClient(transport=transport, base_url=ORIGIN) as http:
        response = await http.post(
            CALL,
            json={"objectIds": [slider], "values": [2]},
            headers={
                "Cookie": cookie,
                "Origin": ORIGIN,
                "Marimo-Session-Id": session_id,
            },
        )
    assert response.status_code == 200
    await read_until_completed(communicator)
    await asyncio.gather(*records._pending_writes)
    after = (await NotebookSession.objects.aget(session_id=session_id)).last_activity
    assert after > before
