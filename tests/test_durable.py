"""Durable sessions in the core: save, passivation, activation, retention, restarts, capacity.

Every timeout runs on trio's MockClock (``autojump_clock``) with the in-memory store of
tests/_memory_store.py; the real stores pass the same contract in tests/_store_contract.py.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from supervisor import (
    ActiveElsewhere,
    CapacityError,
    Event,
    EventKind,
    SessionClosed,
    SessionContext,
    SessionNotFound,
    SessionState,
    StoreError,
    open_supervisor,
)

from ._helpers import drain, echo_actor, events_only
from ._memory_store import MemoryStore, Shelf


async def counter(ctx: SessionContext[Any]) -> None:
    """A durable counter: ``"inc"`` adds one, saves, replies the count; ``"boom"`` raises.

    Activated again or restarted, its session is initialized already (with the saved handshake).
    """
    if not ctx.session.is_initialized:
        ctx.initialize(client_info={"name": "t"})
    count = (ctx.saved or {}).get("count", 0)
    async for msg in ctx.mailbox:
        if msg.payload == "boom":
            raise RuntimeError("boom")
        if msg.payload == "inc":
            count += 1
            await ctx.save({"count": count})
        msg.reply(count)


def kinds(items: list[Any]) -> list[EventKind]:
    return [e.kind for e in events_only(items)]


async def test_durable_needs_a_store_and_a_registered_actor() -> None:
    async with open_supervisor() as sup:
        with pytest.raises(ValueError, match="need a store"):
            sup.create_session_nowait(counter, durable=True)
    async with open_supervisor(store=MemoryStore()) as sup:
        with pytest.raises(ValueError, match="not registered"):
            sup.create_session_nowait(counter, durable=True)
        sup.register_durable("counter", counter)
        sup.register_durable("counter", counter)  # the same again is fine
        with pytest.raises(ValueError, match="different actor"):
            sup.register_durable("counter", echo_actor)
        with pytest.raises(ValueError, match="empty"):
            sup.register_durable("", counter)
        assert len(sup) == 0 and sup.statistics().rejected_total == 0


async def test_save_is_write_through_and_checked() -> None:
    shelf = Shelf()
    async with open_supervisor(store=MemoryStore(shelf)) as sup:
        sup.register_durable("counter", counter)
        session = sup.create_session_nowait(counter, durable=True, metadata={"k": 1, "f": object})
        assert session.durable and session.epoch == 1
        assert await sup.call(session.id, "inc") == 1
        # The reply came after the store confirmed the save.
        record = shelf.records[session.id]
        assert record.state == {"count": 1} and record.actor == "counter"
        assert record.metadata == {"k": 1}  # what JSON cannot carry is left out
        assert await sup.call(session.id, "inc") == 2
        assert shelf.records[session.id].state == {"count": 2}
        checked: list[str] = []

        async def bad(ctx: SessionContext[Any]) -> None:
            with pytest.raises(TypeError, match="JSON"):
                await ctx.save({"x": object()})
            checked.append("json")

        sup.register_durable("bad", bad)
        sup.create_session_nowait(bad, durable=True)

        async def plain(ctx: SessionContext[Any]) -> None:
            with pytest.raises(TypeError, match="not durable"):
                await ctx.save(1)
            assert not ctx.durable and ctx.saved is None
            checked.append("plain")

        sup.create_session_nowait(plain)
        await trio.testing.wait_all_tasks_blocked()
        assert sorted(checked) == ["json", "plain"]


async def test_a_save_the_store_refuses_is_not_acknowledged() -> None:
    store = MemoryStore()
    async with open_supervisor(store=store) as sup:
        sup.register_durable("counter", counter)
        session = sup.create_session_nowait(counter, durable=True)
        assert await sup.call(session.id, "inc") == 1
        store.fail = StoreError("disk full")

        async def saver(ctx: SessionContext[Any]) -> None:
            async for msg in ctx.mailbox:
                try:
                    await ctx.save(msg.payload)
                except StoreError as exc:
                    msg.fail(exc)
                else:
                    msg.reply("saved")

        sup.register_durable("saver", saver)
        other = sup.create_session_nowait(saver, durable=True)
        with pytest.raises(StoreError, match="disk full"):
            await sup.call(other.id, {"n": 1})
        store.fail = None
        assert await sup.call(other.id, {"n": 2}) == "saved"


async def test_idle_timeout_passivates_then_a_call_reactivates(
    autojump_clock: trio.testing.MockClock,
) -> None:
    shelf = Shelf()
    async with open_supervisor(
        store=MemoryStore(shelf), idle_timeout=10, retention=100, max_sessions=1
    ) as sup:
        sup.register_durable("counter", counter)
        async with sup.subscribe() as events:
            session = sup.create_session_nowait(counter, durable=True)
            sid = session.id
            for n in (1, 2, 3):
                assert await sup.call(sid, "inc") == n
            await trio.sleep(10.5)
            # Passivated: out of the registry, its slot free, its state kept without an owner.
            assert sid not in sup and len(sup) == 0
            got = events_only(drain(events))
            passivated = [e for e in got if e.kind is EventKind.PASSIVATED]
            assert [e.reason for e in passivated] == ["idle-timeout"]
            assert not any(e.kind.is_terminal for e in got)
            assert shelf.records[sid].owner is None and shelf.records[sid].expires is not None
            other = sup.create_session_nowait(echo_actor)  # the slot is free
            sup.close_session(other.id)
            await trio.sleep(1)
            stats = sup.statistics()
            assert stats.passivated_total == 1 and stats.retained == 1
            assert stats.ended_total == 1  # the echo session only

            again = await sup.activate(sid)
            assert again.id == sid and again.epoch == 2 and again.is_initialized
            assert again.client_info == {"name": "t"}
            assert await sup.call(sid, "inc") == 4
            assert await sup.activate(sid) is again  # live: returned as it is
            assert [e.kind for e in events_only(drain(events))].count(EventKind.ACTIVATED) == 1
            assert sup.statistics().activated_total == 1 and sup.statistics().retained == 0


async def test_retention_expires_a_passivated_session_for_good(
    autojump_clock: trio.testing.MockClock,
) -> None:
    shelf = Shelf()
    async with open_supervisor(store=MemoryStore(shelf), idle_timeout=10, retention=60) as sup:
        sup.register_durable("counter", counter)
        async with sup.subscribe() as events:
            sid = sup.create_session_nowait(counter, durable=True, metadata={"tenant": "t"}).id
            assert await sup.call(sid, "inc") == 1
            await trio.sleep(10.5)
            assert sid in shelf.records
            await trio.sleep(59)
            assert sid in shelf.records  # not yet
            await trio.sleep(2)
            assert sid not in shelf.records
            expired = [e for e in events_only(drain(events)) if e.kind is EventKind.EXPIRED]
            assert [e.reason for e in expired] == ["retention"]
            snapshot = expired[0].session
            assert (snapshot.id, snapshot.close_reason) == (sid, "retention")
            assert snapshot.state is SessionState.CLOSED and snapshot.metadata == {"tenant": "t"}
            with pytest.raises(SessionNotFound):
                await sup.activate(sid)
            assert sup.statistics().retained == 0


async def test_a_session_that_passivates_twice_keeps_the_later_retention(
    autojump_clock: trio.testing.MockClock,
) -> None:
    shelf = Shelf()
    async with open_supervisor(store=MemoryStore(shelf), idle_timeout=10, retention=30) as sup:
        sup.register_durable("counter", counter)
        sid = sup.create_session_nowait(counter, durable=True).id
        await sup.call(sid, "inc")
        await trio.sleep(11)  # passivated at 10, retained until 40
        await trio.sleep(20)
        await sup.activate(sid)  # at 31
        await sup.call(sid, "inc")
        await trio.sleep(11)  # passivated again at ~41, retained until ~71
        await trio.sleep(10)  # 52: past the first retention
        assert sid in shelf.records
        assert await sup.activate(sid) is not None
        assert await sup.call(sid, "inc") == 3


async def test_close_session_ends_a_durable_session_for_good() -> None:
    shelf = Shelf()
    async with open_supervisor(store=MemoryStore(shelf)) as sup:
        sup.register_durable("counter", counter)
        sid = sup.create_session_nowait(counter, durable=True).id
        await sup.call(sid, "inc")
        async with sup.subscribe() as events:
            sup.close_session(sid)
            await trio.testing.wait_all_tasks_blocked()
            assert kinds(drain(events))[-1] is EventKind.CLOSED
        await trio.testing.wait_all_tasks_blocked()
        assert sid not in shelf.records
        with pytest.raises(SessionNotFound):
            await sup.activate(sid)


@pytest.mark.parametrize("delay", [0.0, 0.05])
async def test_shutdown_passivates_and_the_next_supervisor_activates(delay: float) -> None:
    # With a slow store too: the block is left only once the passivations are written.
    shelf = Shelf()
    async with open_supervisor(store=MemoryStore(shelf, delay=delay)) as sup:
        sup.register_durable("counter", counter)
        sid = sup.create_session_nowait(counter, durable=True).id
        for _ in range(3):
            await sup.call(sid, "inc")
    assert shelf.records[sid].owner is None
    async with open_supervisor(store=MemoryStore(shelf)) as sup:
        with pytest.raises(SessionNotFound, match="not registered"):
            await sup.activate(sid)
        assert shelf.records[sid].owner is None  # given back
        sup.register_durable("counter", counter)
        session = await sup.activate(sid)
        assert session.epoch == 3  # 2 was the refused attempt above
        assert await sup.call(sid, "inc") == 4
        with pytest.raises(SessionNotFound):
            await sup.activate("no-such-session")


async def test_a_dead_nodes_session_is_activated_elsewhere_and_the_stale_save_refused() -> None:
    shelf = Shelf()
    store_a, store_b = MemoryStore(shelf), MemoryStore(shelf)
    async with open_supervisor(store=store_a) as a, open_supervisor(store=store_b) as b:
        for sup in (a, b):
            sup.register_durable("counter", counter)
        sid = a.create_session_nowait(counter, durable=True).id
        for _ in range(3):
            await a.call(sid, "inc")
        with pytest.raises(ActiveElsewhere) as info:
            await b.activate(sid)  # A is alive
        assert info.value.owner == store_a.node
        shelf.kill(store_a.node)  # A is declared dead, but its actor still runs
        moved = await b.activate(sid)
        assert moved.epoch == 2
        assert await b.call(sid, "inc") == 4
        async with a.subscribe() as events:
            with pytest.raises(SessionClosed, match="superseded"):
                await a.call(sid, "inc")  # A's save is refused: one activation wins
            await trio.testing.wait_all_tasks_blocked()
            got = events_only(drain(events))
            assert (got[-1].kind, got[-1].reason) == (EventKind.CLOSED, "superseded")
        assert sid not in a
        assert shelf.records[sid].state == {"count": 4} and shelf.records[sid].owner == store_b.node


async def test_concurrent_activations_of_one_id_activate_it_once() -> None:
    shelf = Shelf()
    async with open_supervisor(store=MemoryStore(shelf, delay=0.01)) as sup:
        sup.register_durable("counter", counter)
        sid = sup.create_session_nowait(counter, durable=True).id
        await sup.call(sid, "inc")
    async with open_supervisor(store=MemoryStore(shelf, delay=0.01)) as sup:
        sup.register_durable("counter", counter)
        got: list[Any] = []
        async with sup.subscribe() as events:
            async with trio.open_nursery() as nursery:
                for _ in range(5):

                    async def one() -> None:
                        got.append(await sup.activate(sid))

                    nursery.start_soon(one)
            assert len({id(s) for s in got}) == 1
            assert kinds(drain(events)).count(EventKind.ACTIVATED) == 1
        assert got[0].epoch == 2


async def test_an_activation_while_passivating_waits_for_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def slow_to_stop(ctx: SessionContext[Any]) -> None:
        try:
            async for msg in ctx.mailbox:
                msg.reply(ctx.saved)
        finally:
            with trio.CancelScope(shield=True):
                await trio.sleep(0.5)

    async with open_supervisor(store=MemoryStore(), idle_timeout=10) as sup:
        sup.register_durable("slow", slow_to_stop)
        session = sup.create_session_nowait(slow_to_stop, durable=True)
        await trio.sleep(10.1)
        assert session.id in sup and session.close_reason == "idle-timeout"  # still stopping
        again = await sup.activate(session.id)
        assert again is not session and again.epoch == 2
        assert trio.current_time() >= 10.5


async def test_restart_from_the_last_save_within_the_intensity(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_supervisor(store=MemoryStore(), max_restarts=2, restart_window=10) as sup:
        sup.register_durable("counter", counter)
        async with sup.subscribe() as events:
            session = sup.create_session_nowait(counter, durable=True)
            sid = session.id
            assert await sup.call(sid, "inc") == 1
            with pytest.raises(SessionClosed, match="restarted"):
                await sup.call(sid, "boom")  # the call the crashed actor had taken
            assert await sup.call(sid, "inc") == 2  # same id, from the last save
            assert session.restarts == 1 and sid in sup
            with pytest.raises(SessionClosed):
                await sup.call(sid, "boom")
            assert await sup.call(sid, "get") == 2
            with pytest.raises(SessionClosed):
                await sup.call(sid, "boom")  # a third crash within 10 s: past the intensity
            await trio.testing.wait_all_tasks_blocked()
            assert sid not in sup
            got = events_only(drain(events))
            restarted = [e for e in got if e.kind is EventKind.RESTARTED]
            assert len(restarted) == 2 and isinstance(restarted[0].error, RuntimeError)
            assert got[-1].kind is EventKind.FAILED and got[-1].reason == "actor-error"
            assert sup.statistics().restarted_total == 2


async def test_restarts_outside_the_window_do_not_count(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_supervisor(
        store=MemoryStore(), max_restarts=1, restart_window=5, idle_timeout=None
    ) as sup:
        sup.register_durable("counter", counter)
        sid = sup.create_session_nowait(counter, durable=True).id
        for _ in range(4):
            with pytest.raises(SessionClosed):
                await sup.call(sid, "boom")
            await trio.sleep(6)
            assert sid in sup
        assert await sup.call(sid, "inc") == 1


async def test_a_crash_storm_restarts_each_within_the_intensity_and_fails_the_rest(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_supervisor(
        store=MemoryStore(), max_restarts=3, restart_window=60, max_sessions=50
    ) as sup:
        sup.register_durable("counter", counter)
        crashes = {sup.create_session_nowait(counter, durable=True).id: n % 6 for n in range(30)}
        for sid in crashes:
            await sup.call(sid, "inc")

        async def storm(sid: str, times: int) -> None:
            for _ in range(times):
                if sid not in sup:
                    break  # failed: past the intensity
                with pytest.raises(SessionClosed):
                    await sup.call(sid, "boom")
                await trio.sleep(1)

        async with trio.open_nursery() as nursery:
            for sid, times in crashes.items():
                nursery.start_soon(storm, sid, times)
        await trio.testing.wait_all_tasks_blocked()
        for sid, times in crashes.items():
            if times <= 3:
                assert sid in sup and sup.get_session(sid).restarts == times
                assert await sup.call(sid, "get") == 1
            else:
                assert sid not in sup
        assert sup.statistics().failed_total == sum(1 for t in crashes.values() if t > 3)


async def test_a_non_durable_actor_that_raises_still_fails() -> None:
    async with open_supervisor(store=MemoryStore()) as sup:
        sup.register_durable("counter", counter)
        sid = sup.create_session_nowait(counter).id
        with pytest.raises(SessionClosed):
            await sup.call(sid, "boom")
        assert sup.statistics().failed_total == 1 and sup.statistics().restarted_total == 0


async def test_at_capacity_the_least_recently_used_idle_durable_session_is_passivated(
    autojump_clock: trio.testing.MockClock,
) -> None:
    shelf = Shelf()
    async with open_supervisor(
        store=MemoryStore(shelf), max_sessions=2, passivate_at_capacity=True
    ) as sup:
        sup.register_durable("counter", counter)
        old = sup.create_session_nowait(counter, durable=True).id
        await trio.sleep(1)
        new = sup.create_session_nowait(counter, durable=True).id
        await trio.sleep(1)
        await sup.call(old, "inc")  # old is now the most recently used
        await trio.sleep(1)
        async with sup.subscribe() as events:
            third = await sup.create_session(echo_actor, wait=False)
            got = events_only(drain(events))
        passivated = [e for e in got if e.kind is EventKind.PASSIVATED]
        assert [(e.session_id, e.reason) for e in passivated] == [(new, "capacity")]
        assert third.id in sup and old in sup and new not in sup
        # Activation makes room the same way.
        await sup.activate(new)
        assert new in sup and old not in sup


async def test_without_the_option_a_full_supervisor_refuses() -> None:
    async with open_supervisor(store=MemoryStore(), max_sessions=1) as sup:
        sup.register_durable("counter", counter)
        sup.create_session_nowait(counter, durable=True)
        with pytest.raises(CapacityError):
            await sup.create_session(counter, durable=True, wait=False)


async def test_saved_is_a_copy_and_the_handshake_is_kept() -> None:
    shelf = Shelf()
    seen: list[Any] = []

    async def actor(ctx: SessionContext[Any]) -> None:
        if not ctx.session.is_initialized:
            ctx.initialize(client_info={"name": "c"}, protocol_version="v1", capabilities={})
        async for msg in ctx.mailbox:
            state = ctx.saved or {"items": []}
            seen.append(state)
            state["items"].append(msg.payload)
            ctx.saved["items"].append("ignored") if ctx.saved else None
            await ctx.save(state)
            msg.reply(list(state["items"]))

    async with open_supervisor(store=MemoryStore(shelf)) as sup:
        sup.register_durable("list", actor)
        sid = sup.create_session_nowait(actor, durable=True, principal="alice").id
        assert await sup.call(sid, "a") == ["a"]
        assert await sup.call(sid, "b") == ["a", "b"]
    record = shelf.records[sid]
    assert record.handshake == {
        "client_info": {"name": "c"},
        "protocol_version": "v1",
        "capabilities": {},
    }
    assert record.principal == "alice" and record.transport == "in-process"
    async with open_supervisor(store=MemoryStore(shelf)) as sup:
        sup.register_durable("list", actor)
        session = await sup.activate(sid)
        assert session.principal == "alice" and session.is_authenticated
        assert session.protocol_version == "v1"
        assert await sup.call(sid, "c") == ["a", "b", "c"]


async def test_an_activation_right_after_a_close_finds_the_session_gone() -> None:
    # The deletion is written in the background; an activation waits for it, never revives.
    shelf = Shelf()
    async with open_supervisor(store=MemoryStore(shelf, delay=0.05)) as sup:
        sup.register_durable("counter", counter)
        sid = sup.create_session_nowait(counter, durable=True).id
        await sup.call(sid, "inc")
        async with sup.subscribe(kinds=[EventKind.CLOSED]) as events:
            sup.close_session(sid)
            await events.__anext__()
        assert sid not in sup and sid in shelf.records  # not deleted yet
        with pytest.raises(SessionNotFound):
            await sup.activate(sid)
        assert sid not in shelf.records


async def test_a_message_or_a_call_for_a_passivated_session_activates_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_supervisor(store=MemoryStore(), idle_timeout=10) as sup:
        sup.register_durable("counter", counter)
        sid = sup.create_session_nowait(counter, durable=True).id
        assert await sup.call(sid, "inc") == 1
        await trio.sleep(11)
        assert sid not in sup
        assert await sup.call(sid, "inc", timeout=5) == 2  # activated by the call itself
        await trio.sleep(11)
        await sup.send(sid, "inc")  # and by a message
        assert sup.get_session(sid).epoch == 3
        assert await sup.call(sid, "get") == 3
        with pytest.raises(SessionNotFound):
            await sup.call("no-such-session", "inc")
        sup.close_session(sid)
        with pytest.raises(SessionClosed):
            await sup.call(sid, "inc")  # closing for good: not activated again
        other = sup.create_session_nowait(counter, durable=True).id
        await trio.sleep(11)  # passivated
        with pytest.raises(SessionNotFound):
            sup.send_nowait(other, "inc")  # never waits, so never activates


async def test_passivate_session_on_demand() -> None:
    shelf = Shelf()
    async with open_supervisor(store=MemoryStore(shelf)) as sup:
        sup.register_durable("counter", counter)
        session = sup.create_session_nowait(counter, durable=True)
        sid = session.id
        assert await sup.call(sid, "inc") == 1
        assert not session.passivating
        async with sup.subscribe(kinds=[EventKind.PASSIVATED]) as events:
            assert sup.passivate_session(sid, reason="maintenance")
            assert session.passivating  # ending, to be activated again
            event = await events.__anext__()
        assert isinstance(event, Event) and event.reason == "maintenance"
        assert not sup.passivate_session(sid)  # gone from here: nothing to do
        assert await sup.call(sid, "inc") == 2  # activated again by the call
        plain = sup.create_session_nowait(echo_actor).id
        with pytest.raises(ValueError, match="not durable"):
            sup.passivate_session(plain)
        closing = sup.get_session(sid)
        sup.close_session(sid)
        assert not closing.passivating  # closing for good
