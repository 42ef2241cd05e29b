"""The contract every `supervisor.SessionStore` passes: `StoreContract`, reused per store.

This module holds no tests of its own (its name does not start with ``test_``); pytest collects
the contract through a subclass in a ``test_*.py`` module, one per store. A subclass must
provide exactly one thing, a fixture named ``store_factory`` that returns a `StoreFactory`:

    class TestSqliteStore(StoreContract):
        @pytest.fixture
        def store_factory(self, tmp_path: Path) -> StoreFactory:
            @contextlib.asynccontextmanager
            async def node() -> AsyncIterator[SessionStore]:
                store = SqliteStore(tmp_path / "sessions.db")
                async with store.open():
                    yield store
            return node

What a factory must do:

- Each call returns an async context manager; entering it starts a *new node* on the *same
  backing data* (the same file, the same Redis keyspace) and yields its store, opened, with a
  `node` token no earlier node had.
- Leaving it ends that node *as if it died*: nothing is passivated, its records keep it as their
  owner, and the next node the factory starts must see it as no longer alive (its lease has
  lapsed or been dropped), so that node may activate them. This is how the contract simulates
  "the process was killed and started again" (for SQLite: close and open the same file again).
- The contract never has two nodes open at once (SQLite allows one process per file), and uses
  no other fixture; every test starts on empty backing data. Times are wall-clock
  (``time.time()``) values the tests pass in; no test sleeps.

A store may add its own tests in its subclass (for instance `ActiveElsewhere`, which needs two
live nodes at once).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import pytest
import trio

from supervisor import SessionNotFound
from supervisor._durable import DurableRecord, SessionStore, Superseded

__all__ = ["StoreContract", "StoreFactory"]

#: Starts a new node on the same backing data; see the module docstring.
StoreFactory = Callable[[], AbstractAsyncContextManager[SessionStore]]

_counter = 0


def new_id() -> str:
    """A session id unique in the test run (the store never interprets it)."""
    global _counter
    _counter += 1
    return f"contract-session-{_counter:06d}-{time.monotonic_ns()}"


def make_record(
    store: SessionStore, session_id: str, *, epoch: int = 1, **fields: Any
) -> DurableRecord:
    """A record of ``store``'s node with every field set to a non-default value."""
    values: dict[str, Any] = {
        "actor": "counter",
        "state": {"count": 3},
        "transport": "streamable-http",
        "principal": "alice@example.org",
        "metadata": {"tenant": "acme", "tags": ["a", "b"], "weight": 1.5},
        "handshake": {
            "client_info": {"name": "client ✓", "version": "1.0"},
            "protocol_version": "2025-06-18",
            "capabilities": {"roots": {"listChanged": True}},
        },
        "created": 1_700_000_000.25,
    }
    values.update(fields)
    return DurableRecord(id=session_id, epoch=epoch, owner=store.node, **values)


def same_json(a: Any, b: Any) -> bool:
    """``a`` and ``b`` are the same JSON value: equal and of the same types all the way down
    (``1`` is not ``1.0`` nor ``True``; a tuple reads back as a list)."""
    if isinstance(a, dict):
        return (
            isinstance(b, dict)
            and a.keys() == b.keys()
            and all(same_json(a[key], b[key]) for key in a)
        )
    if isinstance(a, list | tuple):
        return (
            isinstance(b, list)
            and len(a) == len(b)
            and all(same_json(x, y) for x, y in zip(a, b, strict=True))
        )
    if isinstance(a, float) and math.copysign(1.0, a) != math.copysign(1.0, b):
        return False
    return type(a) is type(b) and bool(a == b)


def assert_fields_kept(got: DurableRecord, saved: DurableRecord) -> None:
    """Every field a store must keep as written (all but epoch, owner and expires)."""
    assert got.id == saved.id
    assert got.actor == saved.actor
    assert same_json(got.state, saved.state), (got.state, saved.state)
    assert got.transport == saved.transport
    assert got.principal == saved.principal
    assert same_json(dict(got.metadata), dict(saved.metadata)), (got.metadata, saved.metadata)
    if saved.handshake is None:
        assert got.handshake is None
    else:
        assert got.handshake is not None
        assert same_json(dict(got.handshake), dict(saved.handshake))
    assert got.created == saved.created


class StoreContract:
    """What the core relies on from any `SessionStore` (see the module docstring)."""

    async def test_first_save_survives_a_restart(self, store_factory: StoreFactory) -> None:
        sid = new_id()
        async with store_factory() as first:
            saved = make_record(first, sid)
            await first.save(saved)
            first_node = first.node
        async with store_factory() as second:
            second_node = second.node
            got = await second.activate(sid, time.time())
        assert second_node != first_node
        assert got.epoch == 2
        assert got.owner == second_node
        assert got.expires is None
        assert_fields_kept(got, saved)

    async def test_a_record_without_handshake_or_state_reads_back(
        self, store_factory: StoreFactory
    ) -> None:
        sid = new_id()
        async with store_factory() as first:
            saved = make_record(first, sid, state=None, handshake=None, principal=None, metadata={})
            await first.save(saved)
        async with store_factory() as second:
            got = await second.activate(sid, time.time())
        assert_fields_kept(got, saved)

    async def test_save_with_another_epoch_is_superseded(self, store_factory: StoreFactory) -> None:
        sid = new_id()
        async with store_factory() as store:
            kept = make_record(store, sid, state={"count": 1})
            await store.save(kept)
            for epoch in (0, 2, 5):
                with pytest.raises(Superseded):
                    await store.save(make_record(store, sid, epoch=epoch, state={"count": 99}))
            got = await store.activate(sid, time.time())
        assert got.epoch == 2
        assert got.state == {"count": 1}

    async def test_save_of_a_dead_nodes_activation_is_superseded(
        self, store_factory: StoreFactory
    ) -> None:
        # After a restart the record is still the dead node's: the new node must activate it
        # before it may write, even at the record's own epoch.
        sid = new_id()
        async with store_factory() as first:
            await first.save(make_record(first, sid, state={"count": 1}))
        async with store_factory() as second:
            with pytest.raises(Superseded):
                await second.save(make_record(second, sid, state={"count": 99}))
            with pytest.raises(Superseded):
                await second.passivate(make_record(second, sid), time.time() + 3600)
            got = await second.activate(sid, time.time())
        assert got.state == {"count": 1}

    async def test_save_after_delete_is_superseded(self, store_factory: StoreFactory) -> None:
        sid = new_id()
        async with store_factory() as first:
            await first.save(make_record(first, sid))
        async with store_factory() as second:
            active = await second.activate(sid, time.time())
            assert await second.delete(sid, active.epoch) is True
            with pytest.raises(Superseded):
                await second.save(make_record(second, sid, epoch=active.epoch))
            with pytest.raises(Superseded):
                await second.passivate(make_record(second, sid, epoch=active.epoch), time.time())
            with pytest.raises(SessionNotFound):
                await second.activate(sid, time.time())

    async def test_delete_forgets_the_record(self, store_factory: StoreFactory) -> None:
        sid = new_id()
        async with store_factory() as store:
            await store.save(make_record(store, sid))
            assert await store.delete(sid, 1) is True
            assert await store.delete(sid, 1) is False  # gone already
            with pytest.raises(SessionNotFound):
                await store.activate(sid, time.time())

    async def test_delete_of_a_passivated_record(self, store_factory: StoreFactory) -> None:
        # A passivated session whose retention ended: the record has no owner.
        sid = new_id()
        async with store_factory() as first:
            await first.save(make_record(first, sid))
            await first.passivate(make_record(first, sid), time.time() + 3600)
        async with store_factory() as second:
            assert await second.delete(sid, 2) is False  # another epoch
            assert await second.delete(sid, 1) is True  # any node may: it has no owner
            with pytest.raises(SessionNotFound):
                await second.activate(sid, time.time())

    async def test_first_save_above_epoch_one_is_superseded(
        self, store_factory: StoreFactory
    ) -> None:
        sid = new_id()
        async with store_factory() as store:
            with pytest.raises(Superseded):
                await store.save(make_record(store, sid, epoch=2))
            with pytest.raises(Superseded):
                await store.passivate(make_record(store, sid, epoch=3), time.time() + 3600)
            with pytest.raises(SessionNotFound):
                await store.activate(sid, time.time())

    async def test_passivate_then_activate_on_the_same_node(
        self, store_factory: StoreFactory
    ) -> None:
        sid = new_id()
        now = time.time()
        async with store_factory() as store:
            await store.save(make_record(store, sid, state={"count": 1}))
            parked = make_record(store, sid, state={"count": 2})
            await store.passivate(parked, now + 3600)
            # The passivated activation has ended: it may not write again.
            with pytest.raises(Superseded):
                await store.save(make_record(store, sid, state={"count": 99}))
            got = await store.activate(sid, now)
            assert got.epoch == 2
            assert got.owner == store.node
            assert got.expires == pytest.approx(now + 3600)  # until the next save moves it
            assert_fields_kept(got, parked)
            await store.save(make_record(store, sid, epoch=2, state={"count": 3}))
        async with store_factory() as second:
            got = await second.activate(sid, time.time())
        assert got.epoch == 3
        assert got.state == {"count": 3}

    async def test_a_session_passivated_before_its_first_save(
        self, store_factory: StoreFactory
    ) -> None:
        sid = new_id()
        async with store_factory() as store:
            parked = make_record(store, sid, state=None)
            await store.passivate(parked, time.time() + 3600)
            got = await store.activate(sid, time.time())
        assert got.epoch == 2
        assert_fields_kept(got, parked)

    async def test_expiry_is_judged_by_the_callers_clock(self, store_factory: StoreFactory) -> None:
        sid = new_id()
        expires = time.time() + 3600
        async with store_factory() as store:
            await store.passivate(make_record(store, sid), expires)
            got = await store.activate(sid, expires - 1)
        assert got.epoch == 2

    async def test_activate_after_expiry_is_not_found_and_deletes(
        self, store_factory: StoreFactory
    ) -> None:
        sid = new_id()
        now = time.time()
        async with store_factory() as store:
            await store.passivate(make_record(store, sid), now - 1)
            with pytest.raises(SessionNotFound):
                await store.activate(sid, now)
            assert await store.purge(now + 10**6) == 0  # the record is gone, not just hidden
            with pytest.raises(SessionNotFound):
                await store.activate(sid, now - 3600)  # even before its expiry: gone for good
            with pytest.raises(Superseded):
                await store.save(make_record(store, sid, epoch=2))

    async def test_purge_deletes_expired_passivated_records_only(
        self, store_factory: StoreFactory
    ) -> None:
        now = time.time()
        old, older, later, active = new_id(), new_id(), new_id(), new_id()
        async with store_factory() as store:
            await store.passivate(make_record(store, old), now - 5)
            await store.passivate(make_record(store, older), now - 10)
            await store.passivate(make_record(store, later), now + 100)
            await store.save(make_record(store, active))
            assert await store.purge(now) == 2
            assert await store.purge(now) == 0
            for gone in (old, older):
                with pytest.raises(SessionNotFound):
                    await store.activate(gone, now - 3600)
            assert await store.purge(now + 1000) == 1
            with pytest.raises(SessionNotFound):
                await store.activate(later, now)
            assert (await store.activate(active, now + 10**6)).epoch == 2

    async def test_purge_of_an_empty_store(self, store_factory: StoreFactory) -> None:
        async with store_factory() as store:
            assert await store.purge(time.time()) == 0

    async def test_delete_with_a_stale_epoch_does_nothing(
        self, store_factory: StoreFactory
    ) -> None:
        sid = new_id()
        async with store_factory() as store:
            await store.save(make_record(store, sid))
            current = await store.activate(sid, time.time())
            assert await store.delete(sid, 1) is False
            assert await store.delete(sid, current.epoch + 1) is False
            await store.save(make_record(store, sid, epoch=current.epoch, state={"count": 7}))
        async with store_factory() as second:
            # Not this node's activation: the dead node's record stays.
            assert await second.delete(sid, current.epoch) is False
            got = await second.activate(sid, time.time())
        assert got.epoch == current.epoch + 1
        assert got.state == {"count": 7}

    async def test_delete_of_an_unknown_id_does_nothing(self, store_factory: StoreFactory) -> None:
        async with store_factory() as store:
            assert await store.delete(new_id(), 1) is False

    async def test_activate_of_an_unknown_id_is_not_found(
        self, store_factory: StoreFactory
    ) -> None:
        async with store_factory() as store:
            with pytest.raises(SessionNotFound):
                await store.activate(new_id(), time.time())
            with pytest.raises(KeyError):  # SessionNotFound is a KeyError too
                await store.activate(new_id(), time.time())

    async def test_only_the_newest_activation_may_write(self, store_factory: StoreFactory) -> None:
        sid = new_id()
        async with store_factory() as first:
            await first.save(make_record(first, sid, state={"count": 1}))
        async with store_factory() as store:
            older = await store.activate(sid, time.time())
            newer = await store.activate(sid, time.time())
            assert newer.epoch == older.epoch + 1
            stale = make_record(store, sid, epoch=older.epoch, state={"count": 99})
            with pytest.raises(Superseded):
                await store.save(stale)
            with pytest.raises(Superseded):
                await store.passivate(stale, time.time() + 3600)
            assert await store.delete(sid, older.epoch) is False
            await store.save(make_record(store, sid, epoch=newer.epoch, state={"count": 2}))
            with pytest.raises(Superseded):
                await store.save(stale)
        async with store_factory() as last:
            got = await last.activate(sid, time.time())
        assert got.epoch == newer.epoch + 1
        assert got.state == {"count": 2}

    async def test_concurrent_activations_each_get_their_own_epoch(
        self, store_factory: StoreFactory
    ) -> None:
        sid = new_id()
        tasks = 16
        async with store_factory() as store:
            await store.save(make_record(store, sid, state={"by": 0}))
            got: list[DurableRecord] = []

            async def activate() -> None:
                got.append(await store.activate(sid, time.time()))

            async with trio.open_nursery() as nursery:
                for _ in range(tasks):
                    nursery.start_soon(activate)
            epochs = sorted(record.epoch for record in got)
            assert epochs == list(range(2, 2 + tasks))  # one epoch per activation, no gaps
            assert all(record.owner == store.node for record in got)

            accepted: list[int] = []

            async def save(epoch: int) -> None:
                try:
                    await store.save(make_record(store, sid, epoch=epoch, state={"by": epoch}))
                except Superseded:
                    return
                accepted.append(epoch)

            async with trio.open_nursery() as nursery:
                for epoch in epochs:
                    nursery.start_soon(save, epoch)
            assert accepted == [epochs[-1]]
        async with store_factory() as second:
            final = await second.activate(sid, time.time())
        assert final.epoch == epochs[-1] + 1
        assert final.state == {"by": epochs[-1]}

    async def test_state_that_is_not_json_is_a_type_error(
        self, store_factory: StoreFactory
    ) -> None:
        sid = new_id()
        async with store_factory() as store:
            await store.save(make_record(store, sid, state={"count": 1}))
            for bad in (object(), {"items": {1, 2}}, [b"bytes"]):
                with pytest.raises(TypeError):
                    await store.save(make_record(store, sid, state=bad))
                with pytest.raises(TypeError):
                    await store.passivate(make_record(store, sid, state=bad), time.time() + 60)
            fresh = new_id()
            with pytest.raises(TypeError):
                await store.save(make_record(store, fresh, state=object()))
            with pytest.raises(SessionNotFound):
                await store.activate(fresh, time.time())
        async with store_factory() as second:
            got = await second.activate(sid, time.time())
        assert got.epoch == 2  # the refused writes touched nothing: not even a passivation
        assert got.state == {"count": 1}

    async def test_state_round_trips_as_json(self, store_factory: StoreFactory) -> None:
        states: list[Any] = [
            None,
            0,
            -(2**70),
            2**100,
            0.1,
            -0.0,
            1e308,
            5e-324,
            True,
            False,
            "",
            'héllo ✓ 日本語 😀 \u0000 \t "quoted" \\ </script>',
            [],
            {},
            [1, "two", 3.0, None, [True, {"x": []}]],
            {
                "nested": {"deeper": {"deepest": [1, 2, {"ünïcode": "☃"}]}},
                "big": 123456789012345678901234567890,
                "floats": [1.5, -2.25, 3.141592653589793],
                "empty": {"list": [], "dict": {}, "none": None},
                "😀": "emoji key",
            },
        ]
        ids = [new_id() for _ in states]
        async with store_factory() as first:
            for sid, state in zip(ids, states, strict=True):
                await first.save(make_record(first, sid, state=state))
        async with store_factory() as second:
            for sid, state in zip(ids, states, strict=True):
                got = await second.activate(sid, time.time())
                assert same_json(got.state, state), (state, got.state)

    async def test_a_record_a_dead_node_left_goes_at_its_expiry(
        self, store_factory: StoreFactory
    ) -> None:
        # A save carries the record's expiry: should its node die without passivating it,
        # the record goes then, by activation or by purge, instead of staying forever.
        now = time.time()
        stale, purged, fresh = new_id(), new_id(), new_id()
        async with store_factory() as dead:
            for sid in (stale, purged):
                await dead.save(make_record(dead, sid, expires=now - 1))
            await dead.save(make_record(dead, fresh, expires=now + 3600))
        async with store_factory() as store:
            with pytest.raises(SessionNotFound):
                await store.activate(stale, now)
            assert await store.purge(now) == 1  # purged; stale is gone already
            with pytest.raises(SessionNotFound):
                await store.activate(purged, now - 3600)
            got = await store.activate(fresh, now)
            assert got.epoch == 2 and got.expires == pytest.approx(now + 3600)

    async def test_a_live_owners_record_outlives_its_expiry(
        self, store_factory: StoreFactory
    ) -> None:
        now = time.time()
        sid = new_id()
        async with store_factory() as store:
            await store.save(make_record(store, sid, expires=now - 1))
            assert await store.purge(now) == 0  # its owner (this node) is alive
            await store.save(make_record(store, sid, state={"count": 4}, expires=now + 60))
            got = await store.activate(sid, now + 10)
            assert got.epoch == 2 and got.state == {"count": 4}
            assert got.expires == pytest.approx(now + 60)
