"""The kernel websocket's flow-control rules (django_notebooks/sessions/flow.py),
without a server: what the browser may send, and how far the server sends
ahead of what the page has acknowledged."""

from __future__ import annotations

import asyncio
import json

import pytest

from django_notebooks.sessions import flow


class Clock:
    """A clock the test moves."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Page:
    """The server's ``send``, recording what reached the page; it may be
    told to hang (a server whose client stopped reading)."""

    def __init__(self) -> None:
        self.frames: list[str] = []
        self.hang = False

    async def send(self, message: dict) -> None:
        if self.hang:
            await asyncio.Event().wait()
        self.frames.append(message["text"])

    def data(self) -> list[str]:
        return [text for text in self.frames if flow.mark_in(text) is None]

    def marks(self) -> list[str]:
        return [m for text in self.frames if (m := flow.mark_in(text)) is not None]


def frame(size: int) -> dict:
    return {"type": "websocket.send", "text": "x" * size}


async def finished(task: asyncio.Task, within: float = 1.0) -> bool:
    """Whether ``task`` ends within ``within`` seconds (it is left running)."""
    done, _ = await asyncio.wait({task}, timeout=within)
    return bool(done)


# What the browser may send.


def test_a_few_stray_frames_pass_and_more_are_a_flood():
    clock = Clock()
    inbox = flow.Inbox(clock)
    assert all(inbox.admits_stray_frame() for _ in range(flow.STRAY_FRAMES_AT_ONCE))
    assert not inbox.admits_stray_frame()


def test_one_stray_frame_every_ten_seconds_is_not_a_flood():
    clock = Clock()
    inbox = flow.Inbox(clock)
    for _ in range(flow.STRAY_FRAMES_AT_ONCE):
        inbox.admits_stray_frame()
    for _ in range(20):
        clock.now += 1 / flow.STRAY_FRAMES_PER_SECOND
        assert inbox.admits_stray_frame()
    assert not inbox.admits_stray_frame()


async def test_marimo_receives_the_connect_then_only_the_disconnect():
    inbox = flow.Inbox()
    assert await inbox.receive() == {"type": "websocket.connect"}
    waiting = asyncio.create_task(inbox.receive())
    assert not await finished(waiting, 0.05)
    inbox.hang_up(4408)
    inbox.hang_up(1000)  # the first reason stands
    assert await waiting == {"type": "websocket.disconnect", "code": 4408}
    assert await inbox.receive() == {"type": "websocket.disconnect", "code": 4408}


@pytest.mark.parametrize(
    "text",
    [
        None,
        "",
        "{}",
        "not json django-notebooks-ack",
        json.dumps({"op": "django-notebooks-ack"}),
        json.dumps({"op": "django-notebooks-ack", "mark": 7}),
        json.dumps({"op": "other", "mark": "django-notebooks-ack"}),
        json.dumps(["django-notebooks-ack"]),
        json.dumps({"op": "django-notebooks-ack", "mark": "m" * 300}),
    ],
)
def test_only_a_well_formed_small_acknowledgement_is_one(text):
    assert flow.acknowledged_mark({"text": text}) is None


def test_an_acknowledgement_names_its_mark():
    assert flow.acknowledged_mark({"text": flow.acknowledgement("abc")}) == "abc"
    assert flow.mark_in(flow.mark_frame("abc")) == "abc"
    assert flow.mark_in(flow.acknowledgement("abc")) is None


def test_frame_sizes_are_bytes_as_sent():
    assert flow.frame_size({"text": "abc"}) == 3
    assert flow.frame_size({"text": "é"}) == 2
    assert flow.frame_size({"bytes": b"\0" * 5}) == 5
    assert flow.frame_size({}) == 0


# How far ahead the server sends.


async def test_output_stops_at_the_window_until_the_page_acknowledges():
    page = Page()
    outbox = flow.Outbox(page.send, window=1000, timeout=5, mark_every=400)
    for _ in range(4):
        await outbox.send(frame(200))
    # 800 bytes out; a mark after the first 400 and after the next 400.
    assert len(page.data()) == 4 and len(page.marks()) == 2
    blocked = asyncio.create_task(outbox.send(frame(300)))
    assert not await finished(blocked, 0.1)
    assert outbox.acknowledge(page.marks()[0])
    await asyncio.wait_for(blocked, 1)
    assert len(page.data()) == 5
    assert outbox.unread <= 1000


async def test_a_mark_goes_out_before_waiting_so_the_page_can_acknowledge_all():
    page = Page()
    outbox = flow.Outbox(page.send, window=1000, timeout=5, mark_every=10_000)
    await outbox.send(frame(900))
    assert page.marks() == []  # under mark_every: none yet
    blocked = asyncio.create_task(outbox.send(frame(200)))
    assert not await finished(blocked, 0.1)
    [mark] = page.marks()  # the outbox marked what it waits on
    outbox.acknowledge(mark)
    await asyncio.wait_for(blocked, 1)
    assert outbox.unread == 200


async def test_a_frame_larger_than_the_window_goes_once_nothing_is_unread():
    page = Page()
    outbox = flow.Outbox(page.send, window=1000, timeout=5, mark_every=10_000)
    await outbox.send(frame(5000))  # nothing unread: it goes
    blocked = asyncio.create_task(outbox.send(frame(5000)))
    assert not await finished(blocked, 0.1)
    assert len(page.data()) == 1
    outbox.acknowledge(page.marks()[-1])
    await asyncio.wait_for(blocked, 1)
    assert len(page.data()) == 2


async def test_a_page_that_reads_nothing_stalls_the_outbox_after_the_timeout():
    page = Page()
    outbox = flow.Outbox(page.send, window=1000, timeout=0.2, mark_every=400)
    await outbox.send(frame(900))
    with pytest.raises(flow.Stalled):
        await asyncio.wait_for(outbox.send(frame(200)), 5)


async def test_progress_restarts_the_read_timeout():
    page = Page()
    outbox = flow.Outbox(page.send, window=1000, timeout=0.3, mark_every=100)
    for _ in range(5):
        await outbox.send(frame(100))  # a mark after each
    blocked = asyncio.create_task(outbox.send(frame(600)))
    # Acknowledge one mark at a time, each within the timeout but all of
    # them together past it: the page is slow, not gone.
    for mark in page.marks()[:3]:
        await asyncio.sleep(0.2)
        assert not blocked.done()
        outbox.acknowledge(mark)
    await asyncio.wait_for(blocked, 1)


async def test_a_server_send_that_does_not_return_stalls_the_outbox():
    page = Page()
    page.hang = True  # uvicorn's send waits while the client's socket is full
    outbox = flow.Outbox(page.send, window=10_000, timeout=0.2)
    with pytest.raises(flow.Stalled):
        await asyncio.wait_for(outbox.send(frame(10)), 5)


async def test_a_notice_is_counted_but_never_held():
    page = Page()
    outbox = flow.Outbox(page.send, window=1000, timeout=5, mark_every=10_000)
    await outbox.send(frame(1000))
    await asyncio.wait_for(outbox.send_now(frame(50)), 1)
    assert outbox.unread == 1050


async def test_a_notice_the_server_cannot_send_in_time_is_dropped():
    page = Page()
    page.hang = True
    outbox = flow.Outbox(page.send, window=1000, timeout=0.1)
    await asyncio.wait_for(outbox.send_now(frame(50)), 5)


async def test_closing_drops_the_frame_that_waits():
    page = Page()
    outbox = flow.Outbox(page.send, window=1000, timeout=5)
    await outbox.send(frame(1000))
    blocked = asyncio.create_task(outbox.send(frame(10)))
    assert not await finished(blocked, 0.1)
    outbox.close()
    await asyncio.wait_for(blocked, 1)
    assert len(page.data()) == 1


def _gone_from_uvicorn() -> Exception:
    from uvicorn.protocols.utils import ClientDisconnected

    return ClientDisconnected()


def _gone_from_daphne() -> Exception:
    from autobahn.exception import Disconnected

    return Disconnected("Attempt to send on a closed protocol")


@pytest.mark.parametrize(
    "gone", [_gone_from_uvicorn, _gone_from_daphne], ids=["uvicorn", "daphne"]
)
async def test_a_page_gone_while_output_is_on_its_way_closes_the_outbox(gone):
    error = gone()

    async def send(message):
        raise error

    outbox = flow.Outbox(send, window=1000, timeout=5)
    with pytest.raises(flow.Gone):
        await outbox.send(frame(10))
    assert outbox.closed
    await outbox.send(frame(10))  # nothing more is tried
    await flow.Outbox(send, window=1000, timeout=5).send_now(frame(10))  # dropped


async def test_a_send_failing_for_another_reason_is_not_taken_for_a_page_gone():
    async def send(message):
        raise ValueError("not a websocket message")

    outbox = flow.Outbox(send, window=1000, timeout=5)
    with pytest.raises(ValueError):
        await outbox.send(frame(10))
    assert not outbox.closed


async def test_an_unknown_or_repeated_acknowledgement_frees_nothing():
    page = Page()
    outbox = flow.Outbox(page.send, window=10_000, timeout=5, mark_every=100)
    await outbox.send(frame(100))
    await outbox.send(frame(100))
    first, second = page.marks()
    unread = outbox.unread
    assert not outbox.acknowledge("guessed")
    assert not outbox.acknowledge("é")
    assert outbox.unread == unread
    assert outbox.acknowledge(second)  # the later mark covers the earlier
    assert outbox.unread == 0
    assert not outbox.acknowledge(first)
    assert not outbox.acknowledge(second)
