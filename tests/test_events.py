"""Lifecycle events: order, exactly one terminal event, filters, lag, and never blocking."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import attrs
import pytest
import trio
import trio.testing

from supervisor import (
    Event,
    EventKind,
    Lagged,
    SessionContext,
    SessionState,
    open_supervisor,
)

from ._helpers import drain, echo_actor, events_only, idle_actor

TERMINAL = {EventKind.CLOSED, EventKind.EXPIRED, EventKind.FAILED}


async def test_a_sessions_events_in_causal_order(autojump_clock: trio.testing.MockClock) -> None:
    async with open_supervisor(idle_timeout=10.0) as sup:
        async with sup.subscribe() as events:
            session = sup.create_session_nowait(idle_actor, principal="alice")
            sup.initialize_session(
                session.id, client_info={"name": "c"}, protocol_version="2025-11-25"
            )
            await trio.sleep(11)
            items = events_only(drain(events))
    kinds = [(e.kind, e.old_state, e.new_state) for e in items]
    S = SessionState
    assert kinds == [
        (EventKind.CREATED, None, None),
        (EventKind.AUTHENTICATED, None, None),
        (EventKind.STATE_CHANGED, S.CREATED, S.INITIALIZING),
        (EventKind.STATE_CHANGED, S.INITIALIZING, S.READY),
        (EventKind.INITIALIZED, None, None),
        (EventKind.STATE_CHANGED, S.READY, S.CLOSING),
        (EventKind.STATE_CHANGED, S.CLOSING, S.CLOSED),
        (EventKind.EXPIRED, None, None),
    ]
    assert [e.at for e in items] == sorted(e.at for e in items)
    assert items[4].session.client_info == {"name": "c"}
    assert items[0].session.state is S.CREATED  # snapshots are taken at publication
    assert items[-1].session.state is S.CLOSED
    assert items[-1].reason == "idle-timeout"
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        items[0].reason = "x"  # type: ignore[misc]


async def test_filters_by_kind_and_session() -> None:
    async with open_supervisor() as sup:
        a = sup.create_session_nowait(echo_actor)
        async with (
            sup.subscribe(kinds={EventKind.CLOSED}) as closed_only,
            sup.subscribe(session_id=a.id) as only_a,
        ):
            b = sup.create_session_nowait(echo_actor)
            sup.close_session(a.id)
            sup.close_session(b.id)
            await trio.testing.wait_all_tasks_blocked()
            closed = events_only(drain(closed_only))
            assert sorted(e.session_id for e in closed) == sorted([a.id, b.id])
            assert {e.kind for e in closed} == {EventKind.CLOSED}
            mine = events_only(drain(only_a))
            assert {e.session_id for e in mine} == {a.id}
            assert mine[-1].kind is EventKind.CLOSED


async def test_late_subscriber_sees_only_later_events_and_can_take_a_snapshot() -> None:
    async with open_supervisor() as sup:
        early = sup.create_session_nowait(echo_actor)
        await trio.testing.wait_all_tasks_blocked()
        async with sup.subscribe(snapshot=True) as events:
            assert [s.id for s in events.sessions] == [early.id]
            assert events.sessions[0].state is SessionState.READY
            late = sup.create_session_nowait(echo_actor)
            items = events_only(drain(events))
            assert {e.session_id for e in items} == {late.id}
            assert items[0].kind is EventKind.CREATED


async def test_subscriber_that_never_reads_does_not_slow_the_supervisor_and_sees_lagged(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_supervisor(max_sessions=10_000, idle_timeout=1.0) as sup:
        async with (
            sup.subscribe(buffer=100) as sleeper,
            sup.subscribe(kinds=TERMINAL, buffer=100_000) as counter,
        ):
            start = trio.current_time()
            for _ in range(10):
                for _ in range(1_000):
                    sup.create_session_nowait(echo_actor)
                await trio.sleep(2)  # all expire
            assert len(sup) == 0
            # Nothing waited on the sleeping subscriber: the clock only moved by our sleeps.
            assert trio.current_time() - start == pytest.approx(20.0)
            first = sleeper.receive_nowait()
            assert isinstance(first, Lagged)
            rest = drain(sleeper)
            assert len(rest) == 100 and all(isinstance(e, Event) for e in rest)
            # per session: CREATED, 2 state changes to READY, INITIALIZED, 2 to CLOSED, EXPIRED
            assert first.missed == 10_000 * 7 - 100
            assert sleeper.dropped_total == first.missed
            assert len(events_only(drain(counter))) == 10_000
            assert sup.statistics().events_dropped_total == first.missed


async def test_exactly_one_terminal_event_per_session_whatever_ends_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def crash(ctx: SessionContext[Any]) -> None:
        raise RuntimeError("bad")

    async def returns(ctx: SessionContext[Any]) -> None:
        return

    async def ignores_close(ctx: SessionContext[Any]) -> None:
        await trio.sleep_forever()

    async with open_supervisor(idle_timeout=5.0, init_timeout=3.0, close_grace=1.0) as sup:
        events = sup.subscribe(buffer=10_000)
        ids = [sup.create_session_nowait(a).id for a in (crash, returns, idle_actor)]
        ready = sup.create_session_nowait(echo_actor)
        closing = sup.create_session_nowait(ignores_close)
        sup.close_session(closing.id)
        # close, then fail while closing: still exactly one terminal event
        failing = sup.create_session_nowait(crash)
        sup.close_session(failing.id)
        await trio.sleep(6)
        ids += [ready.id, closing.id, failing.id]
        last = sup.create_session_nowait(echo_actor)
        ids.append(last.id)
    by_session: dict[str, list[Event]] = defaultdict(list)
    for item in events_only(drain(events)):
        by_session[item.session_id].append(item)
    assert set(by_session) == set(ids)
    for session_events in by_session.values():
        terminal = [e for e in session_events if e.kind in TERMINAL]
        assert len(terminal) == 1
        assert session_events[0].kind is EventKind.CREATED
        assert session_events[-1] is terminal[0]
        assert terminal[0].reason
    assert by_session[ids[0]][-1].kind is EventKind.FAILED
    assert by_session[ids[1]][-1].reason == "actor-returned"
    assert by_session[ids[2]][-1].reason == "init-timeout"
    assert by_session[ready.id][-1].kind is EventKind.EXPIRED
    assert by_session[closing.id][-1].reason == "closed"
    assert by_session[failing.id][-1].kind is EventKind.FAILED
    assert by_session[last.id][-1].reason == "shutdown"


async def test_subscription_ends_after_shutdown_delivered_everything() -> None:
    async with open_supervisor() as sup:
        events = sup.subscribe()
        for _ in range(3):
            sup.create_session_nowait(echo_actor)
        await sup.shutdown()
        items = [item async for item in events]
        assert sum(1 for i in items if isinstance(i, Event) and i.kind.is_terminal) == 3
        late = sup.subscribe()
        assert [item async for item in late] == []


async def test_closing_a_subscription_stops_delivery() -> None:
    async with open_supervisor() as sup:
        async with sup.subscribe() as events:
            pass
        sup.create_session_nowait(echo_actor)
        assert drain(events) == []
        assert sup.statistics().subscribers == 0
        with pytest.raises(ValueError, match="buffer"):
            sup.subscribe(buffer=0)


async def test_event_and_snapshot_reprs_show_8_characters_of_the_id() -> None:
    async with open_supervisor() as sup, sup.subscribe() as events:
        session = sup.create_session_nowait(idle_actor)
        event = await events.__anext__()
        for text in (repr(session.snapshot()), repr(event), str(event)):
            assert session.id not in text
            assert session.id[:9] not in text
            assert session.id[:8] in text


async def test_a_subscription_in_the_block_ends_once_a_cancelled_shutdown_has_ended_all(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def ignores_close(ctx: SessionContext[Any]) -> None:
        await trio.sleep_forever()  # never reads its mailbox: cancelled in the end

    async with open_supervisor(shutdown_grace=50) as sup, sup.subscribe() as events:
        session = sup.create_session_nowait(ignores_close)
        with trio.move_on_after(1):
            await sup.shutdown()  # cancelled: what is left is cancelled at once
        await trio.sleep(1)
        assert len(sup) == 0
        # No event can come any more, so the subscription ends (before the block is left).
        with trio.fail_after(5):
            items = [item async for item in events]
        terminal = [e for e in events_only(items) if e.kind.is_terminal]
        assert [e.session_id for e in terminal] == [session.id]
