"""The test proxy (tests/proxy.py) itself, against small uvicorn backends:
routing per request on kept-alive connections, bodies in both framings,
websockets piped both ways, and a 502 for a backend that is down."""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest
import uvicorn
import websockets

from tests.live import free_port
from tests.proxy import Proxy


def echo_app(name: str):
    """An ASGI app that says who it is and what it received."""

    async def app(scope, receive, send):
        if scope["type"] == "websocket":
            await receive()  # websocket.connect
            await send({"type": "websocket.accept"})
            while (message := await receive())["type"] == "websocket.receive":
                await send(
                    {"type": "websocket.send", "text": f"{name}:{message['text']}"}
                )
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        if scope["path"] == "/chunked":  # no Content-Length: uvicorn chunks it
            await send({"type": "http.response.start", "status": 200, "headers": []})
            for part in (b"one,", b"two,", b"three"):
                await send(
                    {"type": "http.response.body", "body": part, "more_body": True}
                )
            await send({"type": "http.response.body", "body": b""})
            return
        answer = json.dumps(
            {
                "backend": name,
                "method": scope["method"],
                "path": scope["path"],
                "body": body.decode(),
                "host": dict(scope["headers"]).get(b"host", b"").decode(),
            }
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(answer)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": answer})

    return app


class Backend:
    def __init__(self, name: str) -> None:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        config = uvicorn.Config(
            echo_app(name),
            host="127.0.0.1",
            port=port,
            lifespan="off",
            log_level="error",
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert time.monotonic() < deadline, "backend did not start"
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture
def backends():
    started = [Backend(name) for name in ("a", "b")]
    yield started
    for backend in started:
        backend.stop()


def test_routes_each_request_of_a_kept_alive_connection_by_prefix(backends):
    a, b = backends
    with (
        Proxy.by_prefix({"/notebooks/": a.url}, default=b.url) as proxy,
        httpx.Client(base_url=proxy.url) as client,
    ):
        seen = [
            client.get("/notebooks/square/").json(),
            client.post("/accounts/login/", content=b"x" * 100_000).json(),
            client.head("/notebooks/square/"),
            client.get("/chunked"),
            client.post("/notebooks/square/api", json={"n": 1}).json(),
        ]
        assert [seen[0]["backend"], seen[1]["backend"], seen[4]["backend"]] == [
            "a",
            "b",
            "a",
        ]
        assert len(seen[1]["body"]) == 100_000
        assert seen[2].status_code == 200 and seen[2].content == b""
        assert seen[3].text == "one,two,three"
        assert seen[4]["body"] == '{"n":1}'
        # The backends see the Host the client sent, as behind nginx.
        assert seen[0]["host"] == proxy.url.removeprefix("http://")
        assert [(method, backend) for method, _, backend in proxy.routed] == [
            ("GET", a.url),
            ("POST", b.url),
            ("HEAD", a.url),
            ("GET", b.url),
            ("POST", a.url),
        ]


def test_round_robin_a_backend_down_and_removed(backends):
    a, b = backends
    with (
        Proxy.round_robin([a.url, b.url]) as proxy,
        httpx.Client(base_url=proxy.url) as client,
    ):
        names = [client.get("/").json()["backend"] for _ in range(4)]
        assert names == ["a", "b", "a", "b"]

        b.stop()
        answers = [client.get("/") for _ in range(2)]
        assert [r.status_code for r in answers] == [200, 502]
        assert "is down" in answers[1].text

        proxy.remove_backend(b.url)
        assert {client.get("/").json()["backend"] for _ in range(3)} == {"a"}
        proxy.remove_backend(a.url)
        assert client.get("/").status_code == 502


async def test_pipes_websockets_both_ways(backends):
    a, b = backends
    with Proxy.by_prefix({"/ws/": b.url}, default=a.url) as proxy:
        ws_url = proxy.url.replace("http://", "ws://") + "/ws/echo"
        async with websockets.connect(ws_url) as websocket:
            for text in ("hello", "again"):
                await websocket.send(text)
                assert await websocket.recv() == f"b:{text}"
        # The backend going away closes the client's websocket.
        async with websockets.connect(ws_url) as websocket:
            await websocket.send("ping")
            assert await websocket.recv() == "b:ping"
            b.stop()
            with pytest.raises(websockets.ConnectionClosed):
                await websocket.recv()
