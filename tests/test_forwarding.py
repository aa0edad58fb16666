"""forward_http(): running an ASGI app for a Django view, with small fake apps
standing in for marimo."""

from __future__ import annotations

import asyncio
import contextlib
import gc
from contextlib import aclosing

import pytest
from django.http import HttpResponse, StreamingHttpResponse

from django_notebooks.marimo.forwarding import QUEUE_SIZE, UpstreamError, forward_http
from tests.helpers import async_wait_until

SCOPE = {"type": "http", "method": "GET", "path": "/notebooks/square/", "headers": []}
WAIT = 2.0


def start(status=200, headers=()):
    return {"type": "http.response.start", "status": status, "headers": list(headers)}


def body(data: bytes, more: bool = False):
    return {"type": "http.response.body", "body": data, "more_body": more}


async def forward(app, body_bytes: bytes = b""):
    return await asyncio.wait_for(forward_http(app, dict(SCOPE), body_bytes), WAIT)


async def read_all(response: StreamingHttpResponse) -> bytes:
    return b"".join([chunk async for chunk in response.streaming_content])


async def test_single_body_answer_is_an_http_response_with_status_and_headers():
    async def app(scope, receive, send):
        await send(
            start(201, [(b"content-type", b"application/json"), (b"x-marimo", b"yes")])
        )
        await send(body(b'{"success": true}'))

    response = await forward(app)
    assert type(response) is HttpResponse
    assert response.status_code == 201
    assert response.content == b'{"success": true}'
    assert response["Content-Type"] == "application/json"
    assert response["X-Marimo"] == "yes"


async def test_error_statuses_pass_through():
    async def app(scope, receive, send):
        await send(start(404, [(b"content-type", b"text/plain")]))
        await send(body(b"Not Found"))

    response = await forward(app)
    assert response.status_code == 404
    assert response.content == b"Not Found"


async def test_answer_without_body_message_is_empty():
    async def app(scope, receive, send):
        await send(start(304, [(b"etag", b'"abc"')]))

    response = await forward(app)
    assert response.status_code == 304
    assert response.content == b""
    assert response["ETag"] == '"abc"'


async def test_cors_hop_by_hop_and_set_cookie_headers_are_dropped():
    async def app(scope, receive, send):
        await send(
            start(
                200,
                [
                    (b"access-control-allow-origin", b"*"),
                    (b"Access-Control-Allow-Credentials", b"true"),
                    (b"access-control-allow-methods", b"*"),
                    (b"access-control-allow-headers", b"*"),
                    (b"access-control-expose-headers", b"*"),
                    (b"access-control-max-age", b"600"),
                    (b"set-cookie", b"sessionid=stolen; Path=/"),
                    (b"Set-Cookie", b"other=1"),
                    (b"connection", b"keep-alive"),
                    (b"transfer-encoding", b"chunked"),
                    (b"content-type", b"text/plain"),
                ],
            )
        )
        await send(body(b"ok"))

    response = await forward(app)
    kept = {name.lower() for name in response.headers}
    assert not {name for name in kept if name.startswith("access-control-")}
    assert "set-cookie" not in kept
    assert "connection" not in kept and "transfer-encoding" not in kept
    assert response.cookies == {}
    assert response["Content-Type"] == "text/plain"


async def test_repeated_headers_are_folded_and_content_length_is_djangos():
    async def app(scope, receive, send):
        await send(
            start(
                200,
                [
                    (b"vary", b"Accept-Encoding"),
                    (b"Vary", b"Origin"),
                    (b"content-length", b"999"),
                ],
            )
        )
        await send(body(b"12345"))

    response = await forward(app)
    assert response["Vary"] == "Accept-Encoding, Origin"
    assert response.content == b"12345"
    assert response.get("Content-Length") in (None, "5")


async def test_the_request_body_is_delivered_once_in_full():
    received = []

    async def app(scope, receive, send):
        received.append(await receive())
        await send(start(200))
        await send(body(b"done"))

    await forward(app, b'{"objectIds": ["a"], "values": [1]}')
    assert received == [
        {
            "type": "http.request",
            "body": b'{"objectIds": ["a"], "values": [1]}',
            "more_body": False,
        }
    ]


async def test_multi_chunk_answer_streams_without_buffering():
    release_second = asyncio.Event()
    second_sent = False

    async def app(scope, receive, send):
        nonlocal second_sent
        await send(
            start(200, [(b"content-type", b"text/plain"), (b"content-length", b"9")])
        )
        await send(body(b"first", more=True))
        await release_second.wait()
        second_sent = True
        await send(body(b"-two", more=False))

    response = await forward(app)
    assert isinstance(response, StreamingHttpResponse)
    assert response.status_code == 200
    # A streamed file keeps its length (browsers show download progress).
    assert response["Content-Length"] == "9"
    chunks = response.streaming_content
    first = await asyncio.wait_for(anext(chunks), WAIT)
    assert first == b"first"
    assert not second_sent, (
        "the app was made to finish before the first chunk was relayed"
    )
    release_second.set()
    rest = b"".join([chunk async for chunk in chunks])
    assert rest == b"-two"
    assert second_sent


async def test_large_streams_arrive_whole_and_in_order():
    parts = [bytes([i]) * 10_000 for i in range(50)]

    async def app(scope, receive, send):
        await send(start(200))
        for index, part in enumerate(parts):
            await send(body(part, more=index < len(parts) - 1))

    response = await forward(app)
    assert await read_all(response) == b"".join(parts)


async def test_receive_blocks_after_the_body_until_the_response_finished():
    """Starlette's file and streaming responses watch receive() for a
    disconnect while they send; an immediate disconnect cuts them short."""
    seen = []

    async def app(scope, receive, send):
        await receive()  # the request body
        watcher = asyncio.create_task(receive())
        await send(start(200))
        for index in range(3):
            # An app that takes its time (not a wait for anything): a
            # disconnect reported early would show up between these chunks.
            await asyncio.sleep(0.05)
            if watcher.done():
                seen.append(("disconnect before the end", watcher.result()))
                await send(body(b"", more=False))
                return
            await send(body(str(index).encode(), more=index < 2))
        # Once the answer is complete, receive() reports the disconnect
        # (an app waiting for it must not hang).
        seen.append(await asyncio.wait_for(watcher, WAIT))

    response = await forward(app)
    assert await asyncio.wait_for(read_all(response), WAIT) == b"012"
    await async_wait_until(lambda: seen, WAIT, "the app saw no disconnect")
    assert seen == [{"type": "http.disconnect"}]


async def test_receive_blocks_while_a_single_body_answer_is_prepared():
    seen = []

    async def app(scope, receive, send):
        await receive()
        try:
            early = await asyncio.wait_for(receive(), 0.2)
        except TimeoutError:
            early = None
        seen.append(early)
        await send(start(200))
        await send(body(b"complete"))
        seen.append(await receive())

    response = await forward(app)
    assert response.content == b"complete"
    assert seen == [None, {"type": "http.disconnect"}]


async def send_like_djangos_asgi_handler(response, client_reads, parts=None):
    """What django.core.handlers.asgi.ASGIHandler.send_response does with a
    streaming response; ``client_reads`` is set while the client reads (the
    parts it got so far are appended to ``parts``)."""
    async with aclosing(aiter(response)) as content:
        async for part in content:
            if parts is not None:
                parts.append(part)
            await client_reads.wait()


async def finish_leftover_tasks(before: set) -> list[str]:
    """Give the tasks this test started a moment to end, then cancel the
    rest (repeatedly: a task may catch one cancellation); their names."""
    await asyncio.sleep(0)
    current = asyncio.current_task()
    pending = [t for t in asyncio.all_tasks() if t not in before and t is not current]
    if pending:
        await asyncio.wait(pending, timeout=WAIT)
    leftover = [
        getattr(t.get_coro(), "__qualname__", repr(t.get_coro()))
        for t in pending
        if not t.done()
    ]
    for _ in range(5):
        for task in pending:
            task.cancel()
        await asyncio.sleep(0.01)  # a turn for each to take its cancellation
    return leftover


def endless_app(stopped: asyncio.Event, sends: list[int]):
    """An app that streams until the client goes; ``sends[0]`` counts the
    body messages it has begun to send."""

    async def app(scope, receive, send):
        await receive()
        disconnected = asyncio.create_task(receive())
        try:
            await send(start(200))
            while not disconnected.done():
                sends[0] += 1
                await send(body(b"x" * 100, more=True))
        finally:
            disconnected.cancel()
            stopped.set()

    return app


async def test_a_client_reading_to_the_end_leaves_no_task_behind():
    before = asyncio.all_tasks()
    release = asyncio.Event()

    async def app(scope, receive, send):
        await send(start(200))
        for index in range(20):
            await send(body(b"x" * 100, more=index < 19))

    response = await forward(app)
    release.set()
    await asyncio.wait_for(send_like_djangos_asgi_handler(response, release), WAIT)
    assert await finish_leftover_tasks(before) == []


async def test_a_client_going_away_mid_stream_stops_the_app():
    before = asyncio.all_tasks()
    stopped = asyncio.Event()
    sends = [0]
    response = await forward(endless_app(stopped, sends))
    slow_client = asyncio.Event()
    parts = []
    client = asyncio.create_task(
        send_like_djangos_asgi_handler(response, slow_client, parts)
    )
    # The client has its first chunk, and marimo fills the relay queue
    # meanwhile, then waits in send(): one chunk with the client, QUEUE_SIZE
    # in the queue, and one more on its way.
    await async_wait_until(
        lambda: parts and sends[0] >= QUEUE_SIZE + 2,
        WAIT,
        "the client got no chunk, or the app did not fill the queue",
    )
    # The client disconnects: Django's handler cancels the response task
    # and drops the response.
    client.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await client
    del response
    gc.collect()
    try:
        await asyncio.wait_for(stopped.wait(), WAIT)
    finally:
        leftover = await finish_leftover_tasks(before)
    assert leftover == []


async def test_app_failing_before_answering_raises():
    async def app(scope, receive, send):
        raise RuntimeError("kernel exploded")

    with pytest.raises(RuntimeError, match="kernel exploded"):
        await forward(app)


async def test_app_ending_without_answering_is_an_upstream_error():
    async def app(scope, receive, send):
        await receive()

    with pytest.raises(UpstreamError):
        await forward(app)


async def test_app_failing_after_the_first_chunk_ends_the_stream():
    async def app(scope, receive, send):
        await send(start(200))
        await send(body(b"partial", more=True))
        raise RuntimeError("late failure")

    response = await forward(app)
    assert await asyncio.wait_for(read_all(response), WAIT) == b"partial"
