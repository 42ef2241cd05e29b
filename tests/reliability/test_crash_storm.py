"""Crash storms: 1,000 actors raising at random moments among 10,000 healthy ones.

Shows: no healthy session is lost or disturbed (each still answers, none got a terminal event),
the supervisor keeps admitting, and every crashed session has exactly one terminal event, a
``FAILED`` carrying its own exception. Runs on trio's MockClock: the storm spans 20 s of virtual
time in about a second of real time.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from typing import Any

import pytest
import trio
import trio.testing

from supervisor import Event, EventKind, Lagged, SessionClosed, SessionContext, open_supervisor

from ._support import Figures, count_tasks, size

TERMINAL = (EventKind.CLOSED, EventKind.EXPIRED, EventKind.FAILED)
STORM = 20.0  # seconds of virtual time over which the crashes happen


class Boom(Exception):
    """The error a crashing actor raises; carries its mode so the FAILED event can be checked."""

    def __init__(self, mode: str) -> None:
        super().__init__(mode)
        self.mode = mode


async def healthy(ctx: SessionContext[Any]) -> None:
    ctx.initialize(client_info={"name": "healthy"})
    async for msg in ctx.mailbox:
        msg.reply(("ok", ctx.id, msg.payload))


def crasher(mode: str, at: float) -> Any:
    """An actor that raises `Boom` at virtual time ``at`` in one of several ways."""

    async def actor(ctx: SessionContext[Any]) -> None:
        if mode == "at-start":
            raise Boom(mode)
        if mode == "before-ready":
            await trio.sleep(at)
            raise Boom(mode)
        ctx.initialize()
        if mode == "after-ready":
            await trio.sleep(at)
            raise Boom(mode)
        if mode == "in-task":

            async def task() -> None:
                await trio.sleep(at)
                raise Boom(mode)

            ctx.start_soon(task)
            async for msg in ctx.mailbox:
                msg.reply("ok")
            return
        if mode == "group":
            await trio.sleep(at)
            raise ExceptionGroup("several", [Boom(mode), ValueError("also")])
        if mode == "holding-a-call":
            # Raises while a call waits for its reply: the caller must get SessionClosed.
            async for _msg in ctx.mailbox:
                raise Boom(mode)
            return
        if mode == "while-closing":
            try:
                async for msg in ctx.mailbox:
                    msg.reply("ok")
            finally:
                raise Boom(mode)
        raise AssertionError(mode)  # pragma: no cover

    return actor


MODES = (
    "at-start",
    "before-ready",
    "after-ready",
    "in-task",
    "group",
    "holding-a-call",
    "while-closing",
)


@pytest.mark.parametrize("seed", [20240601])
async def test_crash_storm(
    autojump_clock: trio.testing.MockClock, figures: Figures, seed: int
) -> None:
    n_healthy = size(10_000)
    n_crash = size(1_000)
    rng = random.Random(seed)
    started = time.perf_counter()
    tasks_before = count_tasks()
    async with open_supervisor(
        max_sessions=n_healthy + n_crash + 10, mailbox_size=8, idle_timeout=3600.0
    ) as sup:
        async with sup.subscribe(kinds=TERMINAL, buffer=4 * (n_healthy + n_crash)) as events:
            # Interleave crashers among the healthy ones, in random order.
            plan: list[tuple[str, float] | None] = [None] * n_healthy
            plan += [(rng.choice(MODES), rng.uniform(0, STORM)) for _ in range(n_crash)]
            rng.shuffle(plan)
            healthy_ids: list[str] = []
            crashed: dict[str, str] = {}
            for item in plan:
                if item is None:
                    healthy_ids.append(sup.create_session_nowait(healthy).id)
                else:
                    mode, at = item
                    crashed[sup.create_session_nowait(crasher(mode, at)).id] = mode

            calls = Counter[str]()

            async def poke_crashers() -> None:
                # Calls into crashing sessions at random moments: each ends with a reply, the
                # actor's failure or SessionClosed; never a hang, never a leaked caller.
                for session_id, mode in rng.sample(sorted(crashed.items()), len(crashed)):
                    await trio.sleep(rng.uniform(0, STORM / len(crashed)))
                    if not sup.has_session(session_id):
                        continue
                    try:
                        await sup.call(session_id, "ping", timeout=STORM * 2)
                        calls["crasher-answered"] += 1
                    except SessionClosed:
                        calls["crasher-closed"] += 1
                    if mode == "while-closing" and sup.has_session(session_id):
                        sup.close_session(session_id, reason="test")

            async def poke_healthy() -> None:
                for _ in range(size(2_000)):
                    await trio.sleep(rng.uniform(0, STORM / 1000))
                    session_id = rng.choice(healthy_ids)
                    answer = await sup.call(session_id, "ping", timeout=1.0)
                    assert answer == ("ok", session_id, "ping")
                    calls["healthy"] += 1

            async with trio.open_nursery() as nursery:
                nursery.start_soon(poke_crashers)
                nursery.start_soon(poke_healthy)
            # "while-closing" crashers that nobody closed: close them now.
            for session_id, mode in crashed.items():
                if mode == "while-closing":
                    sup.close_session(session_id, reason="test")
            await trio.sleep(STORM)  # virtual: every crasher has had its moment
            assert not any(sup.has_session(s) for s in crashed)

            # The supervisor is alive and every healthy session is still there and answering.
            assert len(sup) == n_healthy
            assert {s.id for s in sup.sessions()} == set(healthy_ids)
            for session_id in healthy_ids:
                assert await sup.call(session_id, 1, timeout=1.0) == ("ok", session_id, 1)
            extra = sup.create_session_nowait(healthy)
            assert await sup.call(extra.id, 2) == ("ok", extra.id, 2)
            sup.close_session(extra.id)
            stats = sup.statistics()
            assert stats.failed_total == n_crash

            terminal: dict[str, list[Event]] = {}
            lagged = 0
            await trio.sleep(1)
            while True:
                try:
                    got = events.receive_nowait()
                except trio.WouldBlock:
                    break
                if isinstance(got, Lagged):  # pragma: no cover - the buffer is large enough
                    lagged += got.missed
                    continue
                terminal.setdefault(got.session_id, []).append(got)
            assert lagged == 0
            assert not set(terminal) & set(healthy_ids), "a healthy session ended"
            for session_id, mode in crashed.items():
                [event] = terminal[session_id]  # exactly one terminal event
                assert event.kind is EventKind.FAILED, (mode, event)
                if mode == "group":
                    assert isinstance(event.error, ExceptionGroup)
                else:
                    assert isinstance(event.error, Boom) and event.error.mode == mode
                assert event.reason == ("task-error" if mode == "in-task" else "actor-error")
        virtual = trio.current_time()
    # Leaving the block shut everything down; nothing is left behind.
    assert count_tasks() == tasks_before
    figures.update(
        healthy_sessions=n_healthy,
        crashing_sessions=n_crash,
        healthy_lost=0,
        failed_events=n_crash,
        healthy_calls=calls["healthy"],
        calls_into_crashers=calls["crasher-answered"] + calls["crasher-closed"],
        virtual_seconds=virtual,
        wall_seconds=time.perf_counter() - started,
    )
