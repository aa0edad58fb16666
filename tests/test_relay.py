"""Session records, signals, "terminate", and kernel calls forwarded to the
process holding a session: in one process, over the in-memory channel layer.

"Another process" is simulated by giving this process a new name
(``records.PROCESS``) after the session opened, so that its row looks like
another process's, and by hiding the session from the asking side's local
check; the holding side (the consumer, ``relay.answer`` and
``calls.forwarded``) is untouched.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from datetime import timedelta

import httpx
import pytest
from asgiref.sync import sync_to_async
from channels.exceptions import ChannelFull
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator
from django.test import AsyncClient
from django.utils import timezone

from django_notebooks import admission, consumers, limits, notices, signals
from django_notebooks.asgi import FastPathMiddleware
from django_notebooks.marimo.apps import notebook_apps
from django_notebooks.marimo.forwarding import Reply
from django_notebooks.models import NotebookSession
from django_notebooks.sessions import channel_messages, owners, records, relay
from tests.asgi import django_asgi_app
from tests.compat import create_user, force_login
from tests.helpers import notebooks_with, wait_until
from tests.live import UI_ELEMENT, new_session_id
from tests.live import communicator_outputs as read_until_completed
from tests.settings import DJANGO_NOTEBOOKS

pytestmark = pytest.mark.django_db(transaction=True)

ORIGIN = "http://testserver"
CALL = "/notebooks/square/api/kernel/set_ui_element_value"
# A forwarded request as relay.forward() sends it (what it asks matters not
# to the fake holders below), and the deadline of a local call.
DEADLINE = 30.0
CALL_MESSAGE = {
    "type": channel_messages.KERNEL_CALL,
    "notebook": "square",
    "deadline": DEADLINE,
}


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
    decides (the holder's own decision, calls.forwarded(), is left as it is)."""

    def kernel_call_elsewhere(notebook, caller):
        answer = kernel_call(notebook, caller)
        if isinstance(answer, owners.Binding):
            return admission.NotHere(caller.session_id)
        return answer

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


def login_hash(user, cookie: str) -> str:
    """The owner hash a row keeps for the login of ``cookie``."""
    return records.owner_hash(owners.owner_of(user, cookie.split("=", 1)[1], None))


async def record_of_a_stopped_process(session_id: str, user, cookie: str) -> None:
    """The row a process killed while holding ``session_id`` left behind."""
    await NotebookSession.objects.acreate(
        session_id=session_id,
        notebook="square",
        user=user,
        owner_hash=login_hash(user, cookie),
        channel_name="specific.gone!1",
        process="other-host:1:abc",
    )


async def test_a_reconnect_to_a_process_not_holding_the_kernel_is_told_to_reload(
    alice,
):
    user, cookie = alice
    session_id = new_session_id()
    await record_of_a_stopped_process(session_id, user, cookie)
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


async def test_a_reconnect_takes_over_the_row_of_a_process_of_this_host_that_ended(
    alice,
):
    """A worker that was killed could not delete its rows: the page that
    reconnects to another worker of the machine takes its session over (the
    kernel host keeps its kernel)."""
    user, cookie = alice
    session_id = new_session_id()
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    await NotebookSession.objects.acreate(
        session_id=session_id,
        notebook="square",
        user=user,
        channel_name="specific.gone!1",
        process=this_hosts_process(ended.pid),
    )
    communicator = websocket(f"/notebooks/square/ws?session_id={session_id}", cookie)
    connected, _ = await communicator.connect(timeout=30)
    assert connected
    frame = await communicator.receive_json_from(timeout=30)
    assert frame["op"] != notices.OP, frame  # marimo's, not a notice
    record = await NotebookSession.objects.aget(session_id=session_id)
    assert record.process == records.PROCESS
    await communicator.disconnect()


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


async def test_a_holder_that_never_acknowledges_has_stopped_and_its_session_ends(
    alice, quick_timeouts, caplog
):
    user, cookie = alice
    session_id = new_session_id()
    await record_of_a_stopped_process(session_id, user, cookie)
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
    assert "it has stopped, so the session has ended" in caplog.text


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
    reply = await relay.forward(session_id, CALL_MESSAGE, deadline=DEADLINE)
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
        relay.forward(session_id, {**CALL_MESSAGE, "body": b"one"}, deadline=DEADLINE),
        relay.forward(session_id, {**CALL_MESSAGE, "body": b"two"}, deadline=DEADLINE),
    )
    await answering
    assert (one.body, two.body) == (b"one", b"two")

    # The next call waits on the same channel again.
    answering = asyncio.create_task(holder_answering_once(layer, holder))
    three = await relay.forward(
        session_id, {**CALL_MESSAGE, "body": b"three"}, deadline=DEADLINE
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
    failed = await relay.forward(session_id, CALL_MESSAGE, deadline=DEADLINE)
    assert failed.status == 503
    assert json.loads(failed.body) == {"error": admission.UNREACHABLE.message}
    assert "Redis went away" in caplog.text
    assert "The reply channel of forwarded calls failed" in caplog.text
    monkeypatch.setattr(layer, "receive", receive)
    await layer.receive(holder)  # (the failed call's request)

    # The next call reads a channel of its own again, and is answered.
    answering = asyncio.create_task(holder_answering_once(layer, holder))
    reply = await relay.forward(
        session_id, {**CALL_MESSAGE, "body": b"ok"}, deadline=DEADLINE
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
    answer = await answer_on(layer, reply_to)
    assert answer["status"] == 200
    outputs = " ".join(await read_until_completed(communicator))
    assert "square=25 user=alice" in outputs
    # The asking process did not get that answer and sends the call again:
    # it gets the same answer, and the kernel does not run the change twice.
    await layer.send(record.channel_name, message)
    again = await answer_on(layer, reply_to)
    assert again == answer
    assert await communicator.receive_nothing(timeout=1)


async def answer_on(layer, reply_to: str) -> dict:
    """The next answer on ``reply_to``, past the holder's "running" words."""
    while True:
        message = await asyncio.wait_for(layer.receive(reply_to), 10)
        if message["type"] == channel_messages.KERNEL_REPLY:
            return message
        assert message["type"] == channel_messages.KERNEL_RUNNING


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

        async def counting_forward(session_id, message, **options):
            forwarded.append(message["kind"])
            return await forward(session_id, message, **options)

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


# Slow is not dead: the holder's event loop acknowledges each call and beats
# while it runs; only a holder that says nothing is taken for gone.


def running(request: dict) -> dict:
    """The holder's word that ``request`` runs (its acknowledgement, or a
    heartbeat)."""
    return {"type": channel_messages.KERNEL_RUNNING, "call_ids": [request["call_id"]]}


@pytest.fixture
def quick_timeouts(monkeypatch):
    """REPLY_TIMEOUT at half a second, heartbeats and resends to match."""
    monkeypatch.setattr(relay, "REPLY_TIMEOUT", 0.5)
    monkeypatch.setattr(relay, "RESEND_AFTER", 0.1)
    monkeypatch.setattr(relay, "HEARTBEAT_EVERY", 0.05)
    monkeypatch.setattr(relay, "RESEND_WHEN_SILENT", 0.15)


async def holder_of(session_id: str) -> tuple:
    """A fake holding process: its channel joined to the session's group."""
    layer = get_channel_layer()
    holder = await layer.new_channel()
    await layer.group_add(channel_messages.session_group(session_id), holder)
    return layer, holder


async def record_held_by(session_id: str, user, process: str, **fields) -> None:
    await NotebookSession.objects.acreate(
        session_id=session_id,
        notebook="square",
        user=user,
        channel_name="specific.holder!1",
        process=process,
        **fields,
    )


def this_hosts_process(pid: int) -> str:
    """How a row names a process ``pid`` of this host (not this process)."""
    return f"{socket.gethostname()}:{pid}:other"


async def test_a_holder_that_beats_is_waited_for_past_the_reply_timeout(
    alice, quick_timeouts
):
    user, _ = alice
    session_id = new_session_id()
    await record_held_by(session_id, user, "other-host:1:abc")
    layer, holder = await holder_of(session_id)

    async def slow_holder():
        request = await layer.receive(holder)
        await layer.send(request["reply_to"], running(request))
        # Four reply timeouts of a busy kernel, the process beating meanwhile.
        for _ in range(40):
            await asyncio.sleep(0.05)
            await layer.send(request["reply_to"], running(request))
        await layer.send(request["reply_to"], reply_to(request, b"late"))

    answering = asyncio.create_task(slow_holder())
    started = time.monotonic()
    reply = await relay.forward(session_id, CALL_MESSAGE, deadline=DEADLINE)
    await answering
    assert (reply.status, reply.body) == (200, b"late")
    assert time.monotonic() - started > 4 * relay.REPLY_TIMEOUT
    assert await NotebookSession.objects.filter(session_id=session_id).aexists()


async def test_a_call_past_its_deadline_is_a_504_and_the_session_is_kept(
    alice, quick_timeouts
):
    user, _ = alice
    session_id = new_session_id()
    await record_held_by(session_id, user, "other-host:1:abc")
    layer, holder = await holder_of(session_id)

    async def holder_beating_for_ever():
        request = await layer.receive(holder)
        while True:
            await layer.send(request["reply_to"], running(request))
            await asyncio.sleep(0.05)

    beating = asyncio.create_task(holder_beating_for_ever())
    started = time.monotonic()
    try:
        reply = await relay.forward(session_id, CALL_MESSAGE, deadline=1.5)
    finally:
        beating.cancel()
    took = time.monotonic() - started
    assert reply.status == 504
    assert reply.headers == [(b"content-type", b"application/json")]
    assert json.loads(reply.body) == {"error": relay.NOT_ANSWERING.message}
    assert 1.5 <= took < 1.5 + relay.REPLY_TIMEOUT
    assert await NotebookSession.objects.filter(session_id=session_id).aexists()


async def test_a_holder_that_acknowledged_then_fell_silent_has_stopped(
    alice, quick_timeouts
):
    user, _ = alice
    session_id = new_session_id()
    await record_held_by(session_id, user, "other-host:1:abc")
    layer, holder = await holder_of(session_id)

    async def holder_killed_after_acknowledging():
        request = await layer.receive(holder)
        await layer.send(request["reply_to"], running(request))

    asyncio.create_task(holder_killed_after_acknowledging())
    reply = await relay.forward(session_id, CALL_MESSAGE, deadline=DEADLINE)
    assert reply.status == 410
    assert json.loads(reply.body) == {"error": admission.SESSION_ENDED.message}
    assert not await NotebookSession.objects.filter(session_id=session_id).aexists()


async def test_a_lost_answer_is_asked_for_again_after_the_acknowledgement(
    alice, quick_timeouts
):
    session_id = new_session_id()
    layer, holder = await holder_of(session_id)

    async def holder_whose_answer_is_lost():
        request = await layer.receive(holder)
        await layer.send(request["reply_to"], running(request))
        acknowledged = time.monotonic()
        # (The answer sent now is lost on the way.)
        again = await layer.receive(holder)
        assert again["call_id"] == request["call_id"]
        await layer.send(again["reply_to"], reply_to(again, b"again"))
        return time.monotonic() - acknowledged

    answering = asyncio.create_task(holder_whose_answer_is_lost())
    reply = await relay.forward(session_id, CALL_MESSAGE, deadline=DEADLINE)
    assert (reply.status, reply.body) == (200, b"again")
    # Asked again once the holder had been silent for a while, not before.
    assert await answering >= relay.RESEND_WHEN_SILENT


async def test_a_silent_holder_of_this_host_that_still_runs_is_not_gone(
    alice, quick_timeouts, caplog
):
    """Its event loop is blocked (a kernel thread holding the GIL, say): the
    call gets a 503, and the session is kept."""
    user, _ = alice
    session_id = new_session_id()
    # This test's own process stands for the holder: it runs, and has since
    # before the row was written.
    await record_held_by(
        session_id,
        user,
        this_hosts_process(os.getpid()),
    )
    relay._known_elsewhere[session_id] = None
    reply = await relay.forward(session_id, CALL_MESSAGE, deadline=DEADLINE)
    assert reply.status == 503
    assert json.loads(reply.body) == {"error": admission.UNREACHABLE.message}
    assert await NotebookSession.objects.filter(session_id=session_id).aexists()
    assert "runs but did not acknowledge" in caplog.text


async def test_a_silent_holder_of_this_host_that_exited_has_stopped(
    alice, quick_timeouts
):
    user, _ = alice
    session_id = new_session_id()
    exited = subprocess.Popen([sys.executable, "-c", "pass"])
    exited.wait()
    await record_held_by(
        session_id,
        user,
        this_hosts_process(exited.pid),
    )
    reply = await relay.forward(session_id, CALL_MESSAGE, deadline=DEADLINE)
    assert reply.status == 410
    assert not await NotebookSession.objects.filter(session_id=session_id).aexists()


async def test_a_pid_taken_over_since_the_row_was_written_is_not_its_holder(
    alice, quick_timeouts
):
    """The pid runs, but its process started after the row was written: the
    holder that wrote it is gone (pids are reused)."""
    user, _ = alice
    session_id = new_session_id()
    await record_held_by(
        session_id,
        user,
        this_hosts_process(os.getpid()),
        opened_at=timezone.now() - timedelta(days=365),
    )
    reply = await relay.forward(session_id, CALL_MESSAGE, deadline=DEADLINE)
    assert reply.status == 410
    assert not await NotebookSession.objects.filter(session_id=session_id).aexists()


# The holding side: relay.answer() as the consumer runs it, with a kernel
# that takes as long as the test says.


class SlowKernel:
    """Stands for calls.forwarded(): a kernel that answers a forwarded call only
    once ``answer_now`` is set, and counts the calls it runs."""

    def __init__(self) -> None:
        self.runs: list[str] = []
        self.answer_now = asyncio.Event()

    async def run(self, message: dict) -> Reply:
        self.runs.append(message["call_id"])
        await self.answer_now.wait()
        return Reply(200, [], message["call_id"].encode())


@pytest.fixture
def slow_kernel(monkeypatch):
    kernel = SlowKernel()
    monkeypatch.setattr(relay, "HEARTBEAT_EVERY", 0.05)
    return kernel


async def words_on(layer, channel: str, until: float) -> list[dict]:
    """Every message on ``channel`` for ``until`` seconds."""
    words = []
    deadline = time.monotonic() + until
    while (left := deadline - time.monotonic()) > 0:
        try:
            words.append(await asyncio.wait_for(layer.receive(channel), left))
        except TimeoutError:
            break
    return words


def forwarded(call_id: str, reply_channel: str) -> dict:
    return {**CALL_MESSAGE, "call_id": call_id, "reply_to": reply_channel}


async def test_the_holder_acknowledges_at_once_and_beats_until_it_answers(
    slow_kernel,
):
    layer = get_channel_layer()
    asking = await layer.new_channel()
    recent = relay.RecentCalls()
    call = asyncio.create_task(
        relay.answer(forwarded("c1", asking), slow_kernel.run, recent)
    )
    acknowledgement = await asyncio.wait_for(layer.receive(asking), 1)
    assert acknowledgement == {
        "type": channel_messages.KERNEL_RUNNING,
        "call_ids": ["c1"],
    }
    beats = await words_on(layer, asking, 0.5)
    assert len(beats) >= 3
    assert all(beat == acknowledgement for beat in beats)
    # A resend while it runs is acknowledged again, not run again.
    await relay.answer(forwarded("c1", asking), slow_kernel.run, recent)
    assert running({"call_id": "c1"}) in await words_on(layer, asking, 0.2)
    assert slow_kernel.runs == ["c1"]

    slow_kernel.answer_now.set()
    await call
    words = await words_on(layer, asking, 0.3)
    answers = [w for w in words if w["type"] == channel_messages.KERNEL_REPLY]
    assert [(a["call_id"], a["status"], a["body"]) for a in answers] == [
        ("c1", 200, b"c1")
    ]
    # No beat after the answer.
    assert words[-1]["type"] == channel_messages.KERNEL_REPLY
    # A resend after it gets the same answer.
    await relay.answer(forwarded("c1", asking), slow_kernel.run, recent)
    assert await answer_on(layer, asking) == answers[0]
    assert slow_kernel.runs == ["c1"]


async def test_one_beat_names_every_call_of_one_asking_process(slow_kernel):
    layer = get_channel_layer()
    asking, other = await layer.new_channel(), await layer.new_channel()
    calls = [
        asyncio.create_task(
            relay.answer(forwarded("a1", asking), slow_kernel.run, relay.RecentCalls())
        ),
        asyncio.create_task(
            relay.answer(forwarded("a2", asking), slow_kernel.run, relay.RecentCalls())
        ),
        asyncio.create_task(
            relay.answer(forwarded("b1", other), slow_kernel.run, relay.RecentCalls())
        ),
    ]
    await asyncio.sleep(0.2)
    beats = [w["call_ids"] for w in await words_on(layer, asking, 0.3)]
    assert sorted(beats[-1]) == ["a1", "a2"]
    assert {tuple(w["call_ids"]) for w in await words_on(layer, other, 0.2)} == {
        ("b1",)
    }
    slow_kernel.answer_now.set()
    await asyncio.gather(*calls)


async def test_the_holder_stops_beating_at_the_call_deadline(slow_kernel, monkeypatch):
    """The asking process has given up by then: a kernel that never answers
    is not named for ever."""
    monkeypatch.setattr(relay, "_deadline_of", lambda message: 0.2)
    layer = get_channel_layer()
    asking = await layer.new_channel()
    call = asyncio.create_task(
        relay.answer(forwarded("c1", asking), slow_kernel.run, None)
    )
    await asyncio.sleep(0.4)
    await words_on(layer, asking, 0.1)  # (what was said meanwhile)
    assert await words_on(layer, asking, 0.3) == []
    slow_kernel.answer_now.set()
    await call
    assert (await answer_on(layer, asking))["body"] == b"c1"


async def test_a_session_takes_only_so_many_running_calls(slow_kernel, monkeypatch):
    monkeypatch.setattr(relay, "CALLS_REMEMBERED", 2)
    layer = get_channel_layer()
    asking = await layer.new_channel()
    recent = relay.RecentCalls()
    calls = [
        asyncio.create_task(
            relay.answer(forwarded(call_id, asking), slow_kernel.run, recent)
        )
        for call_id in ("c1", "c2")
    ]
    await asyncio.sleep(0.1)
    await relay.answer(forwarded("c3", asking), slow_kernel.run, recent)
    refused = await answer_on(layer, asking)
    assert (refused["call_id"], refused["status"]) == ("c3", 503)
    assert json.loads(refused["body"]) == {"error": relay.TOO_MANY_CALLS.message}
    assert slow_kernel.runs == ["c1", "c2"]
    # Once they are answered, a new call makes room by forgetting the oldest
    # answer (never a call still running).
    slow_kernel.answer_now.set()
    await asyncio.gather(*calls)
    await relay.answer(forwarded("c3", asking), slow_kernel.run, recent)
    assert "c1" not in recent and "c2" in recent and "c3" in recent


async def file_held_elsewhere(user, cookie: str) -> str:
    """Record that another process holds a session of alice's login of the
    files notebook; its id (a download is forwarded to one of those)."""
    session_id = new_session_id()
    owner = owners.owner_of(user, cookie.split("=", 1)[1], None)
    await NotebookSession.objects.acreate(
        session_id=session_id,
        notebook="files",
        user=user,
        owner_hash=records.owner_hash(owner),
        channel_name="specific.holder!1",
        process="other-host:1:abc",
    )
    return session_id


async def download(cookie: str) -> httpx.Response:
    transport = httpx.ASGITransport(app=FastPathMiddleware(django_asgi_app))
    async with httpx.AsyncClient(transport=transport, base_url=ORIGIN) as http:
        return await http.get(
            "/notebooks/files/@file/10-data.txt", headers={"Cookie": cookie}
        )


async def test_a_download_from_a_busy_holder_is_waited_for(alice, quick_timeouts):
    user, cookie = alice
    layer, holder = await holder_of(await file_held_elsewhere(user, cookie))

    async def slow_holder():
        request = await layer.receive(holder)
        assert request["kind"] == "file"
        for _ in range(30):  # three reply timeouts
            await layer.send(request["reply_to"], running(request))
            await asyncio.sleep(0.05)
        await layer.send(request["reply_to"], reply_to(request, b"0123456789"))

    answering = asyncio.create_task(slow_holder())
    response = await download(cookie)
    await answering
    assert (response.status_code, response.content) == (200, b"0123456789")


async def test_a_download_waits_as_long_as_a_call_into_its_kernel_may(
    alice, quick_timeouts, monkeypatch
):
    """The deadline is the notebook's: its CELL_TIMEOUT and the stop grace
    (both shortened here), then a 504, the session kept."""
    monkeypatch.setattr(limits, "CELL_STOP_GRACE", 0)
    monkeypatch.setattr(limits, "CALL_MARGIN", 0)
    user, cookie = alice
    session_id = await file_held_elsewhere(user, cookie)
    layer, holder = await holder_of(session_id)

    async def holder_beating_for_ever():
        request = await layer.receive(holder)
        while True:
            await layer.send(request["reply_to"], running(request))
            await asyncio.sleep(0.05)

    beating = asyncio.create_task(holder_beating_for_ever())
    started = time.monotonic()
    try:
        with notebooks_with(LIMITS={"CELL_TIMEOUT": 1}):
            response = await download(cookie)
    finally:
        beating.cancel()
    assert response.status_code == 504
    assert response.json() == {"error": relay.NOT_ANSWERING.message}
    assert 1 <= time.monotonic() - started < 1 + relay.REPLY_TIMEOUT
    assert await NotebookSession.objects.filter(session_id=session_id).aexists()


# Whether a row's process still runs on this host (records.runs_on_this_host).


def test_a_process_of_this_host_running_since_its_row_was_written_runs():
    assert records.runs_on_this_host(
        this_hosts_process(os.getpid()), since=timezone.now()
    )


@pytest.mark.parametrize(
    "process",
    ["other-host:1:abc", f"{socket.gethostname()}:notapid:abc", "nonsense"],
)
def test_a_process_of_another_host_or_unnamed_is_not_known_to_run(process):
    assert not records.runs_on_this_host(process, since=timezone.now())


def test_a_process_that_ended_does_not_run_even_before_it_is_reaped():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        # Ended, not yet reaped: a zombie still has its pid.
        wait_until(
            lambda: (
                (records.PROC / str(child.pid) / "stat")
                .read_text()
                .rsplit(")", 1)[1]
                .split()[0]
                == "Z"
            ),
            30,
            "the child did not end",
        )
        assert not records.runs_on_this_host(
            this_hosts_process(child.pid), since=timezone.now()
        )
    finally:
        child.wait()
    assert not records.runs_on_this_host(
        this_hosts_process(child.pid), since=timezone.now()
    )


def test_without_proc_a_running_pid_is_taken_for_the_process(monkeypatch, tmp_path):
    """(Where /proc is missing, pid reuse cannot be told apart.)"""
    monkeypatch.setattr(records, "PROC", tmp_path / "no-proc")
    long_ago = timezone.now() - timedelta(days=365)
    assert records.runs_on_this_host(this_hosts_process(os.getpid()), since=long_ago)
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert not records.runs_on_this_host(this_hosts_process(child.pid), since=long_ago)


async def test_a_session_closed_while_its_call_waited_has_ended(quick_timeouts):
    """No holder said anything, and no row names one any more."""
    reply = await relay.forward(new_session_id(), CALL_MESSAGE, deadline=DEADLINE)
    assert reply.status == 410
    assert json.loads(reply.body) == {"error": admission.SESSION_ENDED.message}


async def test_the_holder_answers_a_call_that_failed_with_a_500(caplog):
    async def failing_run(message):
        raise RuntimeError("the kernel's app broke")

    layer = get_channel_layer()
    asking = await layer.new_channel()
    await relay.answer(forwarded("c1", asking), failing_run, relay.RecentCalls())
    answer = await answer_on(layer, asking)
    assert answer["status"] == 500
    assert json.loads(answer["body"]) == {"error": "The notebook failed to answer."}
    assert "the kernel's app broke" in caplog.text


async def test_a_word_the_layer_cannot_take_is_dropped_not_raised(
    slow_kernel, monkeypatch, caplog
):
    """(The asking process asks again, or has gone.)"""
    caplog.set_level("INFO", logger=relay.__name__)
    layer = get_channel_layer()

    async def full(channel, message):
        raise ChannelFull()

    monkeypatch.setattr(layer, "send", full)
    slow_kernel.answer_now.set()
    await relay.answer(
        forwarded("c1", "specific.gone!1"), slow_kernel.run, relay.RecentCalls()
    )
    assert "Could not send notebooks.kernel_running" in caplog.text
    assert "Could not send notebooks.kernel_reply" in caplog.text
