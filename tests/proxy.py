"""A small HTTP/1.1 reverse proxy for end-to-end tests: what nginx or a load
balancer does in front of the servers, on a free loopback port.

Each request is routed on its own (a keep-alive connection from the client
may send consecutive requests to different backends), websocket upgrades are
piped both ways once the backend accepts them, and a backend that cannot be
reached gets a 502::

    with Proxy.round_robin([a.url, b.url]) as proxy:          # a load balancer
        ...NotebookClient(proxy.url)...
        proxy.remove_backend(a.url)                           # its health check

    with Proxy.by_prefix({"/notebooks/": asgi.url}, default=wsgi.url) as proxy:
        ...
        proxy.routed   # [(method, path, backend url), ...] in order

Or any rule: ``Proxy([a, b], route=lambda request, backends: ...)`` returning
the URL of the backend for a :class:`RequestHead`. The proxy runs in a
thread with its own event loop, so sync and async tests can use it alike.

The backends see the client's ``Host`` header (as behind nginx with
``proxy_set_header Host $http_host``) and ``Connection: close``: one backend
connection per request keeps the framing simple. Not supported: ``Expect:
100-continue`` bodies and pipelined requests.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "upgrade"}
MAX_HEAD = 64 * 1024


@dataclass(frozen=True)
class RequestHead:
    """A request as the router sees it."""

    method: str
    target: str  # path and query, as sent
    version: str
    headers: list[tuple[str, str]]

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]

    def header(self, name: str) -> str | None:
        name = name.lower()
        return next((v for k, v in self.headers if k.lower() == name), None)

    @property
    def is_websocket(self) -> bool:
        return (self.header("upgrade") or "").lower() == "websocket"


Route = Callable[[RequestHead, Sequence[str]], str]


class Proxy:
    """A reverse proxy over ``backends`` (``http://host:port`` URLs);
    ``route`` picks the backend of each request from the current list."""

    def __init__(self, backends: Sequence[str], route: Route) -> None:
        self.backends = list(backends)
        self.route = route
        self.routed: list[tuple[str, str, str]] = []
        self.url = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._tasks: set[asyncio.Task] = set()

    @classmethod
    def round_robin(cls, backends: Sequence[str]) -> Proxy:
        """Each request to the next backend in turn, as a load balancer
        without sticky sessions."""
        turn = itertools.count()
        return cls(backends, lambda request, live: live[next(turn) % len(live)])

    @classmethod
    def by_prefix(cls, prefixes: Mapping[str, str], *, default: str) -> Proxy:
        """Paths starting with a prefix to its backend, the rest to
        ``default`` (nginx ``location /prefix/`` blocks)."""

        def route(request: RequestHead, live: Sequence[str]) -> str:
            for prefix, backend in prefixes.items():
                if request.path.startswith(prefix):
                    return backend
            return default

        return cls([*prefixes.values(), default], route)

    def remove_backend(self, url: str) -> None:
        """Take a backend out of the rotation (a failed health check)."""
        self.backends = [backend for backend in self.backends if backend != url]

    def add_backend(self, url: str) -> None:
        self.backends = [*self.backends, url]

    # Running ----------------------------------------------------------------

    def __enter__(self) -> Proxy:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        started = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._run, args=(started,), name="test-proxy", daemon=True
        )
        self._thread.start()
        if not started.wait(10):
            raise RuntimeError("the proxy did not start")

    def _run(self, started: threading.Event) -> None:
        assert self._loop is not None
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(
            asyncio.start_server(self._serve_client, "127.0.0.1", 0)
        )
        port = server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        self._server = server
        started.set()
        self._loop.run_forever()

    def stop(self) -> None:
        """Close the listening socket and every connection; wait for it."""
        if self._loop is None or self._thread is None:
            return
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()
        self._loop = None

    async def _shutdown(self) -> None:
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    # Proxying ---------------------------------------------------------------

    async def _serve_client(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            while await self._exchange(reader, writer):
                pass
        except (OSError, asyncio.IncompleteReadError, ValueError):
            pass  # a connection dropped or spoke nonsense: close it
        finally:
            self._tasks.discard(task)
            writer.close()

    async def _exchange(
        self, client_in: asyncio.StreamReader, client_out: asyncio.StreamWriter
    ) -> bool:
        """Proxy one request; whether the client connection stays open."""
        head = await read_head(client_in)
        if head is None:
            return False
        method, target, version = head[0].split(" ", 2)
        request = RequestHead(method, target, version, parse_headers(head[1:]))
        backends = list(self.backends)
        backend = self.route(request, backends) if backends else ""
        self.routed.append((method, target, backend))
        client_keeps = (
            version == "HTTP/1.1"
            and "close" not in (request.header("connection") or "").lower()
        )
        try:
            location = urlsplit(backend)
            backend_in, backend_out = await asyncio.open_connection(
                location.hostname, location.port
            )
        except (OSError, ValueError):
            await copy_body(client_in, None, request.headers)  # read, discard
            await write_502(client_out, f"backend {backend!r} is down")
            return client_keeps
        try:
            sent = [(k, v) for k, v in request.headers if k.lower() not in HOP_BY_HOP]
            if request.is_websocket:
                sent += [("Upgrade", "websocket"), ("Connection", "Upgrade")]
            else:
                sent.append(("Connection", "close"))
            try:
                backend_out.write(encode_head(head[0], sent))
                await copy_body(client_in, backend_out, request.headers)
            except OSError:  # the backend went away while taking the request
                await write_502(client_out, f"{backend} closed the connection")
                return False
            while True:
                try:
                    reply = await read_head(backend_in)
                except (OSError, asyncio.IncompleteReadError):
                    reply = None
                if reply is None:  # the backend died before answering
                    await write_502(client_out, f"{backend} closed the connection")
                    return client_keeps
                status = int(reply[0].split(" ", 2)[1])
                if not (100 <= status < 200) or status == 101:
                    break
                client_out.write(encode_head(reply[0], parse_headers(reply[1:])))
            headers = parse_headers(reply[1:])
            if status == 101 and request.is_websocket:
                client_out.write(encode_head(reply[0], headers))
                await pipe_both_ways(client_in, client_out, backend_in, backend_out)
                return False
            no_body = method == "HEAD" or status in (204, 304)
            framed = no_body or any(
                k.lower() in ("content-length", "transfer-encoding") for k, _ in headers
            )
            keep = client_keeps and framed
            kept = [(k, v) for k, v in headers if k.lower() not in HOP_BY_HOP]
            if not keep:
                kept.append(("Connection", "close"))
            client_out.write(encode_head(reply[0], kept))
            if not no_body:
                await copy_body(backend_in, client_out, headers, until_eof=not framed)
            await client_out.drain()
            return keep
        finally:
            backend_out.close()


async def read_head(reader: asyncio.StreamReader) -> list[str] | None:
    """The lines of a request or response head; None at a clean end."""
    try:
        raw = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as error:
        if error.partial.strip():
            raise
        return None
    except asyncio.LimitOverrunError as error:
        raise ValueError("head too long") from error
    if len(raw) > MAX_HEAD:
        raise ValueError("head too long")
    return raw.decode("latin-1").split("\r\n")[:-2]


def parse_headers(lines: list[str]) -> list[tuple[str, str]]:
    pairs = []
    for line in lines:
        name, _, value = line.partition(":")
        pairs.append((name.strip(), value.strip()))
    return pairs


def encode_head(first_line: str, headers: list[tuple[str, str]]) -> bytes:
    lines = [first_line, *(f"{k}: {v}" for k, v in headers), "", ""]
    return "\r\n".join(lines).encode("latin-1")


async def copy_body(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter | None,
    headers: list[tuple[str, str]],
    *,
    until_eof: bool = False,
) -> None:
    """Copy one message body as framed by ``headers`` (chunks stay chunks);
    ``writer=None`` reads and drops it."""

    def send(data: bytes) -> None:
        if writer is not None:
            writer.write(data)

    lowered = {k.lower(): v for k, v in headers}
    if "chunked" in lowered.get("transfer-encoding", "").lower():
        while True:
            size_line = await reader.readuntil(b"\r\n")
            send(size_line)
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                break
            send(await reader.readexactly(size + 2))
            if writer is not None:
                await writer.drain()
        while True:  # trailers, up to the empty line
            line = await reader.readuntil(b"\r\n")
            send(line)
            if line == b"\r\n":
                break
    elif "content-length" in lowered:
        remaining = int(lowered["content-length"])
        while remaining:
            data = await reader.read(min(remaining, 65536))
            if not data:
                raise asyncio.IncompleteReadError(b"", remaining)
            send(data)
            remaining -= len(data)
            if writer is not None:
                await writer.drain()
    elif until_eof:
        while data := await reader.read(65536):
            send(data)
            if writer is not None:
                await writer.drain()
    if writer is not None:
        await writer.drain()


async def write_502(writer: asyncio.StreamWriter, reason: str) -> None:
    body = f"502 Bad Gateway: {reason}\n".encode()
    writer.write(
        encode_head(
            "HTTP/1.1 502 Bad Gateway",
            [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))],
        )
        + body
    )
    await writer.drain()


async def pipe_both_ways(
    client_in: asyncio.StreamReader,
    client_out: asyncio.StreamWriter,
    backend_in: asyncio.StreamReader,
    backend_out: asyncio.StreamWriter,
) -> None:
    """Copy bytes both ways until either side closes; then close both (a
    backend that dies drops the client's websocket, as behind nginx)."""

    async def copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except OSError:
            pass

    tasks = [
        asyncio.ensure_future(copy(client_in, backend_out)),
        asyncio.ensure_future(copy(backend_in, client_out)),
    ]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        backend_out.close()
        client_out.close()
