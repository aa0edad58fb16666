"""Pre-run spare kernels, with real servers (daphne and uvicorn): a
notebook that does not read its visitor is run in its spare before anyone
asks, and the next visitor's page gets that run, then works as any other;
a notebook that reads its visitor, or whose entry says ``"pre_run":
False``, never is (its spare runs it for its visitor)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.e2e.test_isolation import wait_for
from tests.live import (
    KernelSession,
    LiveServer,
    NotebookClient,
    end_kernel_host,
)

pytestmark = pytest.mark.e2e

# Long enough that a page which waited for a run of its own would be seen
# to (the runs are counted, not timed).
RUN_SECONDS = "1"


def start(kind: str, db_path: Path, tmp_path: Path) -> LiveServer:
    return LiveServer(
        kind,
        db_path,
        tmp_path / "server.log",
        DJANGO_NOTEBOOKS_TEST_ISOLATION="process",
        DJANGO_NOTEBOOKS_TEST_SPARES="1",
        DJANGO_NOTEBOOKS_TEST_RUNS=str(tmp_path / "runs"),
        DJANGO_NOTEBOOKS_TEST_RUN_SECONDS=RUN_SECONDS,
    )


def runs(tmp_path: Path, pid: int | None = None) -> int:
    """How many times the notebook ran, in any kernel (or in ``pid``'s)."""
    counted = tmp_path / "runs"
    pids = counted.read_text().split() if counted.exists() else []
    return len(pids) if pid is None else pids.count(str(pid))


async def first_run(session: KernelSession) -> list[dict]:
    """The frames up to the run's end (its outputs: ``session.outputs``)."""
    return list(await session.read_until_completed(30))


@pytest.mark.parametrize("kind", ["daphne", "uvicorn"])
async def test_the_next_visitor_gets_the_run_made_before_they_came(
    kind, live_db, tmp_path
):
    server = start(kind, live_db, tmp_path)
    hosts: list[int] = []
    try:
        async with NotebookClient(server.url) as alice:
            await alice.login("alice")
            async with alice.kernel("/notebooks/pre_run/") as first:
                await first_run(first)
                hosts = server.kernel_hosts()
            assert runs(tmp_path) >= 1
            # The notebook is in use: its spare runs it, for nobody yet.
            await wait_for(lambda: server.spare_pids("pre_run"), 30, "no spare")
            await wait_for(lambda: runs(tmp_path) == 2, 30, "no pre-run")
            (spare,) = server.spare_pids("pre_run")
            assert runs(tmp_path, spare) == 1

            async with alice.kernel("/notebooks/pre_run/") as second:
                frames = await first_run(second)
                ops = [frame.get("op") for frame in frames]
                # The page's first run is the pre-run: every output is
                # there with it, and the notebook did not run again.
                assert ops[0] == "kernel-ready" and "reconnected" not in ops
                assert any("cube=27" in text for text in second.outputs)
                assert runs(tmp_path, spare) == 1
                # From now on the session is the visitor's, as any other.
                (slider,) = second.ui_element_ids()
                response = await second.set_ui_value(slider, 5)
                assert response.status_code == 200, response.text
                while not any("cube=125" in text for text in second.outputs):
                    await first_run(second)
                assert runs(tmp_path, spare) == 1
                # The spare was replaced, by one that runs the notebook too.
                await wait_for(
                    lambda: server.spare_pids("pre_run") not in ([], [spare]),
                    30,
                    "no new spare",
                )
    finally:
        server.stop()
        for pid in hosts:
            end_kernel_host(pid)


async def test_a_notebook_that_reads_its_visitor_or_says_no_is_never_run_ahead(
    live_db, tmp_path
):
    # (The decision is the web process's, the same on both servers.)
    server = start("uvicorn", live_db, tmp_path)
    hosts: list[int] = []
    try:
        async with NotebookClient(server.url) as alice:
            await alice.login("alice")
            for page in ("/notebooks/whoami/", "/notebooks/pre_run_off/"):
                async with alice.kernel(page) as first:
                    await first_run(first)
                    hosts = hosts or server.kernel_hosts()
            await wait_for(lambda: server.spare_pids("whoami"), 30, "no spare")
            await wait_for(lambda: server.spare_pids("pre_run_off"), 30, "no spare")
            await asyncio.sleep(1)
            assert runs(tmp_path) == 1  # its spare waits without running it
            async with alice.kernel("/notebooks/pre_run_off/") as second:
                await first_run(second)
                assert any("cube=27" in text for text in second.outputs)
            assert runs(tmp_path) == 2
        async with NotebookClient(server.url) as bob:
            await bob.login("bob")
            async with bob.kernel("/notebooks/whoami/") as second:
                await first_run(second)
                # Bob's page shows Bob: his session ran for him, in the spare.
                assert any("bob" in text for text in second.outputs)
                assert not any("alice" in text for text in second.outputs)
    finally:
        server.stop()
        for pid in hosts:
            end_kernel_host(pid)
