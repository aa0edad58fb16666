"""Noticing the server's stop (sessions/stopping.py): the hook wraps the
server's signal handler, lets open pages speak first, and always calls the
server's handler; and an open kernel websocket says the site is
restarting. SIGUSR1 stands for the server's SIGTERM here."""

from __future__ import annotations

import asyncio
import signal
import threading

import pytest

from django_notebooks import notices
from django_notebooks.sessions import stopping
from tests.helpers import (
    async_wait_until,
    communicator,
    connected_and_run,
    login,
    new_session_id,
)

SIGNAL = signal.SIGUSR1


@pytest.fixture
def server_handler():
    """A server's handler for SIGNAL (what it was called with, in order),
    and SIGNAL's handler put back after the test."""
    calls: list[tuple[str, int]] = []
    before = signal.signal(
        SIGNAL, lambda number, frame: calls.append(("server", number))
    )
    yield calls
    signal.signal(SIGNAL, before)


async def test_the_pages_are_told_before_the_servers_handler_runs(server_handler):
    watch = stopping.StopWatch(signals=(SIGNAL,))

    async def tell_page():
        await asyncio.sleep(0.05)  # a send that takes a while
        server_handler.append(("page", 0))

    with watch.watch(tell_page):
        signal.raise_signal(SIGNAL)
        await async_wait_until(lambda: len(server_handler) == 2)
    assert server_handler == [("page", 0), ("server", SIGNAL)]


async def test_a_second_signal_goes_to_the_server_at_once(server_handler):
    watch = stopping.StopWatch(signals=(SIGNAL,))
    told = asyncio.Event()
    release = asyncio.Event()

    async def slow_page():
        told.set()
        await release.wait()

    with watch.watch(slow_page):
        signal.raise_signal(SIGNAL)
        await asyncio.wait_for(told.wait(), 5)
        signal.raise_signal(SIGNAL)  # CONTROL-C again: force quit
        await async_wait_until(lambda: server_handler == [("server", SIGNAL)])
        release.set()
        await async_wait_until(lambda: len(server_handler) == 2)


async def test_the_server_stops_even_if_a_page_cannot_be_told(
    server_handler, monkeypatch
):
    monkeypatch.setattr(stopping, "NOTICE_DEADLINE", 0.2)
    watch = stopping.StopWatch(signals=(SIGNAL,))

    async def failing():
        raise RuntimeError("socket gone")

    async def hanging():
        await asyncio.Event().wait()

    with watch.watch(failing), watch.watch(hanging):
        signal.raise_signal(SIGNAL)
        await async_wait_until(lambda: server_handler == [("server", SIGNAL)])


async def test_without_open_pages_the_signal_goes_straight_to_the_server(
    server_handler,
):
    watch = stopping.StopWatch(signals=(SIGNAL,))

    async def page():
        raise AssertionError("not watched any more")

    with watch.watch(page):
        pass
    signal.raise_signal(SIGNAL)
    assert server_handler == [("server", SIGNAL)]


async def test_no_server_handler_no_hook():
    before = signal.signal(SIGNAL, signal.SIG_IGN)
    try:
        watch = stopping.StopWatch(signals=(SIGNAL,))
        watch.install()
        assert signal.getsignal(SIGNAL) is signal.SIG_IGN
    finally:
        signal.signal(SIGNAL, before)


async def test_pythons_keyboard_interrupt_is_left_alone():
    watch = stopping.StopWatch(signals=(signal.SIGINT,))
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        watch.install()
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, before)


def test_a_loop_outside_the_main_thread_hooks_nothing(server_handler):
    watch = stopping.StopWatch(signals=(SIGNAL,))
    ran = threading.Event()

    async def install():
        watch.install()  # from a running loop, but not the main thread's
        ran.set()

    def in_thread():
        asyncio.run(install())

    thread = threading.Thread(target=in_thread)
    thread.start()
    thread.join(10)
    assert ran.is_set()
    assert watch.loop is None
    signal.raise_signal(SIGNAL)
    assert server_handler == [("server", SIGNAL)]


@pytest.mark.django_db(transaction=True)
async def test_an_open_kernel_websocket_says_the_site_is_restarting(
    close_marimo_sessions,
):
    sessionid = await login("alice")
    ws = communicator(
        f"/notebooks/square/ws?session_id={new_session_id()}", sessionid=sessionid
    )
    try:
        await connected_and_run(ws)
        callbacks = list(stopping.stop_watch.callbacks)
        assert len(callbacks) == 1
        await callbacks[0]()
        assert await ws.receive_from(timeout=10) == notices.SITE_RESTARTING.frame()
    finally:
        await ws.disconnect()
    assert not stopping.stop_watch.callbacks
