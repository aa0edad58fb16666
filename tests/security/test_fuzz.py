"""Attack: malformed input. Thousands of random paths, encodings, methods,
headers, query strings and bodies, sent as raw HTTP to a real server while a
real notebook session is open, never produce a server error; neither do
random websocket handshakes; and the notebook still works afterwards."""

from __future__ import annotations

import asyncio
import json
import socket
import string
from urllib.parse import quote

import marimo
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from websockets.sync.client import connect

from tests.live import NotebookClient, new_session_id

FUZZ = settings(
    max_examples=1500,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)

NOTEBOOK_PREFIXES = st.sampled_from(
    [
        "square/",
        "hello/",
        "sales/",
        "lab/demo/",
        "lab/",
        "nope/",
        "",
        "square",
        "lab/_private/",
        "files/",
        # marimo's frontend files, and every prefix marimo_routes.py lets
        # through below a notebook.
        "_marimo/",
        f"_marimo/{marimo.__version__}/",
        f"_marimo/{marimo.__version__}/assets/",
        "square/assets/",
        "hello/public/",
        "files/@file/",
        "square/api/kernel/",
        "lab/demo/public/",
    ]
)
SEGMENTS = st.one_of(
    st.sampled_from(
        [
            "api",
            "kernel",
            "set_ui_element_value",
            "function_call",
            "set_model_value",
            "assets",
            "@file",
            "public",
            "health",
            "ws",
            "..",
            ".",
            "%2e%2e",
            "%2f",
            "%00",
            "%ff",
            "~",
            "favicon.ico",
            "12-x.txt",
            "og",
            "thumbnail",
            "version",
            "sse",
            "%5c",
            "interrupt",
            "sse",
            "auth",
            "login",
            "home",
            "workspace_files",
            "status",
            "connections",
            "read_code",
            "public-files-sw.js",
            "12-3456-AbCdEfGh.csv",
            "26-psm_0123abcd",
            "x" * 300,
        ]
    ),
    st.text(
        alphabet=string.ascii_letters + string.digits + "-._~%!$&'()*+,;=:@",
        max_size=12,
    ),
    st.text(max_size=6).map(lambda text: quote(text, safe="")),
)
PATHS = st.builds(
    lambda prefix, parts: "/notebooks/" + prefix + "/".join(parts),
    NOTEBOOK_PREFIXES,
    st.lists(SEGMENTS, max_size=4),
)
TOKEN = st.text(
    alphabet=string.ascii_letters + string.digits + "-_", min_size=1, max_size=20
)
HEADER_VALUE = st.text(alphabet="".join(chr(c) for c in range(32, 127)), max_size=40)
BODIES = st.one_of(
    st.binary(max_size=300),
    st.sampled_from(
        [
            b"",
            b"{}",
            b"[]",
            b"null",
            b'"x"',
            b'{"objectIds": [], "values": []}',
            b'{"objectIds": ["x"], "values": [1, 2]}',
            b'{"objectIds": 5}',
            b'{"objectIds": [null], "values": [{}]}',
            b'{"functionCallId": "x", "namespace": "y", "functionName": "z", "args": {}}',
            b'{"modelId": "m", "message": {}, "buffers": []}',
            b'{"a": ' * 50 + b"1" + b"}" * 50,
        ]
    ),
)


class RawServer:
    """Sends requests exactly as given (no client-side normalisation)."""

    def __init__(self, base_url: str, cookie: str) -> None:
        host, port = base_url.removeprefix("http://").split(":")
        self.host, self.port, self.cookie = host, int(port), cookie

    def request(
        self, method: str, target: str, headers: dict[str, str], body: bytes
    ) -> int:
        lines = [
            f"{method} {target} HTTP/1.1",
            f"Host: {self.host}:{self.port}",
            "Connection: close",
        ]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        lines.append(f"Content-Length: {len(body)}")
        raw = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
        with socket.create_connection((self.host, self.port), timeout=30) as sock:
            sock.sendall(raw)
            status_line = sock.makefile("rb").readline()
        return int(status_line.split()[1])


@pytest.fixture(scope="module")
def open_session(notebook_server):
    """alice, logged in, with a real kernel session open on the square notebook."""

    async def login() -> str:
        async with NotebookClient(notebook_server.url) as client:
            await client.login("alice")
            return client.cookie_header()

    cookie = asyncio.run(login())
    session_id = new_session_id()
    ws_url = (
        notebook_server.url.replace("http://", "ws://")
        + f"/notebooks/square/ws?session_id={session_id}"
    )
    with connect(
        ws_url,
        additional_headers={"Cookie": cookie, "Origin": notebook_server.url},
        max_size=None,
    ) as websocket:
        while json.loads(websocket.recv(timeout=60)).get("op") != "completed-run":
            pass
        yield RawServer(notebook_server.url, cookie), session_id, websocket


def origin_header(server, origin: str) -> str:
    """The Origin header a fuzzed request names: its own site's, another's,
    or a sandboxed page's."""
    return {
        "self": f"http://{server.host}:{server.port}",
        "evil": "https://evil.example",
        "null": "null",
    }[origin]


@pytest.mark.e2e
@FUZZ
@given(
    path=PATHS,
    method=st.sampled_from(
        ["GET", "POST", "HEAD", "PUT", "DELETE", "OPTIONS", "PATCH", "PROPFIND"]
    ),
    query=st.text(
        alphabet=string.ascii_letters + string.digits + "=&%+;/?:@", max_size=30
    ),
    body=BODIES,
    content_type=st.sampled_from(
        [
            "application/json",
            "text/plain",
            "multipart/form-data; boundary=x",
            "application/x-www-form-urlencoded",
            None,
        ]
    ),
    use_session=st.sampled_from(["own", "other", "garbage", None]),
    garbage=TOKEN,
    origin=st.sampled_from(["self", "evil", "null", None]),
    extra=st.dictionaries(
        st.sampled_from(
            [
                "Authorization",
                "Referer",
                "Sec-Fetch-Site",
                "Accept-Encoding",
                "Range",
                "X-Notebook-Id",
                "If-None-Match",
                "Content-Encoding",
            ]
        ),
        HEADER_VALUE,
        max_size=3,
    ),
    logged_in=st.booleans(),
)
def test_forwarding_view_never_errors(
    open_session,
    path,
    method,
    query,
    body,
    content_type,
    use_session,
    garbage,
    origin,
    extra,
    logged_in,
):
    server, own_session, _ = open_session
    headers = dict(extra)
    if logged_in:
        headers["Cookie"] = server.cookie
    if content_type:
        headers["Content-Type"] = content_type
    if use_session:
        headers["Marimo-Session-Id"] = {
            "own": own_session,
            "other": "s_abcdef",
            "garbage": garbage,
        }[use_session]
    if origin:
        headers["Origin"] = origin_header(server, origin)
    target = path + (f"?{query}" if query else "")
    status = server.request(method, target, headers, body)
    event(f"status {status}")
    assert status < 500, (method, target, headers, body[:200], status)


@pytest.mark.e2e
@settings(FUZZ, max_examples=300)
@given(
    path=PATHS.map(lambda p: p.rstrip("/") + "/ws"),
    query=st.one_of(
        st.just("session_id=s_fuzz01"),
        st.text(alphabet=string.ascii_letters + "=&%_", max_size=30),
    ),
    origin=st.sampled_from(["self", "evil", "null", None]),
    logged_in=st.booleans(),
)
def test_websocket_handshakes_never_error(open_session, path, query, origin, logged_in):
    server, _, _ = open_session
    headers = {
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
    }
    if logged_in:
        headers["Cookie"] = server.cookie
    if origin:
        headers["Origin"] = origin_header(server, origin)
    status = server.request("GET", f"{path}?{query}", headers, b"")
    event(f"status {status}")
    assert status < 500 or status == 101, (path, query, headers, status)


@pytest.mark.e2e
def test_notebook_still_works_after_the_fuzzing(open_session, notebook_server):
    _, session_id, websocket = open_session

    async def interact() -> None:
        async with NotebookClient(notebook_server.url) as client:
            await client.login("alice")
            async with client.kernel("/notebooks/square/") as kernel:
                await kernel.read_until_completed()
                [slider] = kernel.ui_element_ids()
                assert (await kernel.set_ui_value(slider, 6)).status_code == 200
                await kernel.read_until_completed()
                assert "square=36 user=alice" in " ".join(kernel.outputs)

    asyncio.run(interact())
    websocket.ping().wait(10)  # the fuzzed session's socket is still alive
