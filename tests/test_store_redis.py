"""RedisSessionStore (`Cluster.store`): the store contract, plus what only the cluster's store does.

The contract (tests/_store_contract.py) runs twice: on one redis-server and on a 3-master Redis
Cluster (both started once for the module, each test on its own key prefix, so on empty data).
A contract "node" is a supervisor joined to the cluster with the store; leaving it drops the
node's lease, as a dead node's lapses. The Redis-specific tests need two live nodes at once:
a live owner refuses activation elsewhere (`ActiveElsewhere`); an owner whose lease lapsed does
not, and its saves are refused after; a node that fenced itself writes as a new incarnation.
"""

from __future__ import annotations

import contextlib
import itertools
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest
import trio

from supervisor import SessionNotFound, open_supervisor
from supervisor._durable import ActiveElsewhere, SessionStore, StoreError, Superseded
from supervisor.cluster import Cluster, RedisSessionStore, RedisStore
from supervisor.cluster._durable import MISSING

from ._redis import RedisCluster, RedisServer, command, shared_redis_fixture  # noqa: F401
from ._store_contract import StoreContract, StoreFactory, make_record, new_id

LEASE = 0.9
CHECK = 0.3
TIMEOUT = 0.25

_prefixes = itertools.count()


def fresh_prefix() -> str:
    """A key prefix no other test used: every test starts on empty data."""
    return f"tss{next(_prefixes)}t{time.monotonic_ns()}"


@pytest.fixture(scope="module")
def shared_redis_cluster() -> Iterator[RedisCluster]:
    with RedisCluster(3) as cluster:
        yield cluster


def durable(cluster: Cluster) -> SessionStore:
    """The cluster's store as the protocol it implements (checked by mypy here)."""
    return cluster.store


@contextlib.asynccontextmanager
async def joined(cluster: Cluster) -> AsyncIterator[Cluster]:
    """``cluster`` attached to a supervisor, its store open. The supervisor does not use the
    store itself (it would purge now and then): the tests drive the store alone."""
    async with open_supervisor(cluster=cluster), cluster.store.open():
        yield cluster


def factory(make: Callable[[str], Cluster]) -> StoreFactory:
    prefix = fresh_prefix()

    @contextlib.asynccontextmanager
    async def node() -> AsyncIterator[SessionStore]:
        async with joined(make(prefix)) as cluster:
            yield durable(cluster)

    return node


def on_server(server: RedisServer, **options: Any) -> Callable[[str], Cluster]:
    def make(prefix: str) -> Cluster:
        options.setdefault("lease", LEASE)
        options.setdefault("check_every", CHECK)
        options.setdefault("request_timeout", TIMEOUT)
        return Cluster(server.url, prefix=prefix, **options)

    return make


class TestRedisSessionStoreContract(StoreContract):
    @pytest.fixture
    def store_factory(self, shared_redis: RedisServer) -> StoreFactory:
        return factory(on_server(shared_redis))


class TestRedisSessionStoreContractOnRedisCluster(StoreContract):
    @pytest.fixture
    def store_factory(self, shared_redis_cluster: RedisCluster) -> StoreFactory:
        nodes = [(n["host"], n["port"]) for n in shared_redis_cluster.startup_nodes]

        def make(prefix: str) -> Cluster:
            return Cluster(
                "redis://",
                cluster_nodes=nodes,
                prefix=prefix,
                lease=1.5,
                check_every=CHECK,
                request_timeout=0.4,
            )

        return factory(make)


# -- what only the cluster's store does --------------------------------------------------------


async def eventually(check: Callable[[], Awaitable[bool]], within: float, what: str) -> None:
    start = trio.current_time()
    while not await check():
        if trio.current_time() - start > within:
            pytest.fail(f"not within {within} s: {what}")
        await trio.sleep(0.02)


async def test_a_live_owner_refuses_activation_elsewhere(shared_redis: RedisServer) -> None:
    make = on_server(shared_redis)
    prefix = fresh_prefix()
    sid = new_id()
    async with joined(make(prefix)) as a, joined(make(prefix)) as b:
        store_a, store_b = a.store, b.store
        assert store_a.node == a.node_id and store_b.node == b.node_id != a.node_id
        await store_a.save(make_record(store_a, sid, state={"count": 1}))
        assert await store_b.owner(sid, time.time()) == a.node_id
        with pytest.raises(ActiveElsewhere) as refused:
            await store_b.activate(sid, time.time())
        assert refused.value.owner == a.node_id
        # Refused: nothing changed, the owner keeps writing at its epoch.
        await store_a.save(make_record(store_a, sid, state={"count": 2}))
        await store_a.passivate(make_record(store_a, sid, state={"count": 3}), time.time() + 60)
        assert await store_b.owner(sid, time.time()) is None  # passivated: free to activate
        got = await store_b.activate(sid, time.time())
        assert (got.epoch, got.owner, got.state) == (2, b.node_id, {"count": 3})
        assert await store_a.owner(sid, time.time()) == b.node_id
        with pytest.raises(ActiveElsewhere):
            await store_a.activate(sid, time.time())


async def test_an_owner_whose_lease_lapsed_loses_the_session(shared_redis: RedisServer) -> None:
    make = on_server(shared_redis)
    prefix = fresh_prefix()
    sid = new_id()
    async with joined(make(prefix)) as a, joined(make(prefix)) as b:
        store_a, store_b = a.store, b.store
        await store_a.save(make_record(store_a, sid, state={"count": 1}))
        # A's lease lapses as the others see it (A has not noticed yet: it still vouches).
        command(shared_redis.port, "DEL", f"{{{prefix}}}:lease:{a.node_id}")
        assert await store_b.owner(sid, time.time()) is None
        got = await store_b.activate(sid, time.time())
        assert (got.epoch, got.owner, got.state) == (2, b.node_id, {"count": 1})
        with pytest.raises(Superseded):
            await store_a.save(make_record(store_a, sid, state={"count": 99}))
        with pytest.raises(Superseded):
            await store_a.passivate(make_record(store_a, sid), time.time() + 60)
        assert await store_a.delete(sid, 1) is False
        await store_b.save(make_record(store_b, sid, epoch=2, state={"count": 2}))
        assert await store_b.owner(sid, time.time()) == b.node_id


class _NoRenewals(RedisStore):
    """A RedisStore whose lease renewals fail while ``down`` (the node cannot reach Redis to
    renew: it fences itself, while its other commands still get through)."""

    down = False

    async def renew(self, node: str, lease_ms: int, epoch: str, info: str = "") -> str:
        if self.down:
            raise OSError("partitioned")
        return await super().renew(node, lease_ms, epoch, info)


async def test_a_self_fenced_nodes_saves_are_refused(shared_redis: RedisServer) -> None:
    prefix = fresh_prefix()
    flaky = _NoRenewals(shared_redis.url, prefix=prefix, timeout=TIMEOUT)
    a = Cluster(store=flaky, prefix=prefix, lease=LEASE, check_every=CHECK, request_timeout=TIMEOUT)
    sid, other = new_id(), new_id()
    async with joined(a), joined(on_server(shared_redis)(prefix)) as b:
        store_a, store_b = a.store, b.store
        old = store_a.node
        stale = make_record(store_a, sid, state={"count": 1})
        await store_a.save(stale)
        await store_a.save(make_record(store_a, other, state={"other": 1}))
        flaky.down = True

        async def fenced() -> bool:
            return a.state == "fenced" or a.node_id != old

        await eventually(fenced, LEASE + 1, "node A fenced itself")
        # Fenced: it vouches for nothing (StoreError) until it rejoined, then it is a new
        # incarnation, which does not hold the old one's activation (Superseded).
        with pytest.raises((StoreError, Superseded)):
            await store_a.save(stale)

        async def lapsed() -> bool:
            return await store_b.owner(sid, time.time()) is None

        await eventually(lapsed, LEASE + 1, "A's old lease gone")
        got = await store_b.activate(sid, time.time())
        assert got.epoch == 2
        flaky.down = False

        async def rejoined() -> bool:
            return a.state == "ready"

        await eventually(rejoined, 3, "node A rejoined")
        assert store_a.node == a.node_id != old
        with pytest.raises(Superseded):  # another node activated it
            await store_a.save(stale)
        with pytest.raises(Superseded):  # nobody did, but the writer's incarnation is over
            await store_a.save(make_record(store_a, other, state={"other": 2}))
        assert (await store_a.activate(other, time.time())).state == {"other": 1}


async def test_a_deleted_record_refuses_a_stale_first_save(shared_redis: RedisServer) -> None:
    async with joined(on_server(shared_redis)(fresh_prefix())) as cluster:
        store = cluster.store
        sid = new_id()
        await store.save(make_record(store, sid))
        assert await store.delete(sid, 1) is True
        with pytest.raises(Superseded):  # the tombstone: epoch 1 cannot bring it back
            await store.save(make_record(store, sid))
        assert await store.owner(sid, time.time()) is MISSING
        with pytest.raises(SessionNotFound):
            await store.activate(sid, time.time())


async def test_purge_goes_through_many_expired_records(shared_redis: RedisServer) -> None:
    async with joined(on_server(shared_redis)(fresh_prefix())) as cluster:
        store = cluster.store
        now = time.time()
        ids = [new_id() for _ in range(1100)]
        for sid in ids:
            await store.passivate(make_record(store, sid), now - 1)
        kept = new_id()
        await store.passivate(make_record(store, kept), now + 60)
        assert await store.purge(now) == len(ids)
        assert await store.purge(now) == 0
        assert (await store.activate(kept, now)).epoch == 2


async def test_open_needs_the_cluster_attached(shared_redis: RedisServer) -> None:
    cluster = on_server(shared_redis)(fresh_prefix())
    store = cluster.store
    assert cluster.store is store  # one per Cluster
    assert isinstance(store, RedisSessionStore)
    with pytest.raises(StoreError, match="not attached"):
        async with store.open():
            pass  # pragma: no cover
    with pytest.raises(StoreError):
        await store.activate(new_id(), time.time())


async def test_redis_gone_is_a_store_error() -> None:
    server = RedisServer()
    server.start()
    try:
        async with joined(on_server(server)(fresh_prefix())) as cluster:
            store = cluster.store
            sid = new_id()
            await store.save(make_record(store, sid))
            server.kill9()
            with pytest.raises(StoreError):
                await store.save(make_record(store, sid, state={"count": 4}))
            with pytest.raises(StoreError):
                await store.activate(sid, time.time())
    finally:
        server.close()
