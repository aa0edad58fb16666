"""calls.py: the one pipeline of kernel calls, with stand-ins for the marimo
app and for the process holding a session (the real ones: test_fast_path.py,
test_relay.py and the end-to-end tests)."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User
from django.test import override_settings

from django_notebooks import admission, calls, context, refusals, registry
from django_notebooks.marimo.forwarding import Reply
from django_notebooks.models import NotebookSession
from django_notebooks.sessions import nearby, records, relay
from tests import test_admission
from tests.test_admission import SQUARE, bind, caller

# test_admission's fixtures: each test starts with no session bound (autouse
# there), and alice.
fresh_bindings = test_admission.fresh_bindings
alice = test_admission.alice

LOCATION = registry.Location(SQUARE, "api/kernel/set_ui_element_value")
PATH = "/notebooks/square/api/kernel/set_ui_element_value"
SCOPE = {
    "type": "http",
    "method": "POST",
    "path": PATH,
    "headers": [(b"host", b"testserver")],
    "query_string": b"",
}
BODY = b'{"objectIds": ["a"], "values": [1]}'


class Body:
    """A read_body() that counts its reads."""

    def __init__(self, answer=BODY):
        self.answer = answer
        self.reads = 0

    async def __call__(self):
        self.reads += 1
        return self.answer


@pytest.fixture
def marimo(monkeypatch):
    """The notebook's app, answering each call with its scope's user and
    session, as seen by notebook code."""
    seen = []

    async def app(scope, receive, send):
        request = await receive()
        seen.append((scope, request["body"]))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b'{"success": true}'})

    monkeypatch.setattr(calls.router, "app_for", lambda notebook: app)
    return seen


@pytest.fixture
def holder(monkeypatch):
    """The process holding sessions held elsewhere: the calls it is asked."""
    asked = []

    async def ask_holder(scope, location, caller, *, kind, body, user=None):
        asked.append((caller.session_id, kind, body))
        return Reply(200, [], b"from the holder")

    monkeypatch.setattr(relay, "ask_holder", ask_holder)
    return asked


@pytest.mark.django_db
async def test_the_owners_call_runs_here_with_its_sessions_user_and_body(alice, marimo):
    call = caller()
    bind(call, alice)
    body = Body()
    answer = await calls.kernel_call(LOCATION, call, SCOPE, body)
    assert answer == Reply(200, [], b'{"success": true}')
    [(scope, sent)] = marimo
    assert sent == BODY
    assert scope["root_path"] == "/notebooks/square"
    assert body.reads == 1


async def test_a_refused_call_reads_no_body_and_runs_nothing(marimo):
    body = Body()
    answer = await calls.kernel_call(
        LOCATION, caller(origin="https://evil.example"), SCOPE, body
    )
    assert answer == refusals.CROSS_SITE
    assert body.reads == 0
    assert marimo == []


@pytest.mark.django_db
async def test_a_refused_body_is_the_answer(alice, marimo):
    call = caller()
    bind(call, alice)
    answer = await calls.kernel_call(LOCATION, call, SCOPE, Body(refusals.NOT_JSON))
    assert answer == refusals.NOT_JSON
    assert marimo == []


async def held_elsewhere(call, *, owner=None) -> None:
    """The record of ``call``'s session, held by another process (for the
    caller's login unless ``owner`` is another)."""
    user = await User.objects.acreate(username=f"user-{call.session_id}")
    owner = owner or call.owner(user)
    await NotebookSession.objects.acreate(
        session_id=call.session_id,
        notebook="square",
        user=user,
        owner_hash=records.owner_hash(owner),
        process="other-host:1:abc",
    )


@pytest.fixture
def nearby_kernels(monkeypatch, settings):
    """The sessions whose kernel a host of this machine runs (by id): what
    kernel_processes.reach() finds (kernels in processes, whatever the
    pass: with kernels as threads no host runs any)."""
    settings.DJANGO_NOTEBOOKS = {**settings.DJANGO_NOTEBOOKS, "ISOLATION": "process"}
    kernels = {}

    async def reach(session_id, start):
        return kernels.get(session_id)

    monkeypatch.setattr(nearby.kernel_processes, "reach", reach)
    nearby.forget_all()
    yield kernels
    nearby.forget_all()


class RunningKernel:
    has_exited = False


@pytest.mark.django_db(transaction=True)
async def test_a_session_another_process_holds_goes_there(
    holder, marimo, nearby_kernels
):
    call = caller()
    await held_elsewhere(call)
    for _ in range(2):  # (the second without asking the hosts again)
        answer = await calls.kernel_call(LOCATION, call, SCOPE, Body())
        assert answer == Reply(200, [], b"from the holder")
    assert holder == [(call.session_id, "kernel", BODY)] * 2
    assert marimo == []


@pytest.mark.django_db(transaction=True)
async def test_a_session_of_this_machine_held_elsewhere_runs_in_its_kernel_from_here(
    holder, marimo, nearby_kernels
):
    call = caller()
    await held_elsewhere(call)
    nearby_kernels[call.session_id] = RunningKernel()
    for _ in range(2):  # (the second without a database query)
        answer = await calls.kernel_call(LOCATION, call, SCOPE, Body())
        assert answer == Reply(200, [], b'{"success": true}')
    assert holder == []
    [(scope, sent), _] = marimo
    assert sent == BODY
    assert scope[context.ADMITTED_SESSION] == call.session_id
    # Notebook code sees the session's own request (its kernel has it).
    assert scope[context.SESSIONS_REQUEST] is True


@pytest.mark.django_db(transaction=True)
async def test_another_logins_call_is_a_strangers_wherever_the_session_is(
    holder, marimo, nearby_kernels
):
    call = caller()
    await held_elsewhere(call, owner="user:1:someone-elses-login")
    nearby_kernels[call.session_id] = RunningKernel()
    body = Body()
    answer = await calls.kernel_call(LOCATION, call, SCOPE, body)
    assert answer == admission.Stranger(call.session_id)
    assert holder == [] and marimo == [] and body.reads == 0


@pytest.mark.django_db(transaction=True)
@override_settings(CHANNEL_LAYERS={})
async def test_without_a_channel_layer_nothing_is_elsewhere(holder, nearby_kernels):
    call = caller()
    await held_elsewhere(call)
    body = Body()
    answer = await calls.kernel_call(LOCATION, call, SCOPE, body)
    assert answer == admission.Stranger(call.session_id)
    assert holder == []
    assert body.reads == 0


@pytest.mark.django_db
async def test_a_failing_app_is_a_500_with_the_bridges_words(
    alice, monkeypatch, caplog
):
    async def app(scope, receive, send):
        raise RuntimeError("marimo broke")

    monkeypatch.setattr(calls.router, "app_for", lambda notebook: app)
    call = caller()
    bind(call, alice)
    answer = await calls.kernel_call(LOCATION, call, SCOPE, Body())
    assert answer == refusals.FAILED.reply()
    assert "marimo's app failed on a call" in caplog.text


def forwarded_call(call, **fields):
    return {
        "notebook": "square",
        "kind": "kernel",
        "session_id": call.session_id,
        "session_key": call.session_key,
        "visitor": call.visitor,
        "user": None,
        "method": "POST",
        "scheme": "http",
        "path": PATH,
        "mount": "/notebooks/square/",
        "query_string": b"",
        "headers": [[b"host", b"testserver"]],
        "server": None,
        "body": BODY,
        **fields,
    }


@pytest.mark.django_db
async def test_a_forwarded_call_of_the_owner_runs_as_a_local_one(alice, marimo):
    call = caller()
    bind(call, alice)
    reply = await calls.forwarded(forwarded_call(call))
    assert reply == Reply(200, [], b'{"success": true}')
    [(scope, sent)] = marimo
    assert sent == BODY
    assert scope["root_path"] == "/notebooks/square"


@pytest.mark.django_db
async def test_a_forwarded_call_of_another_login_is_refused(alice, marimo):
    call = caller()
    bind(call, alice)
    reply = await calls.forwarded(forwarded_call(call, session_key="bobs-login"))
    assert reply == refusals.NOT_YOURS.reply()
    assert marimo == []


async def test_a_forwarded_call_for_a_notebook_not_served_is_404(marimo):
    reply = await calls.forwarded(forwarded_call(caller(), notebook="gone"))
    assert reply.status == 404
    assert marimo == []
