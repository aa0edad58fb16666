"""admission.py on its own: who may come in, decided without a marimo kernel
(session bindings are made directly, as the consumer makes them)."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import pytest
from django.contrib.auth.models import AnonymousUser, User
from django.test import RequestFactory, override_settings

from django_notebooks import admission, notices, registry
from django_notebooks.admission import Caller
from django_notebooks.kernels import router
from django_notebooks.sessions import owners
from tests.helpers import new_session_id, notebooks_with
from tests.notebooks.query_forms import SalesQuery
from tests.settings import NOTEBOOKS_DIR

SQUARE = registry.Notebook("square", NOTEBOOKS_DIR / "square.py", "Square")
PUBLIC = registry.Notebook("hello", NOTEBOOKS_DIR / "square.py", "Hello", public=True)
STAFF_ONLY = registry.Notebook(
    "ops", NOTEBOOKS_DIR / "square.py", "Ops", groups=("ops",)
)


def caller(**fields) -> Caller:
    """A same-site caller with alice's login, naming a new session."""
    defaults = dict(
        host="testserver",
        scheme="http",
        origin="http://testserver",
        referer=None,
        fetch_site="same-origin",
        session_key="alice-login",
        visitor=None,
        session_id=new_session_id(),
    )
    return Caller(**{**defaults, **fields})


def bind(caller: Caller, user, notebook=SQUARE, *, open_websocket=True):
    """Bind ``caller``'s session to its login, as the consumer does."""
    owner = caller.owner(user)
    owners.bindings.claim(
        caller.session_id,
        owner=owner,
        notebook=notebook.slug,
        user_context={},
        user_id=getattr(user, "pk", None),
    )
    if not open_websocket:
        owners.bindings.release(caller.session_id, owner)
    return owner


@pytest.fixture(autouse=True)
def fresh_bindings(monkeypatch):
    """Each test starts with no session bound (bindings are per process)."""
    monkeypatch.setattr(owners, "bindings", owners.SessionBindings())


@pytest.fixture
def alice():
    return SimpleNamespace(pk=1, is_authenticated=True, is_active=True)


# What a request says: the same from an ASGI scope and a Django request.


def test_a_caller_from_an_http_scope_reads_headers_and_cookies():
    visitor = owners.new_visitor_cookie()
    scope = {
        "type": "http",
        "scheme": "https",
        "headers": [
            (b"host", b"example.com"),
            (b"origin", b"https://example.com"),
            (b"sec-fetch-site", b"same-origin"),
            (b"marimo-session-id", b"s_abc123"),
            (b"cookie", f"sessionid=k3y; django_notebooks_visitor={visitor}".encode()),
        ],
    }
    read = Caller.from_scope(scope)
    assert (read.host, read.scheme, read.origin) == (
        "example.com",
        "https",
        "https://example.com",
    )
    assert read.session_key == "k3y"
    assert read.visitor == owners.visitor_from_cookie(visitor)
    assert read.session_id == "s_abc123"


def test_a_caller_from_a_websocket_scope_takes_channels_session_and_the_query():
    scope = {
        "type": "websocket",
        "headers": [(b"host", b"testserver"), (b"cookie", b"sessionid=stale")],
        "query_string": b"session_id=s_xyz&kiosk=false",
        "session": SimpleNamespace(session_key="from-middleware"),
        "client": ("203.0.113.9", 50123),
    }
    read = Caller.from_scope(scope)
    assert read.session_key == "from-middleware"
    assert read.session_id == "s_xyz"
    # The caps on anonymous sessions count by address (not by port).
    assert read.address == "203.0.113.9"


def test_a_caller_from_a_django_request_reads_the_same():
    request = RequestFactory().post(
        "/notebooks/square/api/kernel/set_ui_element_value",
        HTTP_ORIGIN="http://testserver",
        HTTP_MARIMO_SESSION_ID="s_abc123",
        HTTP_SEC_FETCH_SITE="same-origin",
    )
    request.session = SimpleNamespace(session_key="k3y")
    # The same-site caller the other tests make, with this login and session.
    expected = caller(session_key="k3y", session_id="s_abc123", address="127.0.0.1")
    assert Caller.from_request(request) == expected


def test_a_forged_visitor_cookie_is_no_visitor():
    scope = {"type": "http", "headers": [(b"cookie", b"django_notebooks_visitor=me")]}
    assert Caller.from_scope(scope).visitor is None


# Kernel calls.


@pytest.mark.django_db
async def test_the_owner_of_an_open_session_is_admitted(alice):
    call = caller()
    bind(call, alice)
    admitted = admission.kernel_call(SQUARE, call)
    assert isinstance(admitted, owners.Binding)


@pytest.mark.parametrize(
    ("fields", "refusal"),
    [
        ({"origin": "https://evil.example"}, admission.CROSS_SITE),
        ({"origin": None, "fetch_site": "cross-site"}, admission.CROSS_SITE),
        ({"session_id": None}, admission.NO_SESSION_HEADER),
        ({"session_id": ""}, admission.NO_SESSION_HEADER),
    ],
)
async def test_calls_refused_before_any_session_is_looked_up(fields, refusal):
    assert admission.kernel_call(SQUARE, caller(**fields)) == refusal


@pytest.mark.django_db
async def test_a_session_whose_websocket_closed_has_ended(alice):
    call = caller()
    bind(call, alice, open_websocket=False)
    assert admission.kernel_call(SQUARE, call) == admission.SESSION_ENDED


@pytest.mark.django_db
async def test_another_login_or_notebook_is_a_stranger(alice):
    call = caller()
    bind(call, alice)
    for stranger in (
        caller(session_id=call.session_id, session_key="bobs-login"),
        caller(session_id=call.session_id, session_key=None, visitor="v1"),
    ):
        answer = admission.kernel_call(SQUARE, stranger)
        assert answer == admission.NotHere(call.session_id)
        # Allowed to use the notebook, the stranger learns it is not theirs.
        stranger_answer = admission.Stranger(call.session_id)
        assert admission.stranger_refusal(stranger_answer) == admission.NOT_YOURS
    other_notebook = admission.kernel_call(PUBLIC, call)
    assert other_notebook == admission.NotHere(call.session_id)


@pytest.mark.django_db
async def test_a_session_no_process_knows_has_ended():
    call = caller()
    assert admission.kernel_call(SQUARE, call) == admission.NotHere(call.session_id)
    stranger = admission.Stranger(call.session_id)
    assert admission.stranger_refusal(stranger) == admission.SESSION_ENDED


@pytest.mark.parametrize(
    ("body", "refusal"),
    [
        (b"", None),
        (b'{"objectIds": []}', None),
        (b"{not json", admission.NOT_JSON),
        (b"[1, 2]", admission.NOT_AN_OBJECT),
        (b'"text"', admission.NOT_AN_OBJECT),
    ],
)
def test_bodies(body, refusal):
    assert admission.body_refusal(body) == refusal


def test_refusals_answer_json():
    assert admission.SESSION_ENDED.body() == (
        b'{"error": "This notebook session has ended: reload the page."}'
    )


# Downloads.


def test_a_download_is_its_owners_only(alice):
    call = caller()
    bind(call, alice)
    owners.bindings.add_files(call.session_id, {"12-data.csv"})
    here = registry.Location(SQUARE, "@file/12-data.csv")
    # The session whose kernel made it answers it.
    assert admission.download_here(here, call.owner(alice)) == call.session_id
    bob_call = caller(session_key="bobs-login")
    assert admission.download_here(here, bob_call.owner(alice)) is None
    # Without a login (or visitor cookie) nobody owns a download: the view
    # answers 404 before asking.
    assert caller(session_key=None).owner(AnonymousUser()) is None
    # The process holding the session asks the same question by session id.
    assert admission.owned_download(SQUARE, call, "@file/12-data.csv")
    assert not admission.owned_download(SQUARE, call, "@file/13-other.csv")
    assert not admission.owned_download(SQUARE, bob_call, "@file/12-data.csv")


# The kernel websocket.


def websocket_scope(
    user, session_id="s_ws0001", *, origin="http://testserver", query=""
):
    headers = [(b"host", b"testserver")]
    if origin:
        headers.append((b"origin", origin.encode()))
    return {
        "type": "websocket",
        "headers": headers,
        "query_string": f"session_id={session_id}{query}".encode(),
        "user": user,
        "session": SimpleNamespace(session_key="alice-websocket-login"),
    }


@pytest.fixture
def member(db):
    return User.objects.create_user("member")


@pytest.fixture
def carol(db):
    return User.objects.create_user("carol")


@pytest.mark.django_db
async def test_a_websocket_is_admitted_and_its_session_bound(carol):
    session_id = new_session_id()
    admitted = await admission.websocket(SQUARE, websocket_scope(carol, session_id))
    assert isinstance(admitted, admission.WebsocketAdmission)
    assert admitted.session_id == session_id
    binding = owners.bindings.get_for_login(
        session_id,
        notebook="square",
        session_key="alice-websocket-login",
        visitor=None,
    )
    assert binding is not None and binding.connections == 1


@pytest.mark.django_db
async def test_websockets_refused_before_the_handshake(alice, member):
    assert (
        await admission.websocket(
            SQUARE, websocket_scope(alice, origin="https://evil.example")
        )
        == admission.REFUSED
    )
    assert (
        await admission.websocket(SQUARE, websocket_scope(AnonymousUser()))
        == admission.REFUSED
    )
    assert (
        await admission.websocket(STAFF_ONLY, websocket_scope(member))
        == admission.REFUSED
    )
    missing_id = await admission.websocket(SQUARE, websocket_scope(alice, ""))
    assert missing_id == admission.WebsocketRefusal(admission.CLOSE_BAD_REQUEST)


@pytest.mark.django_db
async def test_a_websocket_for_someone_elses_session_is_refused(carol):
    session_id = new_session_id()
    owners.bindings.claim(
        session_id, owner="user:2:bobs-login", notebook="square", user_context={}
    )
    refused = await admission.websocket(SQUARE, websocket_scope(carol, session_id))
    assert refused == admission.REFUSED


@pytest.mark.django_db
async def test_an_anonymous_visitor_needs_the_visitor_cookie():
    refused = await admission.websocket(PUBLIC, websocket_scope(AnonymousUser()))
    assert refused == admission.REFUSED


@pytest.mark.django_db
@override_settings(DJANGO_NOTEBOOKS={"MAX_SESSIONS_PER_USER": 1})
async def test_over_the_cap_the_page_is_told_why(carol):
    user = carol
    first = await admission.websocket(SQUARE, websocket_scope(user, new_session_id()))
    assert isinstance(first, admission.WebsocketAdmission)
    second = await admission.websocket(SQUARE, websocket_scope(user, new_session_id()))
    assert second.code == admission.CLOSE_TOO_MANY
    assert second.notice.title == "Too many open notebook sessions"


@pytest.fixture
def ended_kernels(monkeypatch):
    """The sessions whose kernel admission ends: (notebook, session, notice)."""
    ended = []
    monkeypatch.setattr(
        router,
        "end_session",
        lambda notebook, session_id, notice: ended.append(
            (notebook.slug, session_id, notice)
        ),
    )
    return ended


@pytest.mark.django_db
@notebooks_with(MAX_SESSIONS_PER_USER=1)
async def test_at_the_cap_the_kernel_of_a_closed_tab_is_ended_to_make_room(
    carol, ended_kernels
):
    closed_id = new_session_id()
    first = await admission.websocket(SQUARE, websocket_scope(carol, closed_id))
    owners.bindings.release(closed_id, first.owner)
    again = await admission.websocket(SQUARE, websocket_scope(carol, new_session_id()))
    assert isinstance(again, admission.WebsocketAdmission)
    assert ended_kernels == [("square", closed_id, notices.MADE_ROOM)]
    assert not owners.bindings.knows(closed_id)
    # An open page is not ended: the next one is refused.
    refused = await admission.websocket(SQUARE, websocket_scope(carol))
    assert refused.notice.title == "Too many open notebook sessions"
    assert len(ended_kernels) == 1


@pytest.mark.django_db
@notebooks_with(MAX_SESSIONS_PER_USER=1)
async def test_a_closed_tab_that_cannot_be_ended_does_not_keep_the_new_session_out(
    carol, monkeypatch, caplog
):
    def fails(notebook, session_id, notice):
        raise RuntimeError("marimo moved")

    monkeypatch.setattr(router, "end_session", fails)
    closed_id = new_session_id()
    first = await admission.websocket(SQUARE, websocket_scope(carol, closed_id))
    owners.bindings.release(closed_id, first.owner)
    again = await admission.websocket(SQUARE, websocket_scope(carol, new_session_id()))
    assert isinstance(again, admission.WebsocketAdmission)
    assert f"Could not end the kernel of closed notebook session {closed_id}" in (
        caplog.text
    )


@pytest.mark.django_db
@notebooks_with(MAX_SESSIONS_PER_USER=1)
async def test_the_kernel_of_a_notebook_no_longer_served_is_ended_too(
    carol, monkeypatch, ended_kernels
):
    """Its kernel process is ended directly, and the new session waits for
    it to exit."""
    closed_id = new_session_id()
    gone = registry.Notebook("gone", NOTEBOOKS_DIR / "square.py", "Gone")
    first = await admission.websocket(gone, websocket_scope(carol, closed_id))
    owners.bindings.release(closed_id, first.owner)
    process = SimpleNamespace(exited=threading.Event(), ended_with=None)

    def end(notice):
        process.ended_with = notice
        process.exited.set()

    process.end = end
    monkeypatch.setattr(
        router,
        "process_of",
        lambda session_id: process if session_id == closed_id else None,
    )
    again = await admission.websocket(SQUARE, websocket_scope(carol, new_session_id()))
    assert isinstance(again, admission.WebsocketAdmission)
    assert process.ended_with == notices.MADE_ROOM
    assert ended_kernels == []


def visitor_scope(session_id: str, address: str) -> dict:
    """A new anonymous visitor's websocket (with its visitor cookie)."""
    scope = websocket_scope(AnonymousUser(), session_id)
    cookie = f"{owners.VISITOR_COOKIE}={owners.new_visitor_cookie()}"
    scope["headers"].append((b"cookie", cookie.encode()))
    scope["client"] = (address, 40000)
    return scope


@pytest.mark.django_db
@notebooks_with(LIMITS={"MAX_SESSIONS": 3, "MAX_ANONYMOUS_SESSIONS": 1})
async def test_past_the_visitors_share_a_visitor_is_told_the_notebook_is_busy(
    carol, ended_kernels
):
    first = await admission.websocket(PUBLIC, visitor_scope("s_v00001", "10.0.0.1"))
    assert isinstance(first, admission.WebsocketAdmission)
    refused = await admission.websocket(PUBLIC, visitor_scope("s_v00002", "10.0.0.2"))
    assert refused.code == admission.CLOSE_TOO_MANY
    assert refused.notice == notices.VISITORS_BUSY
    # A site without logins must not promise one.
    assert "If you have an account on this site" in refused.notice.text
    # A logged-in user still gets in.
    admitted = await admission.websocket(PUBLIC, websocket_scope(carol, "s_u00001"))
    assert isinstance(admitted, admission.WebsocketAdmission)
    assert ended_kernels == []


@pytest.mark.django_db
async def test_invalid_query_parameters_are_explained_on_the_page(carol):
    notebook = registry.Notebook(
        "query", NOTEBOOKS_DIR / "query.py", "Query", query=SalesQuery
    )
    refused = await admission.websocket(
        notebook, websocket_scope(carol, query="&region=Atlantis")
    )
    assert refused.code == admission.CLOSE_BAD_REQUEST
    assert refused.notice.reason == "MARIMO_NO_SESSION"
    assert "region" in refused.notice.text
