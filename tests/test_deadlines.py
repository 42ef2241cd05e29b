"""Idle, init and lifetime deadlines, on trio's MockClock: no test here sleeps for real."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import trio
import trio.testing

from supervisor import (
    Event,
    EventKind,
    SessionClosed,
    SessionContext,
    SessionNotFound,
    SessionState,
    open_supervisor,
)

from ._helpers import echo_actor, events_only, idle_actor

TERMINAL = {EventKind.CLOSED, EventKind.EXPIRED, EventKind.FAILED}


async def terminal_event(sup: Any, session_id: str) -> Event:
    async with sup.subscribe(kinds=TERMINAL, session_id=session_id) as events:
        async for item in events:
            assert isinstance(item, Event)
            return item
    raise AssertionError("no terminal event")  # pragma: no cover


@pytest.mark.parametrize("slack", [0.0, 0.01, 0.5])
async def test_idle_expiry_fires_at_idle_timeout_after_last_activity_never_before(
    autojump_clock: trio.testing.MockClock, slack: float
) -> None:
    async with open_supervisor(idle_timeout=10.0, deadline_slack=slack) as sup:
        session = sup.create_session_nowait(echo_actor)
        start = trio.current_time()
        await trio.sleep(3)
        sup.touch(session.id)  # activity at start + 3
        await trio.sleep(10 - 1e-6)  # just before the deadline
        assert session.id in sup
        event = await terminal_event(sup, session.id)
        assert event.kind is EventKind.EXPIRED
        assert event.reason == "idle-timeout"
        assert start + 13 <= event.at <= start + 13 + slack
        assert session.id not in sup


async def test_every_kind_of_activity_pushes_the_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_supervisor(idle_timeout=10.0, deadline_slack=0.0) as sup:
        session = sup.create_session_nowait(echo_actor)
        activities: list[Callable[[], None]] = [
            lambda: sup.send_nowait(session.id, "x"),
            lambda: sup.touch(session.id),
            lambda: sup.set_metadata(session.id, "k", 1),
        ]
        for activity in activities * 3:
            await trio.sleep(9.5)
            activity()
        assert await sup.call(session.id, "ping") == "ping"  # a call and its reply are activity
        last = trio.current_time()
        event = await terminal_event(sup, session.id)
        assert event.kind is EventKind.EXPIRED
        assert event.at == pytest.approx(last + 10.0)


async def test_in_flight_call_pauses_the_idle_clock(autojump_clock: trio.testing.MockClock) -> None:
    async def slow(ctx: SessionContext[Any]) -> None:
        async for msg in ctx.mailbox:
            await trio.sleep(100)  # ten idle timeouts
            msg.reply("done")

    async with open_supervisor(idle_timeout=10.0, deadline_slack=0.0) as sup:
        session = sup.create_session_nowait(slow)
        assert await sup.call(session.id, "work") == "done"
        replied = trio.current_time()
        assert session.in_flight == 0
        event = await terminal_event(sup, session.id)
        assert event.kind is EventKind.EXPIRED
        assert event.at == pytest.approx(replied + 10.0)


async def test_busy_block_pauses_the_idle_clock(autojump_clock: trio.testing.MockClock) -> None:
    done = trio.Event()

    async def worker(ctx: SessionContext[Any]) -> None:
        with ctx.busy():
            assert ctx.session.in_flight == 1
            await trio.sleep(60)
        done.set()
        await trio.sleep_forever()

    async with open_supervisor(idle_timeout=10.0, deadline_slack=0.0) as sup:
        session = sup.create_session_nowait(worker)
        await done.wait()
        finished = trio.current_time()
        assert session.id in sup
        event = await terminal_event(sup, session.id)
        assert event.at == pytest.approx(finished + 10.0)
        assert event.reason == "idle-timeout"


async def test_idle_clock_restarts_only_when_the_last_of_overlapping_calls_ends(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def replies_after_payload_seconds(ctx: SessionContext[Any]) -> None:
        async def handle(msg: Any) -> None:
            await trio.sleep(msg.payload)
            msg.reply(msg.payload)

        async for msg in ctx.mailbox:
            ctx.start_soon(handle, msg)

    async with open_supervisor(idle_timeout=10.0, deadline_slack=0.0) as sup:
        session = sup.create_session_nowait(replies_after_payload_seconds)
        async with trio.open_nursery() as nursery:
            for seconds in (5, 30, 12):
                nursery.start_soon(sup.call, session.id, seconds)
        last_reply = trio.current_time()
        assert last_reply == pytest.approx(30)
        event = await terminal_event(sup, session.id)
        assert event.at == pytest.approx(last_reply + 10.0)


async def test_init_timeout_closes_sessions_that_never_become_ready(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def slow_init(ctx: SessionContext[Any]) -> None:
        await trio.sleep(3)
        ctx.initialize(protocol_version="2025-11-25")
        await trio.sleep_forever()

    async with open_supervisor(init_timeout=5.0, idle_timeout=100.0) as sup:
        async with sup.subscribe(kinds=TERMINAL) as events:
            stuck = sup.create_session_nowait(idle_actor)
            ready = sup.create_session_nowait(slow_init)
            await trio.sleep(50)
            ended = {e.session_id: e for e in events_only([events.receive_nowait()])}
            assert ended[stuck.id].kind is EventKind.EXPIRED
            assert ended[stuck.id].reason == "init-timeout"
            assert ended[stuck.id].at == pytest.approx(5.0)
            assert ready.id in sup  # READY in time: the init deadline no longer applies
            assert ready.is_initialized
            assert sup.statistics().expired_total == 1


async def test_max_lifetime_ends_a_busy_session(autojump_clock: trio.testing.MockClock) -> None:
    async with open_supervisor(max_lifetime=20.0, idle_timeout=10.0) as sup:
        session = sup.create_session_nowait(echo_actor)

        async def chatter() -> None:
            # A call in flight when the lifetime ends gets SessionClosed; later ones, NotFound.
            with pytest.raises((SessionClosed, SessionNotFound)):
                while True:
                    await sup.call(session.id, "hi")
                    await trio.sleep(1)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(chatter)
            event = await terminal_event(sup, session.id)
        assert event.kind is EventKind.EXPIRED
        assert event.reason == "max-lifetime"
        assert event.at == pytest.approx(20.0)
        with pytest.raises(SessionNotFound):
            sup.get_session(session.id)


async def test_idle_timeout_none_never_expires(autojump_clock: trio.testing.MockClock) -> None:
    async with open_supervisor(idle_timeout=None) as sup:
        session = sup.create_session_nowait(echo_actor)
        await trio.sleep(10**7)
        assert session.id in sup
        assert session.deadline == float("inf")


async def test_deadline_property_reports_the_exact_idle_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_supervisor(idle_timeout=10.0, deadline_slack=0.5, init_timeout=4.0) as sup:
        session = sup.create_session_nowait(idle_actor)
        assert session.deadline == pytest.approx(4.0)  # not READY yet: the init deadline
        sup.initialize_session(session.id)
        assert session.deadline == pytest.approx(10.0)
        await trio.sleep(2)
        sup.touch(session.id)
        assert session.deadline == pytest.approx(12.0)


# -- issue 9: the terminal kind and reason are the ones that fired, decided once ----------------


def slow_cleanup(seconds: float, seen: list[Any] | None = None) -> Callable[..., Any]:
    """An actor (READY at once unless told otherwise) whose cleanup, once cancelled, is slow."""

    async def actor(ctx: SessionContext[Any], ready: bool = True) -> None:
        if ready:
            ctx.initialize()
        try:
            await trio.sleep_forever()
        finally:
            with trio.CancelScope(shield=True):
                if seen is not None:
                    seen.append(("closing", ctx.closing))
                    seen.append(("close", ctx.close("too late")))
                await trio.sleep(seconds)

    return actor


@pytest.mark.parametrize(
    ("config", "ready", "reason", "fired_at"),
    [
        ({"idle_timeout": 10.0, "max_lifetime": 30.0}, True, "idle-timeout", 10.0),
        ({"idle_timeout": 10.0, "init_timeout": 30.0}, False, "idle-timeout", 10.0),
        (
            {"idle_timeout": 100.0, "init_timeout": 10.0, "max_lifetime": 30.0},
            False,
            "init-timeout",
            10.0,
        ),
        ({"idle_timeout": 100.0, "max_lifetime": 10.0}, True, "max-lifetime", 10.0),
    ],
)
async def test_the_expiry_reason_is_the_deadline_that_fired_not_when_cleanup_ended(
    autojump_clock: trio.testing.MockClock,
    config: dict[str, Any],
    ready: bool,
    reason: str,
    fired_at: float,
) -> None:
    actor = slow_cleanup(200.0)
    async with open_supervisor(deadline_slack=0.0, **config) as sup:
        session = sup.create_session_nowait(lambda ctx: actor(ctx, ready))
        event = await terminal_event(sup, session.id)
        assert (event.kind, event.reason) == (EventKind.EXPIRED, reason)
        assert event.at == pytest.approx(fired_at + 200.0)
        assert sup.statistics().expired_total == 1


async def test_close_during_expiry_cleanup_is_refused_and_the_session_stays_expired(
    autojump_clock: trio.testing.MockClock,
) -> None:
    seen: list[Any] = []
    async with open_supervisor(idle_timeout=10.0, deadline_slack=0.0, max_lifetime=50.0) as sup:
        session = sup.create_session_nowait(slow_cleanup(100.0, seen))
        events = sup.subscribe(kinds=TERMINAL, session_id=session.id)
        await trio.sleep(15)  # the idle deadline fired at 10; the actor is cleaning up
        assert seen == [("closing", True), ("close", False)]
        assert session.deadline == pytest.approx(10.0)
        assert session.close_reason == "idle-timeout"
        assert sup.close_session(session.id) is False
        assert sup.close_session(session.id, "admin") is False
        assert sup.close_all() == 0
        sup.touch(session.id)  # touches do not move the deadline that fired
        sup.set_metadata(session.id, "k", "v")
        assert session.deadline == pytest.approx(10.0)
        with pytest.raises(SessionClosed):
            sup.send_nowait(session.id, "late")
        with pytest.raises(SessionClosed):
            await sup.call(session.id, "late")
        with pytest.raises(SessionClosed):
            sup.initialize_session(session.id)
        assert session.in_flight == 0
        event = await terminal_event_from(events)
        assert (event.kind, event.reason) == (EventKind.EXPIRED, "idle-timeout")
        assert event.at == pytest.approx(110.0)
        stats = sup.statistics()
        assert (stats.expired_total, stats.closed_total) == (1, 0)
        assert sup.metrics().expired == 1


async def test_a_busy_block_in_expiry_cleanup_does_not_move_the_deadline_that_fired(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def actor(ctx: SessionContext[Any]) -> None:
        ctx.initialize()
        try:
            await trio.sleep_forever()
        finally:
            with trio.CancelScope(shield=True), ctx.busy():
                await trio.sleep(100)  # past the lifetime deadline

    async with open_supervisor(idle_timeout=10.0, deadline_slack=0.0, max_lifetime=50.0) as sup:
        session = sup.create_session_nowait(actor)
        event = await terminal_event(sup, session.id)
        assert (event.kind, event.reason) == (EventKind.EXPIRED, "idle-timeout")
        assert session.in_flight == 0


async def test_close_after_the_actor_returned_keeps_actor_returned(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def lingering_task() -> None:
        try:
            await trio.sleep_forever()
        finally:
            with trio.CancelScope(shield=True):
                await trio.sleep(5)  # the session ends only when this is done

    async def actor(ctx: SessionContext[Any]) -> None:
        ctx.start_soon(lingering_task)

    async with open_supervisor() as sup:
        session = sup.create_session_nowait(actor)
        events = sup.subscribe(kinds=TERMINAL, session_id=session.id)
        await trio.sleep(1)
        assert session.id in sup
        assert session.close_reason == "actor-returned"
        assert sup.close_session(session.id, "admin") is False
        event = await terminal_event_from(events)
        assert (event.kind, event.reason) == (EventKind.CLOSED, "actor-returned")


async def test_expiry_that_fires_as_the_supervisor_is_cancelled_stays_an_expiry(
    autojump_clock: trio.testing.MockClock,
) -> None:
    sub = None
    with trio.move_on_after(20):
        async with open_supervisor(idle_timeout=10.0, deadline_slack=0.0) as sup:
            sub = sup.subscribe(kinds=TERMINAL)
            sup.create_session_nowait(slow_cleanup(100.0))
            await trio.sleep_forever()  # the expiry at 10 is cleaning up when 20 cancels all
    assert sub is not None
    (event,) = events_only([sub.receive_nowait()])
    assert (event.kind, event.reason) == (EventKind.EXPIRED, "idle-timeout")


async def test_a_busy_block_held_across_the_end_never_makes_in_flight_negative(
    autojump_clock: trio.testing.MockClock,
) -> None:
    contexts: list[SessionContext[Any]] = []

    async def actor(ctx: SessionContext[Any]) -> None:
        contexts.append(ctx)
        async for _ in ctx.mailbox:
            pass

    async with open_supervisor(idle_timeout=10.0) as sup:
        session = sup.create_session_nowait(actor)
        await trio.sleep(1)
        (ctx,) = contexts
        with ctx.busy():
            assert session.in_flight == 1
            sup.close_session(session.id)
            await trio.sleep(1)
            assert session.id not in sup
            assert session.in_flight == 0
        assert session.in_flight == 0
        assert session.snapshot().in_flight == 0


async def terminal_event_from(events: Any) -> Event:
    async with events:
        async for item in events:
            assert isinstance(item, Event)
            return item
    raise AssertionError("no terminal event")  # pragma: no cover


async def test_shutdown_during_expiry_cleanup_keeps_the_expiry(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_supervisor(idle_timeout=10.0, deadline_slack=0.0, shutdown_grace=50.0) as sup:
        session = sup.create_session_nowait(slow_cleanup(5.0))
        events = sup.subscribe(kinds=TERMINAL)
        await trio.sleep(12)  # expired at 10, cleaning up until 15
        await sup.shutdown()
        assert trio.current_time() == pytest.approx(15.0)
    (event,) = events_only([events.receive_nowait()])
    assert (event.session_id, event.kind, event.reason) == (
        session.id,
        EventKind.EXPIRED,
        "idle-timeout",
    )
    assert sup.statistics().expired_total == 1


async def test_set_state_closing_during_expiry_cleanup_changes_nothing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_supervisor(idle_timeout=10.0, deadline_slack=0.0) as sup:
        session = sup.create_session_nowait(slow_cleanup(5.0))
        events = sup.subscribe(kinds=TERMINAL, session_id=session.id)
        await trio.sleep(12)
        sup.set_state(session.id, SessionState.CLOSING)  # the same as close_session: refused
        event = await terminal_event_from(events)
        assert (event.kind, event.reason) == (EventKind.EXPIRED, "idle-timeout")
