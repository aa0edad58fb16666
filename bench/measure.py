"""bench/run.py's measurements, each alternating between the servers round
by round so that drift of this (shared, noisy) machine hits all of them
alike: interaction round trips, session opens, plain requests, many
sessions at once (burst) and churn. They return the raw numbers; the
report makes rows of them. Page loads in a browser are in bench/browser.py."""

from __future__ import annotations

import argparse
import asyncio
import math
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin

import httpx

from bench.client import (
    FRAME_TIMEOUT,
    Session,
    burst_person,
    churn_person,
    rotated,
    sessions_per_user,
)
from bench.servers import Target

# --------------------------------------------------------------------------
# Settings of one run


@dataclass(frozen=True)
class Plan:
    quick: bool
    interactions: int  # measured interactions per configuration and server
    warmup: int  # unmeasured interactions per session before measuring
    opens: int  # measured session opens per server
    requests: int  # measured plain GETs per kind and server
    browser_rounds: int  # cold + warm page loads per server
    browser_warmup: bool  # a first, unmeasured page load per server
    burst: int  # sessions opened at once (0: skipped)
    burst_rounds: int  # how often, per server
    phase_seconds: float  # time limit of each measured phase
    churn: int  # sessions opened and closed in the churn phase (0: skipped)
    churn_batch: int  # of which open at the same time
    churn_ttl: int  # session_ttl of the churn servers, seconds
    churn_settle: float  # seconds waited after TTL before reading the server
    concurrency: tuple[int, ...] = (1, 8)

    @classmethod
    def for_args(cls, args: argparse.Namespace) -> Plan:
        """The full run, or with ``--quick`` a short smoke run; options given
        on the command line win."""
        quick = args.quick
        return cls(
            quick=quick,
            interactions=args.interactions or (20 if quick else 200),
            warmup=3 if quick else 15,
            opens=args.opens or (4 if quick else 30),
            requests=10 if quick else 100,
            browser_rounds=args.browser_rounds or (1 if quick else 5),
            browser_warmup=not quick,
            burst=0 if quick else args.burst,
            burst_rounds=0 if quick else args.burst_rounds,
            phase_seconds=12 if quick else 300,
            # --quick: a token churn: it proves the phase works, measures little.
            churn=args.churn if args.churn is not None else (20 if quick else 500),
            churn_batch=min(args.churn_batch, 10) if quick else args.churn_batch,
            churn_ttl=args.churn_ttl or (2 if quick else 5),
            churn_settle=1.5 if quick else 5,
        )


def people(plan: Plan) -> int:
    """How many different users the run needs (alice counts as one).

    The interaction runs give each session its own user; the burst fills
    bench users up to the cap (100 sessions, cap 5: bench-01 ... bench-20);
    a churn batch spreads over the bench users so that nobody has more than
    half the cap open at once, which leaves room for the previous batch's
    websockets still being closed on the server."""
    cap = sessions_per_user()
    return max(
        *plan.concurrency,
        1 + math.ceil(plan.burst / cap),
        1 + math.ceil(plan.churn_batch / max(1, cap // 2)) if plan.churn else 1,
    )


# --------------------------------------------------------------------------
# Bounded in time


def until_limit(
    count: int, seconds: float, what: str, unit: str, notes: list[str], start: int = 0
) -> Iterator[int]:
    """``range(start, count)``, cut short when ``seconds`` have passed since
    the first step (every phase is bounded in time); a note says so."""
    deadline = time.monotonic() + seconds
    for number in range(start, count):
        if time.monotonic() > deadline:
            notes.append(
                f"{what} stopped at the {seconds:.0f} s limit after "
                f"{number} of {count} {unit}"
            )
            return
        yield number


# --------------------------------------------------------------------------
# 1. Interaction round trip


async def measure_interactions(
    targets: list[Target], plan: Plan, concurrency: int, notes: list[str]
) -> dict[str, list[float]]:
    sessions = {
        target.name: [Session(target, person) for person in range(concurrency)]
        for target in targets
    }
    samples: dict[str, list[float]] = {target.name: [] for target in targets}
    try:
        for target in targets:
            await asyncio.gather(*(session.open() for session in sessions[target.name]))
        # Warm-up, unmeasured: lazy imports, caches and connection pools in
        # marimo, Django and the client.
        for _ in range(plan.warmup):
            for target in targets:
                await asyncio.gather(*(s.interact() for s in sessions[target.name]))
        rounds = max(1, math.ceil(plan.interactions / concurrency))
        what = f"interactions at {concurrency} sessions"
        for round_number in until_limit(
            rounds, plan.phase_seconds, what, "rounds", notes
        ):
            for target in rotated(targets, round_number):
                took = await asyncio.gather(
                    *(s.interact() for s in sessions[target.name])
                )
                samples[target.name].extend(took)
    finally:
        for target in targets:
            await asyncio.gather(
                *(session.close() for session in sessions[target.name])
            )
    return samples


# --------------------------------------------------------------------------
# 2. Session open


async def measure_session_open(
    targets: list[Target], plan: Plan, notes: list[str]
) -> dict[str, list[float]]:
    samples: dict[str, list[float]] = {target.name: [] for target in targets}
    for target in targets:  # warm-up
        session = Session(target)
        try:
            await session.open()
        finally:
            await session.close()
    for round_number in until_limit(
        plan.opens, plan.phase_seconds, "session opens", "rounds", notes
    ):
        for target in rotated(targets, round_number):
            session = Session(target)
            try:
                samples[target.name].append(await session.open())
            finally:
                await session.close()
    return samples


# --------------------------------------------------------------------------
# 2b. Plain HTTP requests below the page: the per-request cost alone


# marimo's page loads its frontend from ./assets/ (or from wherever the
# asset_url option points): the entry script is assets/index-<hash>.js.
ENTRY_SCRIPT = re.compile(r'src="([^"]*assets/index-[^"]+\.js)"')


async def measure_requests(
    targets: list[Target], plan: Plan, notes: list[str]
) -> dict[str, dict[str, list[float]]]:
    """GET ``health`` (a tiny JSON answer) and the page's entry script (the
    biggest asset): one keep-alive connection per server, rounds alternating."""
    clients = {}
    paths: dict[str, dict[str, str]] = {}
    samples: dict[str, dict[str, list[float]]] = {}
    try:
        for target in targets:
            client = httpx.AsyncClient(
                base_url=target.url,
                timeout=30,
                cookies=target.cookies[0] if target.login else None,
            )
            clients[target.name] = client
            page = await client.get(target.page)
            match = ENTRY_SCRIPT.search(page.text)
            if page.status_code != 200 or not match:
                raise RuntimeError(f"{target.name}: no entry script in the page")
            script = urljoin(target.page, match.group(1))
            size = len((await client.get(script)).content)
            paths[target.name] = {
                "GET health": target.page + "health",
                f"GET entry script ({size / 1000:.0f} KB)": script,
            }
        kinds = list(paths[targets[0].name])
        samples = {kind: {t.name: [] for t in targets} for kind in kinds}
        for round_number in until_limit(
            plan.requests,
            plan.phase_seconds,
            "plain requests",
            "rounds",
            notes,
            start=-3,  # 3 rounds of warm-up
        ):
            for target in rotated(targets, round_number):
                for kind, path in zip(kinds, paths[target.name].values(), strict=True):
                    started = time.perf_counter()
                    response = await clients[target.name].get(path)
                    took = time.perf_counter() - started
                    if response.status_code != 200:
                        raise RuntimeError(
                            f"{target.name}: {path} answered {response.status_code}"
                        )
                    if round_number >= 0:
                        samples[kind][target.name].append(took)
    finally:
        for client in clients.values():
            await client.aclose()
    return samples


# --------------------------------------------------------------------------
# 4. Many sessions at once


@dataclass
class Opened:
    """How many sessions of a phase rendered, how many failed, and the first
    error."""

    rendered: int = 0
    errors: int = 0
    first_error: str = ""

    def count(self, results: list[Any]) -> None:
        """Count the results of ``Session.open`` calls (exceptions: errors)."""
        for result in results:
            if isinstance(result, BaseException):
                self.errors += 1
                self.first_error = (
                    self.first_error or f"{type(result).__name__}: {result}"
                )
            else:
                self.rendered += 1


@dataclass
class Burst(Opened):
    wall_seconds: float = math.nan
    rss_per_session: float = math.nan  # bytes
    rss_before: int = 0
    rss_after: int = 0
    threads_per_session: float = math.nan


async def measure_burst(target: Target, count: int, limit: float = 120) -> Burst:
    burst = Burst()
    sessions = [Session(target, burst_person(index)) for index in range(count)]
    await asyncio.sleep(1)
    burst.rss_before = target.rss()
    threads_before = target.threads()
    started = time.perf_counter()
    try:
        results = await asyncio.wait_for(
            asyncio.gather(*(s.open() for s in sessions), return_exceptions=True), limit
        )
        burst.wall_seconds = time.perf_counter() - started
        burst.count(results)
        await asyncio.sleep(1)  # let the kernels settle before reading memory
        burst.rss_after = target.rss()
        if burst.rendered:
            burst.rss_per_session = (
                burst.rss_after - burst.rss_before
            ) / burst.rendered
            burst.threads_per_session = (
                target.threads() - threads_before
            ) / burst.rendered
    except TimeoutError:
        burst.errors = count - burst.rendered
        burst.first_error = f"not all rendered within {limit:.0f} s"
    finally:
        await asyncio.gather(*(s.close() for s in sessions))
    return burst


async def measure_bursts(
    targets: list[Target], plan: Plan, session_ttl: int
) -> dict[str, list[Burst]]:
    """``plan.burst_rounds`` bursts per server, the order rotating."""
    rounds: dict[str, list[Burst]] = {target.name: [] for target in targets}
    for round_number in range(plan.burst_rounds):
        for target in rotated(targets, round_number):
            rounds[target.name].append(await measure_burst(target, plan.burst))
            # marimo ends closed sessions session_ttl after their websocket
            # closed: wait for that here, or the teardown of 100 kernels
            # would run during the next server's burst.
            await asyncio.sleep(session_ttl + 3)
    return rounds


# --------------------------------------------------------------------------
# 5. Churn: many sessions opened and closed; does the server come back?


@dataclass
class Snapshot:
    threads: int
    rss: int  # bytes
    db_connections: int | None  # bridge only

    @classmethod
    def of(cls, target: Target) -> Snapshot:
        return cls(target.threads(), target.rss(), target.db_connections())


@dataclass
class Churn(Opened):
    fresh: Snapshot | None = None  # before anything of this phase
    baseline: Snapshot | None = None  # after the warm-up batch expired
    half: Snapshot | None = None  # the same, after the first half of the churn
    after: Snapshot | None = None  # TTL + settle after the last close
    peak_threads: int = 0  # with a batch open
    peak_rss: int = 0
    seconds: float = 0.0  # sum of the batches' open-to-closed wall times


async def churn_batch(
    target: Target, start: int, size: int, people_count: int, churn: Churn | None
) -> None:
    """Open ``size`` sessions at once, wait until each rendered, close them
    all (client side: websocket and HTTP connection), and count."""
    sessions = [
        Session(target, churn_person(start + i, people_count)) for i in range(size)
    ]
    started = time.perf_counter()
    try:
        results = await asyncio.wait_for(
            asyncio.gather(*(s.open() for s in sessions), return_exceptions=True),
            FRAME_TIMEOUT * 2,
        )
    except TimeoutError:
        results = [TimeoutError("batch did not render in time")] * size
    if churn is not None:
        churn.peak_threads = max(churn.peak_threads, target.threads())
        churn.peak_rss = max(churn.peak_rss, target.rss())
    await asyncio.gather(*(s.close() for s in sessions))
    if churn is None:
        return
    churn.seconds += time.perf_counter() - started
    churn.count(results)


async def measure_churn(
    targets: list[Target], plan: Plan, people_count: int, notes: list[str]
) -> dict[str, Churn]:
    """``plan.churn`` sessions per server, ``plan.churn_batch`` open at a
    time, batches alternating between the servers; then wait until marimo's
    session_ttl has closed every kernel and compare the server with its
    baseline.

    The baseline is read after one unmeasured batch has been opened, closed
    and expired: what a server keeps after its first concurrent sessions
    (thread pools grown to their size, allocator arenas, imports) is a
    one-time cost; what the churn measures is whether sessions leave
    something behind."""
    churns = {target.name: Churn() for target in targets}
    settle = plan.churn_ttl + plan.churn_settle
    for target in targets:
        churns[target.name].fresh = Snapshot.of(target)
    for target in targets:
        await churn_batch(target, 0, plan.churn_batch, people_count, None)
    await asyncio.sleep(settle)
    for target in targets:
        churns[target.name].baseline = Snapshot.of(target)
    batches = math.ceil(plan.churn / plan.churn_batch)
    halfway = batches // 2 if batches >= 4 else 0  # no halfway in a token churn
    for number in until_limit(batches, plan.phase_seconds, "churn", "batches", notes):
        if number == halfway and halfway:
            # Halfway, the same reading: growth that continues in the second
            # half grows with the number of sessions (a leak); growth that
            # stops is paid once (the allocator keeping its high-water mark).
            await asyncio.sleep(settle)
            for target in targets:
                churns[target.name].half = Snapshot.of(target)
        start = number * plan.churn_batch
        size = min(plan.churn_batch, plan.churn - start)
        for target in rotated(targets, number):
            await churn_batch(target, start, size, people_count, churns[target.name])
    await asyncio.sleep(settle)
    for target in targets:
        churns[target.name].after = Snapshot.of(target)
    return churns
