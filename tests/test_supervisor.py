"""Registry, capacity, failure isolation, closing, shutdown and statistics."""

from __future__ import annotations

import contextlib
import math
import secrets
import string
from typing import Any

import pytest
import trio
import trio.testing

from supervisor import (
    CapacityError,
    Event,
    EventKind,
    InvalidTransition,
    PrincipalMismatch,
    SessionClosed,
    SessionContext,
    SessionNotFound,
    SessionState,
    SupervisorClosed,
    Transport,
    open_supervisor,
)

from ._helpers import drain, echo_actor, events_only, idle_actor


async def test_ids_are_random_visible_ascii_and_at_least_128_bits() -> None:
    async with open_supervisor(max_sessions=1000, idle_timeout=None) as sup:
        ids = [sup.create_session_nowait(idle_actor).id for _ in range(1000)]
        assert len(set(ids)) == 1000
        allowed = set(string.ascii_letters + string.digits + "-_")
        for session_id in ids:
            assert set(session_id) <= allowed
            assert len(session_id) * 6 >= 128  # base64: 6 bits per character
        # no shared prefix or suffix, as a counter or clock would leave
        assert len({i[:4] for i in ids}) > 900
        assert len({i[-4:] for i in ids}) > 900
        sup.close_all()


async def test_registry_lookups_and_seed_style_queries() -> None:
    async with open_supervisor() as sup:
        a = sup.create_session_nowait(echo_actor, transport=Transport.HTTP)
        b = sup.create_session_nowait(idle_actor, transport="stdio")  # type: ignore[arg-type]
        await trio.testing.wait_all_tasks_blocked()
        assert len(sup) == 2
        assert sup.get_session(a.id) is a
        assert a.id in sup and sup.has_session(b.id)
        assert b.transport is Transport.STDIO
        assert sup.sessions() == [a, b]
        assert sup.active_sessions() == [a, b]  # created and ready both count as active
        sup.close_session(b.id)
        assert sup.active_sessions() == [a]
        metrics = sup.metrics()
        assert (metrics.total, metrics.active, metrics.authenticated) == (2, 1, 0)


async def test_capacity_rejects_when_full_and_the_slot_frees_when_the_actor_ends() -> None:
    finish = trio.Event()

    async def slow_to_close(ctx: SessionContext[Any]) -> None:
        async for _ in ctx.mailbox:
            pass
        with trio.CancelScope(shield=True):
            await finish.wait()  # still cleaning up after being asked to close

    async with open_supervisor(max_sessions=2, close_grace=100.0) as sup:
        first = sup.create_session_nowait(slow_to_close)
        sup.create_session_nowait(slow_to_close)
        with pytest.raises(CapacityError, match=r"maximum sessions \(2\) reached"):
            sup.create_session_nowait(echo_actor)
        sup.close_session(first.id)
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(CapacityError):  # closing still holds its slot
            sup.create_session_nowait(echo_actor)
        finish.set()
        await trio.testing.wait_all_tasks_blocked()
        sup.create_session_nowait(echo_actor)
        assert sup.statistics().rejected_total == 2
        sup.close_all()


async def test_per_principal_limit() -> None:
    async with open_supervisor(max_sessions=10, max_sessions_per_principal=2) as sup:
        for _ in range(2):
            sup.create_session_nowait(echo_actor, principal="alice")
        with pytest.raises(CapacityError, match="per principal"):
            sup.create_session_nowait(echo_actor, principal="alice")
        sup.create_session_nowait(echo_actor, principal="bob")
        anonymous = sup.create_session_nowait(echo_actor)
        with pytest.raises(CapacityError):
            sup.authenticate_session(anonymous.id, "alice")
        sup.authenticate_session(anonymous.id, "bob")
        with pytest.raises(CapacityError):
            sup.create_session_nowait(echo_actor, principal="bob")
        with pytest.raises(PrincipalMismatch):
            sup.authenticate_session(anonymous.id, "carol")
        assert sup.metrics().authenticated == 4
        sup.close_all()


async def test_create_session_waits_first_come_first_served(
    autojump_clock: trio.testing.MockClock,
) -> None:
    order: list[int] = []

    async with open_supervisor(max_sessions=1, idle_timeout=None) as sup:
        holder = sup.create_session_nowait(idle_actor)

        async def wait_for_slot(n: int) -> None:
            session = await sup.create_session(idle_actor)
            order.append(n)
            await trio.sleep(1)
            sup.close_session(session.id)

        async with trio.open_nursery() as nursery:
            for n in range(5):
                nursery.start_soon(wait_for_slot, n)
                await trio.testing.wait_all_tasks_blocked()
            assert sup.statistics().waiting == 5
            sup.close_session(holder.id)
            await trio.testing.wait_all_tasks_blocked()
            # The freed slot went to the first waiter; a newcomer does not jump the queue.
            with pytest.raises(CapacityError):
                sup.create_session_nowait(idle_actor)
        assert order == [0, 1, 2, 3, 4]


async def test_cancelled_waiter_takes_no_slot(autojump_clock: trio.testing.MockClock) -> None:
    async with open_supervisor(max_sessions=1, idle_timeout=None) as sup:
        holder = sup.create_session_nowait(idle_actor)
        with trio.move_on_after(5):
            await sup.create_session(idle_actor)
        assert sup.statistics().waiting == 0
        sup.close_session(holder.id)
        await trio.testing.wait_all_tasks_blocked()
        assert len(sup) == 0
        sup.create_session_nowait(idle_actor)  # the slot is free
        sup.close_all()


async def test_waiter_held_back_by_its_principal_does_not_block_others(
    autojump_clock: trio.testing.MockClock,
) -> None:
    got: list[str] = []
    async with open_supervisor(max_sessions=2, max_sessions_per_principal=1) as sup:
        alice = sup.create_session_nowait(idle_actor, principal="alice")
        other = sup.create_session_nowait(idle_actor, principal="zed")

        async def create(principal: str) -> None:
            await sup.create_session(idle_actor, principal=principal)
            got.append(principal)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(create, "alice")
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(create, "bob")
            await trio.testing.wait_all_tasks_blocked()
            sup.close_session(other.id)  # a slot frees, but alice still holds hers
            await trio.testing.wait_all_tasks_blocked()
            assert got == ["bob"]
            sup.close_session(alice.id)
        assert got == ["bob", "alice"]
        sup.close_all()


async def test_a_crashing_actor_fails_alone_beside_100_healthy_ones() -> None:
    class Boom(Exception):
        pass

    async def crasher(ctx: SessionContext[Any]) -> None:
        async for _ in ctx.mailbox:
            raise Boom("actor bug")

    async with open_supervisor(max_sessions=200) as sup:
        async with sup.subscribe(kinds={EventKind.FAILED}) as failures:
            healthy = [sup.create_session_nowait(echo_actor) for _ in range(100)]
            bad = sup.create_session_nowait(crasher)
            sup.send_nowait(bad.id, "trigger")
            await trio.testing.wait_all_tasks_blocked()
            (event,) = events_only(drain(failures))
            assert event.session_id == bad.id
            assert event.reason == "actor-error"
            assert type(event.error) is Boom  # the exception itself, not an ExceptionGroup
            assert event.session.state is SessionState.ERROR
            assert bad.id not in sup
            for session in healthy:
                assert await sup.call(session.id, session.id) == session.id
            stats = sup.statistics()
            assert (stats.failed_total, stats.total) == (1, 100)
            sup.close_all()


async def test_background_task_ends_with_the_session_and_its_error_fails_it() -> None:
    cancelled = trio.Event()

    async def ticker() -> None:
        try:
            await trio.sleep_forever()
        finally:
            cancelled.set()

    async def broken() -> None:
        raise LookupError("task bug")

    async def actor(ctx: SessionContext[Any]) -> None:
        ctx.start_soon(ticker)
        async for msg in ctx.mailbox:
            if msg.payload == "break":
                ctx.start_soon(broken)
            else:
                return

    async with open_supervisor() as sup:
        async with sup.subscribe(kinds={EventKind.CLOSED, EventKind.FAILED}) as events:
            quits = sup.create_session_nowait(actor)
            sup.send_nowait(quits.id, "quit")
            await cancelled.wait()
            fails = sup.create_session_nowait(actor)
            sup.send_nowait(fails.id, "break")
            await trio.testing.wait_all_tasks_blocked()
            ended = {e.session_id: e for e in events_only(drain(events))}
            assert ended[quits.id].kind is EventKind.CLOSED
            assert ended[quits.id].reason == "actor-returned"
            assert ended[fails.id].kind is EventKind.FAILED
            assert ended[fails.id].reason == "task-error"
            assert isinstance(ended[fails.id].error, LookupError)
            assert len(sup) == 0


async def test_close_grace_cancels_an_actor_that_does_not_return(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def stubborn(ctx: SessionContext[Any]) -> None:
        async for _ in ctx.mailbox:
            pass
        await trio.sleep_forever()

    async with open_supervisor(close_grace=2.0) as sup:
        async with sup.subscribe(kinds={EventKind.CLOSED}) as events:
            session = sup.create_session_nowait(stubborn)
            await trio.sleep(1)
            sup.close_session(session.id, reason="admin said so")
            async for item in events:
                assert isinstance(item, Event)
                assert item.reason == "admin said so"
                assert item.at == pytest.approx(3.0)
                break


async def test_session_leaves_the_registry_in_the_step_that_publishes_its_terminal_event() -> None:
    async with open_supervisor() as sup:
        seen: list[bool] = []

        async def watch() -> None:
            async with sup.subscribe() as events:
                async for item in events:
                    assert isinstance(item, Event)
                    seen.append(item.session_id in sup)
                    if item.kind.is_terminal:
                        return

        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch)
            await trio.testing.wait_all_tasks_blocked()
            session = sup.create_session_nowait(echo_actor)
            await trio.testing.wait_all_tasks_blocked()
            sup.close_session(session.id)
        # Subscribers run after the publishing step: by then the session is gone everywhere.
        assert seen[-1] is False
        with pytest.raises(SessionNotFound):
            sup.get_session(session.id)
        assert session.state is SessionState.CLOSED  # the view keeps its last state


async def test_set_state_is_validated_and_closing_means_close() -> None:
    async with open_supervisor() as sup:
        session = sup.create_session_nowait(idle_actor)
        with pytest.raises(InvalidTransition):
            sup.set_state(session.id, SessionState.READY)  # must pass through initializing
        sup.set_state(session.id, SessionState.INITIALIZING)
        sup.set_state(session.id, SessionState.READY)
        assert session.is_initialized
        with pytest.raises(InvalidTransition):
            sup.initialize_session(session.id)  # already initialized
        with pytest.raises(InvalidTransition, match="close_session"):
            sup.set_state(session.id, SessionState.CLOSED)
        sup.set_state(session.id, SessionState.CLOSING)
        assert session.close_reason == "closed"


async def test_shutdown_with_slow_actors(autojump_clock: trio.testing.MockClock) -> None:
    async def tidy(ctx: SessionContext[Any]) -> None:
        async for _ in ctx.mailbox:
            pass
        await trio.sleep(2)  # cleanup that finishes within the grace period

    async def stubborn(ctx: SessionContext[Any]) -> None:
        await trio.sleep_forever()

    items: list[Any] = []
    async with open_supervisor(shutdown_grace=5.0) as sup:
        async with sup.subscribe(kinds={EventKind.CLOSED}) as events:
            tidy_session = sup.create_session_nowait(tidy)
            stubborn_session = sup.create_session_nowait(stubborn)
            await trio.sleep(1)
            start = trio.current_time()
            async with trio.open_nursery() as nursery:

                async def collect() -> None:
                    async for item in events:  # ends when shutdown has delivered everything
                        items.append(item)

                nursery.start_soon(collect)
                await sup.shutdown()
                assert trio.current_time() - start == pytest.approx(5.0)
                with pytest.raises(SupervisorClosed):
                    sup.create_session_nowait(echo_actor)
            await sup.shutdown()  # idempotent
    ended = {e.session_id: e for e in items}
    assert set(ended) == {tidy_session.id, stubborn_session.id}
    assert ended[tidy_session.id].at == pytest.approx(start + 2.0)
    assert ended[stubborn_session.id].at == pytest.approx(start + 5.0)
    assert all(e.reason == "shutdown" for e in ended.values())


async def test_shutdown_releases_waiters_with_supervisor_closed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_supervisor(max_sessions=1) as sup:
        sup.create_session_nowait(idle_actor)
        async with trio.open_nursery() as nursery:

            async def waiter() -> None:
                with pytest.raises(SupervisorClosed):
                    await sup.create_session(idle_actor)

            nursery.start_soon(waiter)
            await trio.testing.wait_all_tasks_blocked()
            await sup.shutdown()


async def test_exception_in_the_block_cancels_sessions_at_once_with_terminal_events(
    autojump_clock: trio.testing.MockClock,
) -> None:
    class Stop(Exception):
        pass

    terminal: list[Event] = []
    with pytest.RaisesGroup(Stop, allow_unwrapped=True, flatten_subgroups=True):
        async with open_supervisor(shutdown_grace=100.0) as sup:
            sub = sup.subscribe(kinds={EventKind.CLOSED})
            for _ in range(3):
                sup.create_session_nowait(echo_actor)
            await trio.sleep(1)
            raise Stop
    terminal = events_only(drain(sub))
    assert len(terminal) == 3
    assert {e.reason for e in terminal} == {"cancelled"}
    assert {e.at for e in terminal} == {1.0}


async def test_statistics_follow_the_registry(autojump_clock: trio.testing.MockClock) -> None:
    async with open_supervisor(idle_timeout=10.0, max_sessions=5) as sup:
        a = sup.create_session_nowait(echo_actor, transport=Transport.HTTP, principal="p")
        await trio.sleep(1)
        b = sup.create_session_nowait(idle_actor, transport=Transport.WEBSOCKET)
        await trio.testing.wait_all_tasks_blocked()
        stats = sup.statistics()
        assert stats.total == 2
        assert stats.by_state[SessionState.READY] == 1
        assert stats.by_state[SessionState.CREATED] == 1
        assert stats.by_state[SessionState.CLOSED] == 0
        assert set(stats.by_state) == set(SessionState)
        assert stats.by_transport[Transport.HTTP] == 1
        assert stats.by_transport[Transport.WEBSOCKET] == 1
        assert stats.by_transport[Transport.STDIO] == 0
        assert stats.oldest == a.created_at and stats.newest == b.created_at
        assert stats.oldest is not None and stats.newest is not None
        assert stats.oldest < stats.newest
        assert (stats.active, stats.authenticated, stats.max_sessions) == (1, 1, 5)
        await trio.sleep(20)
        stats = sup.statistics()
        assert stats.total == 0 and stats.expired_total == 2
        assert stats.created_total == 2 == stats.ended_total
        assert stats.oldest is None
        assert sup.metrics().expired == 2


@pytest.mark.slow
async def test_100k_sessions_created_and_closed_leave_nothing_behind() -> None:
    async with open_supervisor(max_sessions=10_000, idle_timeout=None) as sup:
        for _ in range(10):
            batch = [sup.create_session_nowait(echo_actor) for _ in range(10_000)]
            await trio.testing.wait_all_tasks_blocked()
            for session in batch:
                sup.close_session(session.id)
            await trio.testing.wait_all_tasks_blocked()
            assert len(sup) == 0
        stats = sup.statistics()
        assert stats.created_total == 100_000 == stats.closed_total
        # No task left behind: only the supervisor's timers run beside the sessions.
        assert [t.name for t in sup._nursery.child_tasks] == ["supervisor timers"]
        assert sup._used == 0


async def test_guessing_ids_finds_nothing() -> None:
    async with open_supervisor(max_sessions=100) as sup:
        for _ in range(100):
            sup.create_session_nowait(idle_actor)
        hits = sum(secrets.token_urlsafe(24) in sup for _ in range(10_000))
        assert hits == 0
        sup.close_all()


async def test_closing_an_actor_that_ignores_its_mailbox_still_ends_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_supervisor(close_grace=0.5) as sup:

        async def ignores_everything(ctx: SessionContext[Any]) -> None:
            await trio.sleep_forever()

        session = sup.create_session_nowait(ignores_everything)
        await trio.sleep(1)
        assert sup.close_session(session.id)
        await trio.sleep(1)
        assert session.id not in sup
        with pytest.raises(SessionClosed):
            SessionContext(session, sup).touch()


# -- issue 9: hardening -------------------------------------------------------------------------

BAD_CREATE_ARGUMENTS: list[tuple[dict[str, Any], type[Exception], str]] = [
    ({"transport": "x"}, ValueError, "transport"),
    ({"transport": ["http"]}, ValueError, "transport"),
    ({"metadata": 5}, TypeError, "metadata"),
    ({"metadata": "not a mapping"}, TypeError, "metadata"),
    ({"principal": ["alice"]}, TypeError, "principal"),
    ({"principal": 5}, TypeError, "principal"),
    ({"principal": b"alice"}, TypeError, "principal"),
    ({"principal": ""}, ValueError, "principal"),
    ({"actor": 5}, TypeError, "actor"),
    ({"actor": None}, TypeError, "actor"),
]


@pytest.mark.parametrize(("bad", "error", "names"), BAD_CREATE_ARGUMENTS)
@pytest.mark.parametrize("waiting", [False, True])
async def test_invalid_create_arguments_raise_before_a_slot_is_reserved(
    autojump_clock: trio.testing.MockClock,
    bad: dict[str, Any],
    error: type[Exception],
    names: str,
    waiting: bool,
) -> None:
    async with open_supervisor(max_sessions=1, max_sessions_per_principal=1) as sup:
        kwargs: dict[str, Any] = {"actor": idle_actor, **bad}
        actor = kwargs.pop("actor")
        for _ in range(3):  # each failure leaves nothing behind, so the next one fails alike
            with pytest.raises(error, match=names):
                if waiting:
                    await sup.create_session(actor, **kwargs)
                else:
                    sup.create_session_nowait(actor, **kwargs)
        stats = sup.statistics()
        assert (stats.total, stats.created_total, stats.rejected_total) == (0, 0, 0)
        assert sup._used == 0 and sup._by_principal == {}
        session = sup.create_session_nowait(idle_actor, principal="alice")  # the slot is free
        assert session.id in sup
        with trio.fail_after(10):
            await sup.shutdown()


async def test_invalid_arguments_of_a_waiting_create_raise_at_once_even_when_full(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_supervisor(max_sessions=1) as sup:
        holder = sup.create_session_nowait(idle_actor)
        start = trio.current_time()
        with pytest.raises(ValueError, match="transport"):
            await sup.create_session(idle_actor, transport="x")  # type: ignore[arg-type]
        assert trio.current_time() == start  # did not wait for a slot first
        assert sup.statistics().waiting == 0
        sup.close_session(holder.id)
        await trio.testing.wait_all_tasks_blocked()
        assert sup._used == 0
        sup.create_session_nowait(idle_actor)
        with trio.fail_after(10):
            await sup.shutdown()


async def test_a_failure_to_start_the_actor_task_releases_the_slot(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_supervisor(max_sessions=1) as sup:
        nursery = sup._nursery

        class Refusing:
            def start_soon(self, *args: Any, **kwargs: Any) -> None:
                raise RuntimeError("Nursery is closed to new arrivals")

        sup._nursery = Refusing()  # type: ignore[assignment]
        with pytest.raises(RuntimeError, match="closed"):
            sup.create_session_nowait(idle_actor, principal="p")
        sup._nursery = nursery
        assert (len(sup), sup._used, sup._by_principal) == (0, 0, {})
        assert sup.statistics().created_total == 0
        sup.create_session_nowait(idle_actor)
        with trio.fail_after(10):
            await sup.shutdown()


async def test_authenticate_rejects_a_non_str_principal_and_changes_nothing() -> None:
    async with open_supervisor(max_sessions_per_principal=1) as sup:
        session = sup.create_session_nowait(idle_actor)
        for bad in (5, ["alice"], b"alice"):
            with pytest.raises(TypeError, match="principal"):
                sup.authenticate_session(session.id, bad)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="principal"):
            sup.authenticate_session(session.id, "")
        assert session.principal is None and not session.is_authenticated
        assert sup._by_principal == {}
        sup.authenticate_session(session.id, "alice")
        assert session.principal == "alice"


async def test_shutdown_rejects_a_bad_grace_before_doing_anything() -> None:
    async with open_supervisor() as sup:
        for bad in (-1.0, math.nan, "5"):
            with pytest.raises(ValueError, match="grace"):
                await sup.shutdown(bad)  # type: ignore[arg-type]
        assert not sup.closing
        sup.create_session_nowait(idle_actor)


async def test_a_cancelled_shutdown_is_completed_by_leaving_the_block_without_a_second_grace(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def tidy(ctx: SessionContext[Any]) -> None:
        async for _ in ctx.mailbox:
            pass

    async def stubborn(ctx: SessionContext[Any]) -> None:
        try:
            await trio.sleep_forever()
        finally:
            with trio.CancelScope(shield=True):
                await trio.sleep(2)  # cleanup that takes a while once cancelled

    items: list[Any] = []
    async with trio.open_nursery() as outer:
        async with open_supervisor(shutdown_grace=100.0) as sup:
            events = sup.subscribe()

            async def collect() -> None:
                async for item in events:  # must end once the supervisor is done
                    items.append(item)

            outer.start_soon(collect)
            sup.create_session_nowait(tidy)
            stubborn_session = sup.create_session_nowait(stubborn)
            start = trio.current_time()
            with trio.move_on_after(1) as scope:
                await sup.shutdown()
            assert scope.cancelled_caught
            # Cancelling the shutdown cancelled what was left at once.
            assert stubborn_session.id in sup
        # Leaving the block waited only for that cleanup, not for a second grace period.
        assert trio.current_time() - start == pytest.approx(3.0)
        assert len(sup) == 0
    terminal = [e for e in events_only(items) if e.kind.is_terminal]
    assert [e.reason for e in terminal] == ["shutdown", "shutdown"]
    assert terminal[1].session_id == stubborn_session.id
    assert terminal[1].kind is EventKind.CLOSED


async def test_a_cancelled_shutdown_does_not_poison_the_next_call(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_supervisor(shutdown_grace=10.0) as sup:
        sup.create_session_nowait(idle_actor)
        with trio.move_on_after(0):  # cancelled before anything could end
            await sup.shutdown()
        with trio.fail_after(1):
            await sup.shutdown()
        assert len(sup) == 0
        with trio.fail_after(1):
            await sup.shutdown()  # and again: idempotent


async def test_a_shutdown_cancelled_after_every_session_ended_is_completed_later(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_supervisor() as sup:
        sub = sup.subscribe()
        session = sup.create_session_nowait(idle_actor)
        sup.close_session(session.id)
        await trio.testing.wait_all_tasks_blocked()
        assert len(sup) == 0
        with trio.CancelScope() as scope:
            scope.cancel()
            await sup.shutdown()
    with trio.fail_after(1):
        assert [e.kind for e in events_only(drain(sub))][-1] is EventKind.CLOSED
        async for _ in sub:  # ended: the supervisor has shut down
            raise AssertionError("nothing left to deliver")  # pragma: no cover


async def test_concurrent_shutdown_callers_all_return_when_it_is_done(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def slow(ctx: SessionContext[Any]) -> None:
        async for _ in ctx.mailbox:
            pass
        await trio.sleep(3)

    returned: list[float] = []
    async with open_supervisor(shutdown_grace=10.0) as sup:
        session = sup.create_session_nowait(slow)
        await trio.lowlevel.checkpoint()

        async def stop(grace: float | None) -> None:
            await sup.shutdown(grace)
            assert session.id not in sup
            returned.append(trio.current_time())

        async with trio.open_nursery() as nursery:
            for grace in (None, 5.0, None):
                nursery.start_soon(stop, grace)
    assert returned == [pytest.approx(3.0)] * 3


async def test_a_later_shutdown_with_a_shorter_grace_tightens_the_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def stubborn(ctx: SessionContext[Any]) -> None:
        await trio.sleep_forever()

    async with open_supervisor(shutdown_grace=100.0) as sup:
        sup.create_session_nowait(stubborn)
        await trio.lowlevel.checkpoint()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sup.shutdown)
            await trio.sleep(1)
            await sup.shutdown(2.0)
            assert trio.current_time() == pytest.approx(3.0)


class _KeptCancelled:
    """Makes a trio.Cancelled the way a buggy actor might keep one from an inner scope."""

    @staticmethod
    async def make() -> trio.Cancelled:
        with trio.CancelScope() as scope:
            scope.cancel()
            try:
                await trio.lowlevel.checkpoint()
            except trio.Cancelled as exc:
                return exc
        raise AssertionError("not cancelled")  # pragma: no cover


async def test_a_stray_cancelled_from_an_actor_fails_only_that_session(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def stray(ctx: SessionContext[Any]) -> None:
        kept = await _KeptCancelled.make()
        async for _ in ctx.mailbox:
            raise kept

    async def stray_group(ctx: SessionContext[Any]) -> None:
        kept = await _KeptCancelled.make()
        async for _ in ctx.mailbox:
            raise BaseExceptionGroup("inner", [kept])

    after_block: list[bool] = []
    async with open_supervisor() as sup:
        async with sup.subscribe(kinds={EventKind.FAILED}) as failures:
            sibling = sup.create_session_nowait(echo_actor)
            bad = sup.create_session_nowait(stray)
            bad_group = sup.create_session_nowait(stray_group)
            await trio.sleep(1)
            sup.send_nowait(bad.id, "go")
            sup.send_nowait(bad_group.id, "go")
            await trio.sleep(1)
            assert await sup.call(sibling.id, "still here") == "still here"
            failed = {e.session_id: e for e in events_only(drain(failures))}
            assert set(failed) == {bad.id, bad_group.id}
            assert isinstance(failed[bad.id].error, trio.Cancelled)
            assert isinstance(failed[bad_group.id].error, BaseExceptionGroup)
            assert {e.reason for e in failed.values()} == {"actor-error"}
            assert sup.statistics().failed_total == 2
            after_block.append(True)
        sup.close_all()
    assert after_block == [True]  # the block ran to its end


async def test_a_stray_cancelled_from_a_background_task_fails_only_that_session(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def task() -> None:
        raise await _KeptCancelled.make()

    async def actor(ctx: SessionContext[Any]) -> None:
        async for _ in ctx.mailbox:
            ctx.start_soon(task)

    reached_the_end = False
    async with open_supervisor() as sup:
        async with sup.subscribe(kinds={EventKind.FAILED}) as failures:
            sibling = sup.create_session_nowait(echo_actor)
            bad = sup.create_session_nowait(actor)
            sup.send_nowait(bad.id, "go")
            await trio.sleep(1)
            (event,) = events_only(drain(failures))
            assert (event.session_id, event.reason) == (bad.id, "task-error")
            assert isinstance(event.error, trio.Cancelled)
            assert await sup.call(sibling.id, 1) == 1
            reached_the_end = True
        sup.close_all()
    assert reached_the_end  # the block was not abandoned


async def test_the_supervisors_own_cancellation_still_reads_cancelled(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def with_inner_nursery(ctx: SessionContext[Any]) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.sleep_forever)
            await trio.sleep_forever()

    sub = None
    with trio.move_on_after(5):
        async with open_supervisor() as sup:
            sub = sup.subscribe()
            sup.create_session_nowait(idle_actor)
            sup.create_session_nowait(with_inner_nursery)
            await trio.sleep_forever()
    assert sub is not None
    terminal = [e for e in events_only(drain(sub)) if e.kind.is_terminal]
    assert [(e.kind, e.reason) for e in terminal] == [(EventKind.CLOSED, "cancelled")] * 2


@pytest.mark.parametrize("how", ["exception", "cancelled"])
async def test_every_subscription_ends_however_the_block_is_left(
    autojump_clock: trio.testing.MockClock, how: str
) -> None:
    class Stop(Exception):
        pass

    seen: list[Any] = []
    ended = trio.Event()

    async def reader(sub: Any) -> None:
        async for item in sub:
            seen.append(item)
        ended.set()

    async with trio.open_nursery() as outer:
        with (
            trio.move_on_after(3),
            pytest.RaisesGroup(Stop, allow_unwrapped=True, flatten_subgroups=True)
            if how == "exception"
            else contextlib.nullcontext(),
        ):
            async with open_supervisor() as sup:
                outer.start_soon(reader, sup.subscribe())
                sup.create_session_nowait(echo_actor)
                await trio.sleep(1)
                if how == "exception":
                    raise Stop
                await trio.sleep_forever()
        with trio.fail_after(1):
            await ended.wait()
    kinds = [e.kind for e in events_only(seen)]
    assert kinds[0] is EventKind.CREATED and kinds[-1] is EventKind.CLOSED


async def test_ids_in_messages_are_at_most_eight_characters(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_supervisor(mailbox_size=1) as sup:
        session = sup.create_session_nowait(idle_actor)
        errors: list[BaseException] = []
        with pytest.raises(SessionNotFound) as not_found:
            sup.get_session(session.id + "x")
        errors.append(not_found.value)
        sup.close_session(session.id)
        with pytest.raises(SessionClosed) as closing:
            sup.send_nowait(session.id, 1)
        errors.append(closing.value)
        for error in errors:
            assert session.id[:8] in str(error)
            assert session.id[:9] not in str(error)
        assert "…" in str(not_found.value)
        assert session.id[:9] not in repr(session)


async def test_close_reasons_must_be_strings() -> None:
    async with open_supervisor() as sup:
        session = sup.create_session_nowait(idle_actor)
        with pytest.raises(TypeError, match="reason"):
            sup.close_session(session.id, 5)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="reason"):
            sup.close_all(["x"])  # type: ignore[arg-type]
        assert session.close_reason is None
        assert sup.close_session(session.id, "bye")
        assert session.close_reason == "bye"
