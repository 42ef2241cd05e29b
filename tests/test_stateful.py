"""A hypothesis state machine drives random operation sequences through one supervisor.

The supervisor runs in a trio loop on a worker thread with a MockClock that never moves by
itself: each rule runs in that loop through ``trio.from_thread``, and only the ``advance`` rule
moves time. The invariants are checked between every two steps.
"""

from __future__ import annotations

import queue
import threading
from collections import Counter
from collections.abc import Awaitable, Callable
from contextlib import suppress
from typing import Any, TypeVar

import trio
import trio.testing
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    invariant,
    multiple,
    precondition,
    rule,
)

from supervisor import (
    CapacityError,
    Event,
    EventKind,
    Lagged,
    SessionClosed,
    SessionContext,
    SessionNotFound,
    SessionState,
    Subscription,
    Supervisor,
    open_supervisor,
)

from ._helpers import drain

T = TypeVar("T")

MAX_SESSIONS = 5
PER_PRINCIPAL = 3
IDLE = 10.0
INIT = 20.0
SLACK = 0.01


class Crash(Exception):
    pass


async def actor(ctx: SessionContext[Any]) -> None:
    """Behaviour chosen per session through metadata: echo, slow, crash, quit, or lazy."""
    kind = ctx.metadata["kind"]
    if kind != "lazy":
        ctx.initialize()
    async for msg in ctx.mailbox:
        if kind == "crash":
            raise Crash
        if kind == "quit":
            return
        if kind == "slow":
            await trio.sleep(7)
        msg.reply(msg.payload)


class SupervisorMachine(RuleBasedStateMachine):
    sessions = Bundle("sessions")

    def __init__(self) -> None:
        super().__init__()
        self.clock = trio.testing.MockClock()  # rate 0, no autojump: time moves on `advance`
        self.created: list[str] = []
        self.call_errors: list[BaseException] = []
        handoff: queue.Queue[Any] = queue.Queue()
        self.thread = threading.Thread(target=self._loop, args=(handoff,), daemon=True)
        self.thread.start()
        self.sup: Supervisor
        self.events: Subscription
        self.token: trio.lowlevel.TrioToken
        self.nursery: trio.Nursery
        self.stop: trio.Event
        self.sup, self.events, self.token, self.nursery, self.stop = handoff.get(timeout=10)
        self.seen: list[Event] = []
        self.decided: dict[str, str] = {}  # close reasons observed while sessions were ending

    def _loop(self, handoff: queue.Queue[Any]) -> None:
        async def main() -> None:
            stop = trio.Event()
            async with (
                trio.open_nursery() as nursery,
                open_supervisor(
                    max_sessions=MAX_SESSIONS,
                    max_sessions_per_principal=PER_PRINCIPAL,
                    idle_timeout=IDLE,
                    init_timeout=INIT,
                    deadline_slack=SLACK,
                    shutdown_grace=1.0,
                    mailbox_size=4,
                ) as sup,
            ):
                events = sup.subscribe(buffer=100_000)
                handoff.put((sup, events, trio.lowlevel.current_trio_token(), nursery, stop))
                await stop.wait()
                await sup.shutdown()
                nursery.cancel_scope.cancel()

        trio.run(main, clock=self.clock)

    def run(self, fn: Callable[[], Awaitable[T]]) -> T:
        result: T = trio.from_thread.run(fn, trio_token=self.token)
        trio.from_thread.run(trio.testing.wait_all_tasks_blocked, trio_token=self.token)
        return result

    def run_sync(self, fn: Callable[[], T]) -> T:
        async def call() -> T:
            return fn()

        return self.run(call)

    # -- rules ---------------------------------------------------------------------------------

    @rule(
        target=sessions,
        kind=st.sampled_from(["echo", "slow", "crash", "quit", "lazy"]),
        principal=st.sampled_from([None, "alice", "bob"]),
    )
    def create(self, kind: str, principal: str | None) -> Any:
        def create() -> str | None:
            try:
                session = self.sup.create_session_nowait(
                    actor, principal=principal, metadata={"kind": kind}
                )
            except CapacityError:
                full = len(self.sup) >= MAX_SESSIONS
                by_principal = sum(1 for s in self.sup.sessions() if s.principal == principal)
                assert full or (principal is not None and by_principal >= PER_PRINCIPAL)
                return None
            return session.id

        session_id = self.run_sync(create)
        if session_id is None:
            return multiple()
        self.created.append(session_id)
        return session_id

    @rule(
        bad=st.sampled_from(
            [
                {"transport": "carrier-pigeon"},
                {"metadata": 5},
                {"principal": ["alice"]},
                {"principal": 7},
                {"principal": ""},
                {"actor": None},
            ]
        )
    )
    def create_invalid(self, bad: dict[str, Any]) -> None:
        def create() -> None:
            kwargs: dict[str, Any] = {"actor": actor, "metadata": {"kind": "echo"}, **bad}
            try:
                self.sup.create_session_nowait(kwargs.pop("actor"), **kwargs)
            except (TypeError, ValueError):
                return  # nothing reserved: the invariants below check that
            raise AssertionError(f"{bad} was accepted")  # pragma: no cover

        self.run_sync(create)

    @rule(session_id=sessions)
    def close_reason_seen(self, session_id: str) -> None:
        def look() -> None:
            with suppress(SessionNotFound):
                reason = self.sup.get_session(session_id).close_reason
                if reason is not None:
                    self.decided.setdefault(session_id, reason)
                    assert self.decided[session_id] == reason, "the reason changed"

        self.run_sync(look)

    @rule(session_id=sessions)
    def send(self, session_id: str) -> None:
        def send() -> None:
            with suppress(SessionNotFound, SessionClosed, trio.WouldBlock):
                self.sup.send_nowait(session_id, "msg")

        self.run_sync(send)

    @rule(session_id=sessions, timeout=st.sampled_from([None, 1.0, 30.0]))
    def call(self, session_id: str, timeout: float | None) -> None:
        async def call() -> None:
            try:
                assert await self.sup.call(session_id, "x", timeout=timeout) == "x"
            except (SessionNotFound, SessionClosed, trio.TooSlowError, Crash):
                pass
            except BaseException as exc:  # pragma: no cover - reported by an invariant
                self.call_errors.append(exc)

        self.run_sync(lambda: self.nursery.start_soon(call))

    @rule(session_id=sessions)
    def touch(self, session_id: str) -> None:
        def touch() -> None:
            with suppress(SessionNotFound):
                self.sup.touch(session_id)

        self.run_sync(touch)

    @rule(session_id=sessions)
    def close(self, session_id: str) -> None:
        self.run_sync(lambda: self.sup.close_session(session_id))

    @rule(seconds=st.sampled_from([0.5, 3.0, 7.0, 10.0, 25.0]))
    def advance(self, seconds: float) -> None:
        # Jump in small steps so deadlines fire close to when they are due.
        for _ in range(int(seconds / 0.5)):
            self.run_sync(lambda: self.clock.jump(0.5))

    @precondition(lambda self: len(self.created) > 0)
    @rule()
    def settle(self) -> None:
        self.run_sync(lambda: None)

    # -- invariants ----------------------------------------------------------------------------

    def _collect(self) -> None:
        for item in drain(self.events):
            assert not isinstance(item, Lagged), "the test's subscriber never lags"
            assert isinstance(item, Event)
            self.seen.append(item)

    @invariant()
    def consistent(self) -> None:
        def check() -> None:
            sup = self.sup
            sessions = sup.sessions()
            stats = sup.statistics()
            assert len(sessions) <= MAX_SESSIONS
            for principal, n in Counter(s.principal for s in sessions).items():
                assert principal is None or n <= PER_PRINCIPAL
            assert stats.total == len(sessions) == len(sup)
            assert sum(stats.by_state.values()) == stats.total
            assert sum(stats.by_transport.values()) == stats.total
            assert stats.created_total == len(self.created)
            assert stats.created_total == stats.total + stats.ended_total
            assert stats.by_state[SessionState.CLOSED] == stats.by_state[SessionState.ERROR] == 0
            assert stats.active == sum(1 for s in sessions if s.state is SessionState.READY)
            assert stats.authenticated == sum(1 for s in sessions if s.is_authenticated)
            assert all(s.in_flight >= 0 for s in sessions)
            # No slot or principal count outlives its session, whatever failed on the way.
            assert sup._used == stats.total + stats.waiting
            assert sum(sup._by_principal.values()) == sum(1 for s in sessions if s.principal)
            self._collect()
            terminal = Counter(e.session_id for e in self.seen if e.kind.is_terminal)
            assert all(n == 1 for n in terminal.values()), "more than one terminal event"
            for session in sessions:
                assert session.id not in terminal, "a live session has a terminal event"
            for event in self.seen:
                if event.kind is EventKind.EXPIRED and event.reason == "idle-timeout":
                    assert event.at - event.session.last_activity >= IDLE  # never early
                if event.kind.is_terminal and event.kind is not EventKind.FAILED:
                    decided = self.decided.get(event.session_id)
                    assert decided in (None, event.reason), "the end was decided twice"
            assert not self.call_errors, self.call_errors

        self.run_sync(check)

    def teardown(self) -> None:
        # Let time run on its own so the shutdown grace can pass, then stop the loop.
        def finish() -> None:
            self.clock.autojump_threshold = 0
            self.stop.set()

        trio.from_thread.run_sync(finish, trio_token=self.token)
        self.thread.join(timeout=30)
        assert not self.thread.is_alive()
        for item in drain(self.events):
            assert isinstance(item, Event)
            self.seen.append(item)
        by_session: dict[str, list[Event]] = {}
        for event in self.seen:
            by_session.setdefault(event.session_id, []).append(event)
        assert set(by_session) == set(self.created)
        for events in by_session.values():
            assert events[0].kind is EventKind.CREATED
            assert [e.kind.is_terminal for e in events].count(True) == 1
            assert events[-1].kind.is_terminal


SupervisorMachine.TestCase.settings = settings(
    max_examples=60,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestSupervisorMachine = SupervisorMachine.TestCase
