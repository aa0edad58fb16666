"""Several uvicorn worker processes behind one port: any worker takes any
request of any session (kernel calls for a session another worker holds
reach its kernel through the machine's kernel host, or, from another
machine, are forwarded to that worker over Redis), and a worker that dies
loses no session: its pages
reconnect to another worker, and to their own kernels, which the machine's
kernel host kept.

The workers sit behind a round-robin proxy (tests/proxy.py), so consecutive
requests of one page go to different processes, as behind a load balancer
without sticky sessions. They share channels_redis's RedisChannelLayer or its
RedisPubSubChannelLayer (the ``layer`` parameter).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sqlite3
import uuid

import pytest

from tests.live import (
    REDIS_LAYERS,
    LiveServer,
    NotebookClient,
    require_redis,
    square_output,
)
from tests.live import machines as live_machines
from tests.proxy import Proxy

SESSIONS = 20
INTERACTIONS = 20
PAGE = "/notebooks/square/"


@pytest.fixture(params=REDIS_LAYERS)
def layer(request):
    """The channel layer the workers share (tests/settings.py)."""
    return request.param


@pytest.fixture
def redis_env(layer):
    require_redis()
    return {
        "DJANGO_NOTEBOOKS_TEST_CHANNEL_LAYER": layer,
        "DJANGO_NOTEBOOKS_TEST_REDIS_PREFIX": f"dn-test-{uuid.uuid4().hex[:8]}",
        "DJANGO_NOTEBOOKS_TEST_MAX_SESSIONS": str(SESSIONS * 2),
        # Long enough that no kernel of this test expires while it runs.
        "DJANGO_NOTEBOOKS_TEST_SESSION_TTL": "120",
    }


@pytest.fixture
def start_workers(live_db, tmp_path, redis_env):
    """Start N uvicorn processes sharing the database and the Redis layer,
    on one machine, or on ``machines`` (worker ``i`` on machine ``i %
    machines``): workers of one machine reach each other's kernels through
    its kernel host; across machines, calls go through the channel layer."""
    db_path = tmp_path / "db.sqlite3"
    db_path.write_bytes(live_db.read_bytes())
    started: list[LiveServer] = []

    with contextlib.ExitStack() as stack:

        def start(count: int, machines: int = 1) -> list[LiveServer]:
            envs = stack.enter_context(live_machines(machines))
            for index in range(count):
                started.append(
                    LiveServer(
                        "uvicorn",
                        db_path,
                        tmp_path / f"worker{index}.log",
                        **redis_env,
                        **envs[index % machines],
                    )
                )
            return list(started)

        start.db_path = db_path  # type: ignore[attr-defined]
        try:
            yield start
        finally:
            for server in started:
                server.stop()


def holders(db_path, workers: list[LiveServer]) -> dict[str, LiveServer]:
    """Which worker holds each open session, from the shared records."""
    by_pid = {str(worker.process.pid): worker for worker in workers}
    with sqlite3.connect(db_path) as db:
        rows = db.execute(
            "SELECT session_id, process FROM django_notebooks_notebooksession"
        ).fetchall()
    return {session_id: by_pid[process.split(":")[1]] for session_id, process in rows}


async def drive(client: NotebookClient, interactions: int) -> list[str]:
    """Open a session, move its slider ``interactions`` times; the problems."""
    problems = []
    async with client.kernel(PAGE) as kernel:
        await kernel.read_until_completed()
        [slider] = kernel.ui_element_ids()
        for value in range(1, interactions + 1):
            kernel.outputs.clear()
            response = await kernel.set_ui_value(slider, value)
            if response.status_code != 200:
                problems.append(f"{value}: HTTP {response.status_code} {response.text}")
                continue
            await kernel.read_until_completed()
            seen = square_output(kernel.outputs)
            if seen != [f"square={value * value} user=alice"]:
                problems.append(f"{value}: saw {seen}")
    return problems


# Two workers of one machine reach each other's kernels without the channel
# layer: one layer says it. Across machines, each layer carries the calls.
@pytest.mark.parametrize(
    ("count", "layer"), [(2, "redis-pubsub"), (4, "redis"), (4, "redis-pubsub")]
)
async def test_any_worker_takes_any_request_of_any_session(start_workers, count):
    # Four workers on two machines: the calls that land on the other worker
    # of the session's machine reach its kernel directly, the others go
    # through the channel layer.
    workers = start_workers(count, machines=count // 2)
    with Proxy.round_robin([worker.url for worker in workers]) as proxy:
        async with NotebookClient(proxy.url) as client:
            await client.login("alice")
            results = await asyncio.gather(
                *(drive(client, INTERACTIONS) for _ in range(SESSIONS)),
                return_exceptions=True,
            )
    failures = [result for result in results if result]
    logs = [worker.log() for worker in workers]
    assert failures == [], (failures, [log[-3000:] for log in logs])
    assert all("Traceback" not in log for log in logs), logs


# (The page takes its session over on the machine: no channel layer in it.)
@pytest.mark.parametrize("layer", ["redis-pubsub"])
async def test_a_killed_workers_pages_go_on_with_their_kernels(start_workers):
    workers = start_workers(2)
    with Proxy.round_robin([worker.url for worker in workers]) as proxy:
        async with NotebookClient(proxy.url) as client:
            await client.login("alice")
            async with (
                client.kernel(PAGE) as first,
                client.kernel(PAGE) as second,
            ):
                for kernel in (first, second):
                    await kernel.read_until_completed()
                where = holders(start_workers.db_path, workers)
                assert where[first.session_id] is not where[second.session_id]
                doomed = first if where[first.session_id] is workers[0] else second
                survivor = second if doomed is first else first
                victim = where[doomed.session_id]
                os.kill(victim.process.pid, signal.SIGKILL)
                victim.process.wait(10)
                proxy.remove_backend(victim.url)  # the load balancer's health check

                # The page's websocket dropped; its reconnect reaches the
                # surviving worker, which takes the session over: the
                # machine's kernel host kept its kernel, as it was.
                async with client.kernel(PAGE, session_id=doomed.session_id) as again:
                    frame = await again.recv(10)
                    assert frame["op"] == "reconnected", frame
                    [slider] = doomed.ui_element_ids()
                    assert (await again.set_ui_value(slider, 5)).status_code == 200
                    await again.read_until_completed()
                    assert square_output(again.outputs) == ["square=25 user=alice"]

                # The other worker's session goes on.
                [slider] = survivor.ui_element_ids()
                survivor.outputs.clear()
                assert (await survivor.set_ui_value(slider, 4)).status_code == 200
                await survivor.read_until_completed()
                assert square_output(survivor.outputs) == ["square=16 user=alice"]

            # And new sessions work.
            assert await drive(client, 3) == []
