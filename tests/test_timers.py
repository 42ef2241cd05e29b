"""The supervisor's timers and the session mailbox (issue 11): what the lighter core keeps.

Deadlines are entries of the supervisor's timers, not trio deadlines of each session's scope,
and the mailbox is a queue in the session record, not a memory channel. These tests pin what a
user relies on across that change: expiry never early and at most ``deadline_slack`` late
however the session was active, many sessions due at once expiring without blocking the event
loop, and the mailbox's channel semantics (order, backpressure in arrival order, rendezvous with
``mailbox_size=0``, cancellation, one receiver). All on trio's MockClock.
"""

from __future__ import annotations

import gc
from typing import Any

import pytest
import trio
import trio.testing

from supervisor import EventKind, SessionClosed, SessionContext, open_supervisor

from ._helpers import echo_actor, idle_actor

SLACK = 0.01


# -- deadlines -----------------------------------------------------------------------------------


@pytest.mark.parametrize("activity", ["none", "touch", "call", "send", "busy"])
async def test_expiry_is_never_early_and_at_most_one_slack_late(
    autojump_clock: trio.testing.MockClock, activity: str
) -> None:
    ended: dict[str, float] = {}
    done = trio.Event()

    async def actor(ctx: SessionContext[Any]) -> None:
        try:
            async for msg in ctx.mailbox:
                if msg.payload == "busy":
                    with ctx.busy():
                        await trio.sleep(25.0)
                if msg.expects_reply:
                    msg.reply(None)
        finally:
            ended[ctx.id] = trio.current_time()
            done.set()

    async with open_supervisor(idle_timeout=10.0, deadline_slack=SLACK) as sup:
        session = sup.create_session_nowait(actor)
        last = trio.current_time()
        for _ in range(3):
            await trio.sleep(7.0)  # each time before the idle deadline
            if activity == "touch":
                sup.touch(session.id)
            elif activity == "call":
                await sup.call(session.id, None)
            elif activity == "send":
                await sup.send(session.id, None)
            elif activity == "busy":
                await sup.send(session.id, "busy")
                await trio.sleep(25.0)  # busy for 25 s: longer than the idle timeout
            if activity != "none":
                last = trio.current_time()
            if activity == "none":
                break
        await done.wait()
        assert session.close_reason == "idle-timeout"
        lateness = ended[session.id] - (last + 10.0)
        assert 0.0 <= lateness <= SLACK + 1e-9, lateness


async def test_a_touch_at_the_deadline_does_not_revive_the_session(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_supervisor(idle_timeout=10.0, deadline_slack=0.5) as sup:
        session = sup.create_session_nowait(idle_actor)
        await trio.sleep(10.0)  # the deadline has passed; the timers wake within the slack
        sup.touch(session.id)  # no effect: the deadline that passed stays
        with pytest.raises(SessionClosed):
            sup.send_nowait(session.id, "late")
        assert session.close_reason == "idle-timeout"
        assert session.deadline == 10.0


async def test_close_grace_cuts_an_actor_that_ignores_the_close_on_time(
    autojump_clock: trio.testing.MockClock,
) -> None:
    cancelled_at: list[float] = []
    done = trio.Event()

    async def stubborn(ctx: SessionContext[Any]) -> None:
        try:
            await trio.sleep_forever()
        finally:
            cancelled_at.append(trio.current_time())
            done.set()

    async with open_supervisor(close_grace=2.0, deadline_slack=SLACK) as sup:
        session = sup.create_session_nowait(stubborn)
        await trio.sleep(1.0)
        sup.close_session(session.id)
        assert session.deadline == 3.0
        await done.wait()
        assert 3.0 <= cancelled_at[0] <= 3.0 + SLACK + 1e-9


async def test_many_sessions_due_at_once_expire_without_blocking_the_event_loop(
    autojump_clock: trio.testing.MockClock,
) -> None:
    n = 5_000
    turns_while_expiring = 0
    async with open_supervisor(max_sessions=n, idle_timeout=10.0) as sup:
        for _ in range(n):
            sup.create_session_nowait(echo_actor)  # all due at the same moment
        await trio.testing.wait_all_tasks_blocked()
        await trio.sleep(10.0)  # the deadline: woken with the timers
        # From here on this task only yields (the clock stands still), and counts its turns
        # while sessions expire.
        while len(sup) == n:
            await trio.lowlevel.checkpoint()
        while len(sup):
            turns_while_expiring += 1
            await trio.lowlevel.checkpoint()
        stats = sup.statistics()
    assert stats.expired_total == n
    # The expiry work came in slices with turns of this task between them, not in one batch.
    assert turns_while_expiring >= 10, turns_while_expiring


async def test_an_idle_supervisor_holds_one_timer_entry_per_session(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_supervisor(max_sessions=100, idle_timeout=10.0) as sup:
        sessions = [sup.create_session_nowait(echo_actor) for _ in range(100)]
        for _ in range(50):  # much activity: no entry per touch or call
            for session in sessions:
                sup.touch(session.id)
                await sup.call(session.id, None)
        assert len(sup._timers) == 100
        await trio.sleep(11.0)
        assert len(sup) == 0
        assert len(sup._timers) == 0


async def test_sessions_leave_no_cyclic_garbage(autojump_clock: trio.testing.MockClock) -> None:
    """What makes ``gc.freeze()`` safe for a server holding many sessions (docs/operations.md):
    a session that ends, however it ends, is freed by reference counting alone."""

    async def failing(ctx: SessionContext[Any]) -> None:
        async for msg in ctx.mailbox:
            raise ValueError(msg.payload)

    async with open_supervisor(max_sessions=400, idle_timeout=10.0, close_grace=0.5) as sup:
        gc.collect()
        gc.disable()
        try:
            closed = [sup.create_session_nowait(echo_actor) for _ in range(100)]
            expired = [sup.create_session_nowait(echo_actor) for _ in range(100)]
            failed = [sup.create_session_nowait(failing) for _ in range(100)]
            for session in closed + expired:
                await sup.call(session.id, "ping")
            for session in failed:
                sup.send_nowait(session.id, "boom")
            for session in closed:
                sup.close_session(session.id)
            await trio.sleep(11.0)
            assert len(sup) == 0
            assert sup.statistics().failed_total == 100
            assert gc.collect() == 0
        finally:
            gc.enable()


# -- the mailbox ---------------------------------------------------------------------------------


async def test_senders_waiting_for_room_are_let_in_in_arrival_order(
    autojump_clock: trio.testing.MockClock,
) -> None:
    received: list[int] = []
    release = trio.Event()

    async def slow(ctx: SessionContext[int]) -> None:
        await release.wait()
        async for msg in ctx.mailbox:
            received.append(msg.payload)

    async with open_supervisor(mailbox_size=2) as sup, trio.open_nursery() as nursery:
        session = sup.create_session_nowait(slow)
        for i in range(2):
            sup.send_nowait(session.id, i)
        for i in range(2, 6):
            nursery.start_soon(sup.send, session.id, i)
            await trio.testing.wait_all_tasks_blocked()
        assert session.mailbox_depth == 6
        release.set()
        await trio.testing.wait_all_tasks_blocked()
        assert received == [0, 1, 2, 3, 4, 5]
        assert session.mailbox_depth == 0


async def test_a_cancelled_sender_waiting_for_room_delivers_nothing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    received: list[str] = []
    release = trio.Event()

    async def slow(ctx: SessionContext[str]) -> None:
        await release.wait()
        async for msg in ctx.mailbox:
            received.append(msg.payload)

    async with open_supervisor(mailbox_size=1) as sup:
        session = sup.create_session_nowait(slow)
        sup.send_nowait(session.id, "kept")
        with trio.move_on_after(1.0):
            await sup.send(session.id, "dropped")
        assert session.mailbox_depth == 1
        release.set()
        await trio.testing.wait_all_tasks_blocked()
        assert received == ["kept"]


async def test_mailbox_size_zero_hands_messages_straight_to_the_actor(
    autojump_clock: trio.testing.MockClock,
) -> None:
    received: list[int] = []
    ready = trio.Event()

    async def actor(ctx: SessionContext[int]) -> None:
        await ready.wait()
        async for msg in ctx.mailbox:
            received.append(msg.payload)
            if msg.expects_reply:
                msg.reply(msg.payload * 2)

    async with open_supervisor(mailbox_size=0) as sup:
        session = sup.create_session_nowait(actor)
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(Exception, match="full"):
            sup.send_nowait(session.id, 1)  # nobody is receiving yet
        with trio.move_on_after(1.0) as waited:
            await sup.send(session.id, 1)  # waits for the actor to take it
        assert waited.cancelled_caught
        ready.set()
        await sup.send(session.id, 2)
        assert await sup.call(session.id, 3) == 6
        await trio.testing.wait_all_tasks_blocked()
        sup.send_nowait(session.id, 4)  # the actor is waiting now: handed over at once
        await trio.testing.wait_all_tasks_blocked()
        assert received == [2, 3, 4]


async def test_closing_delivers_what_is_buffered_and_fails_waiting_senders(
    autojump_clock: trio.testing.MockClock,
) -> None:
    received: list[int] = []
    release = trio.Event()
    outcome: list[str] = []

    async def slow(ctx: SessionContext[int]) -> None:
        await release.wait()
        async for msg in ctx.mailbox:
            received.append(msg.payload)

    async def waiting_sender(sup: Any, session_id: str) -> None:
        try:
            await sup.send(session_id, 99)
        except SessionClosed:
            outcome.append("closed")

    async with open_supervisor(mailbox_size=2) as sup, trio.open_nursery() as nursery:
        session = sup.create_session_nowait(slow)
        sup.send_nowait(session.id, 1)
        sup.send_nowait(session.id, 2)
        nursery.start_soon(waiting_sender, sup, session.id)
        await trio.testing.wait_all_tasks_blocked()
        sup.close_session(session.id)
        await trio.testing.wait_all_tasks_blocked()
        assert outcome == ["closed"]
        release.set()
        await trio.testing.wait_all_tasks_blocked()
        assert received == [1, 2]
        assert session.id not in sup


async def test_a_second_task_waiting_on_the_mailbox_is_refused(
    autojump_clock: trio.testing.MockClock,
) -> None:
    refused: list[BaseException] = []

    async def actor(ctx: SessionContext[Any]) -> None:
        async def second() -> None:
            try:
                await ctx.mailbox.receive()
            except trio.BusyResourceError as exc:
                refused.append(exc)

        ctx.start_soon(second)
        async for msg in ctx.mailbox:
            if msg.expects_reply:
                msg.reply("first")

    async with open_supervisor() as sup:
        session = sup.create_session_nowait(actor)
        await trio.testing.wait_all_tasks_blocked()
        assert len(refused) == 1
        assert await sup.call(session.id, None) == "first"
        events = sup.statistics()
        assert events.failed_total == 0


async def test_an_expired_sessions_events_say_so(autojump_clock: trio.testing.MockClock) -> None:
    async with open_supervisor(idle_timeout=5.0) as sup:
        async with sup.subscribe(kinds={EventKind.EXPIRED}) as events:
            session = sup.create_session_nowait(echo_actor)
            async for item in events:
                assert item.session.id == session.id  # type: ignore[union-attr]
                assert item.reason == "idle-timeout"  # type: ignore[union-attr]
                assert item.at == 5.0  # type: ignore[union-attr]
                break
