"""The core's side of cluster mode, with a fake hook (no Redis): what the supervisor asks of a
cluster, when, and that a refused or cancelled cluster admit leaves nothing behind."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing

from supervisor import (
    CapacityError,
    EventKind,
    Session,
    SessionState,
    Supervisor,
    SupervisorClosed,
    open_supervisor,
)

from ._helpers import echo_actor


class FakeHook:
    """Counts what the core asks; ``room`` cluster slots, ``blocked`` makes admits wait."""

    def __init__(self, room: int = 10, principal_room: int = 10) -> None:
        self.room = room
        self.principal_room = principal_room
        self.used = 0
        self.bound: dict[str, int] = {}
        self.events: list[tuple[EventKind, str]] = []
        self.blocked = trio.Event()
        self.blocked.set()
        self.attached = False
        self.left = False

    @asynccontextmanager
    async def attach(self, supervisor: Supervisor) -> AsyncIterator[None]:
        self.attached = True
        try:
            yield
        finally:
            self.left = True

    def new_session_id(self) -> str:
        return f"{len(self.events):04d}-random.node1"

    def admit_nowait(self, principal: str | None) -> str | None:
        if self.used >= self.room:
            return "cluster full"
        self.used += 1
        return None

    async def admit(self, principal: str | None, *, wait: bool) -> None:
        await self.blocked.wait()
        if self.used >= self.room:
            raise CapacityError("cluster full")
        self.used += 1

    def bind_nowait(self, principal: str) -> str | None:
        if self.bound.get(principal, 0) >= self.principal_room:
            return "principal full"
        self.bound[principal] = self.bound.get(principal, 0) + 1
        return None

    async def bind(self, principal: str) -> None:
        await trio.lowlevel.checkpoint()
        if self.bind_nowait(principal) is not None:
            raise CapacityError("principal full cluster-wide")

    def unbind(self, principal: str) -> None:
        self.bound[principal] -= 1

    def release(self, principal: str | None) -> None:
        self.used -= 1
        if principal is not None and principal in self.bound:
            self.bound[principal] -= 1

    def event(
        self,
        kind: EventKind,
        session: Session,
        reason: str | None,
        old_state: SessionState | None,
        new_state: SessionState | None,
    ) -> None:
        self.events.append((kind, session.id))


async def test_ids_come_from_the_cluster_and_it_sees_every_event_in_order() -> None:
    hook = FakeHook()
    async with open_supervisor(cluster=hook) as sup:
        assert hook.attached and not hook.left
        assert sup.cluster is hook
        session = await sup.create_session(echo_actor, wait=False)
        assert session.id.endswith(".node1")
        sup.close_session(session.id)
    assert hook.left
    kinds = [kind for kind, sid in hook.events if sid == session.id]
    assert kinds[0] is EventKind.CREATED
    assert kinds[-1] is EventKind.CLOSED
    assert hook.used == 0  # the slot went back


async def test_the_cluster_refusal_is_a_capacity_error_and_leaves_no_local_slot() -> None:
    hook = FakeHook(room=1)
    async with open_supervisor(cluster=hook, max_sessions=5) as sup:
        await sup.create_session(echo_actor, wait=False)
        with pytest.raises(CapacityError, match="cluster full"):
            await sup.create_session(echo_actor, wait=False)
        with pytest.raises(CapacityError, match="cluster full"):
            sup.create_session_nowait(echo_actor)
        stats = sup.statistics()
        assert stats.total == 1
        assert stats.rejected_total == 2
        hook.room = 2
        sup.create_session_nowait(echo_actor)  # the local slot was not kept by the refusals
        assert len(sup) == 2


async def test_wait_false_refuses_when_full_without_a_cluster() -> None:
    async with open_supervisor(max_sessions=1) as sup:
        await sup.create_session(echo_actor, wait=False)
        with pytest.raises(CapacityError, match="maximum sessions"):
            await sup.create_session(echo_actor, wait=False)


async def test_a_cancelled_cluster_admit_gives_the_local_slot_back(
    autojump_clock: trio.testing.MockClock,
) -> None:
    hook = FakeHook()
    hook.blocked = trio.Event()
    async with open_supervisor(cluster=hook, max_sessions=1) as sup:
        with trio.move_on_after(1):
            await sup.create_session(echo_actor)
        assert len(sup) == 0
        hook.blocked.set()
        await sup.create_session(echo_actor, wait=False)  # the one local slot is free
        assert hook.used == 1


async def test_shutdown_during_a_cluster_admit_gives_both_slots_back(
    autojump_clock: trio.testing.MockClock,
) -> None:
    hook = FakeHook()
    hook.blocked = trio.Event()
    outcome: list[str] = []
    async with open_supervisor(cluster=hook, max_sessions=1) as sup:

        async def create() -> None:
            try:
                await sup.create_session(echo_actor)
            except SupervisorClosed:
                outcome.append("closed")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(create)
            await trio.sleep(1)
            nursery.start_soon(sup.shutdown)
            await trio.sleep(1)
            hook.blocked.set()
    assert outcome == ["closed"]
    assert hook.used == 0


async def test_bind_principal_takes_the_clusters_principal_slot() -> None:
    hook = FakeHook(principal_room=1)
    async with open_supervisor(cluster=hook, max_sessions_per_principal=5) as sup:
        a = await sup.create_session(echo_actor, wait=False)
        b = await sup.create_session(echo_actor, wait=False)
        await sup.bind_principal(a.id, "alice")
        assert sup.get_session(a.id).principal == "alice"
        with pytest.raises(CapacityError, match="principal full"):
            await sup.bind_principal(b.id, "alice")
        with pytest.raises(CapacityError, match="principal full"):
            sup.authenticate_session(b.id, "alice")
        assert sup.get_session(b.id).principal is None
        # Binding the same principal again takes nothing more.
        await sup.bind_principal(a.id, "alice")
        assert hook.bound == {"alice": 1}


async def test_bind_principal_without_a_cluster_is_authenticate_session() -> None:
    async with open_supervisor(max_sessions_per_principal=1) as sup:
        a = sup.create_session_nowait(echo_actor)
        b = sup.create_session_nowait(echo_actor)
        await sup.bind_principal(a.id, "alice")
        with pytest.raises(CapacityError, match="per principal"):
            await sup.bind_principal(b.id, "alice")
