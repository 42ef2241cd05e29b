"""Cluster mode in one process: several nodes (supervisors) on one real redis-server.

Each test starts its own server on a free port (tests/_redis.py) and stops it by PID. Leases are
short (under a second) so failures show within the test's bounded waits; the waits poll real
time because the store does (a MockClock cannot move Redis's clock).
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import pytest
import trio

from supervisor import CapacityError, Event, EventKind, SessionContext, Supervisor, open_supervisor
from supervisor.cluster import Cluster, ClusterEvent, ClusterUnavailable, RedisStore

from ._helpers import echo_actor
from ._redis import RedisCluster, RedisServer, redis_cluster_fixture, redis_server_fixture  # noqa: F401

LEASE = 0.9
CHECK = 0.3
TIMEOUT = 0.25


def node(url: str, **options: Any) -> Cluster:
    options.setdefault("lease", LEASE)
    options.setdefault("check_every", CHECK)
    options.setdefault("request_timeout", TIMEOUT)
    return Cluster(url, **options)


@asynccontextmanager
async def nodes(url: str, count: int, **config: Any) -> AsyncIterator[list[Supervisor]]:
    cluster_options = config.pop("cluster_options", {})
    async with AsyncExitStack() as stack:
        sups = [
            await stack.enter_async_context(
                open_supervisor(cluster=node(url, **cluster_options), **config)
            )
            for _ in range(count)
        ]
        yield sups


def cluster_of(sup: Supervisor) -> Cluster:
    cluster = sup.cluster
    assert isinstance(cluster, Cluster)
    return cluster


async def eventually(check: Callable[[], Awaitable[bool]], within: float, what: str) -> float:
    """Poll ``check`` until true; fail after ``within`` seconds. Returns the time it took."""
    start = trio.current_time()
    while not await check():
        if trio.current_time() - start > within:
            pytest.fail(f"not within {within} s: {what}")
        await trio.sleep(0.02)
    return trio.current_time() - start


async def test_ids_name_their_owner_and_every_node_sees_the_others(
    redis_server: RedisServer,
) -> None:
    async with nodes(redis_server.url, 2, max_sessions=10) as (a, b):
        session = await a.create_session(echo_actor, wait=False)
        owner = cluster_of(a).owner_of(session.id)
        assert owner == cluster_of(a).node_id != cluster_of(b).node_id
        random_part = session.id.rpartition(".")[0]
        assert len(random_part) == 32  # 192 bits, as without a cluster
        assert cluster_of(b).owner_of(session.id) == owner

        async def both_seen() -> bool:
            view = await cluster_of(b).view()
            return {n.id for n in view.nodes} == {cluster_of(a).node_id, cluster_of(b).node_id}

        await eventually(both_seen, 3, "both nodes in the view")
        assert await a.call(session.id, "hi") == "hi"


async def test_the_total_cap_holds_across_nodes(redis_server: RedisServer) -> None:
    async with nodes(redis_server.url, 3, max_sessions=5) as sups:
        made = [await sups[i % 3].create_session(echo_actor, wait=False) for i in range(5)]
        for sup in sups:
            with pytest.raises(CapacityError, match="cluster-wide"):
                await sup.create_session(echo_actor, wait=False)
            with pytest.raises(CapacityError):
                sup.create_session_nowait(echo_actor)
        view = await cluster_of(sups[0]).view()
        assert view.held <= 5
        # A slot freed on node 0 can be taken on node 2 (the spare goes back to the store).
        sups[0].close_session(made[0].id)

        async def admitted_on_2() -> bool:
            try:
                await sups[2].create_session(echo_actor, wait=False)
            except CapacityError:
                return False
            return True

        await eventually(admitted_on_2, 3, "a freed slot admitted on another node")


async def test_a_waiting_create_gets_a_slot_freed_on_another_node(
    redis_server: RedisServer,
) -> None:
    async with nodes(redis_server.url, 2, max_sessions=2) as (a, b):
        first = await a.create_session(echo_actor, wait=False)
        await a.create_session(echo_actor, wait=False)
        got: list[str] = []
        admitted = trio.Event()

        async def wait_on_b() -> None:
            session = await b.create_session(echo_actor)
            got.append(session.id)
            admitted.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(wait_on_b)
            await trio.sleep(0.3)
            assert got == []
            a.close_session(first.id)
            with trio.fail_after(3):
                await admitted.wait()
        assert cluster_of(b).owner_of(got[0]) == cluster_of(b).node_id


async def test_nowait_spends_the_nodes_spare_lease(redis_server: RedisServer) -> None:
    async with nodes(redis_server.url, 1, max_sessions=1000) as (a,):
        with pytest.raises(CapacityError, match="no spare cluster slot"):
            a.create_session_nowait(echo_actor)  # nothing held yet
        await a.create_session(echo_actor, wait=False)  # a round trip, plus spares
        spare = cluster_of(a).lease_block
        for _ in range(spare):
            a.create_session_nowait(echo_actor)
        assert len(a) == 1 + spare
        view = await cluster_of(a).view()
        assert view.held == 1 + spare


async def test_the_principal_cap_holds_across_nodes_and_binds(redis_server: RedisServer) -> None:
    async with nodes(redis_server.url, 2, max_sessions=50, max_sessions_per_principal=2) as (a, b):
        await a.create_session(echo_actor, principal="alice", wait=False)
        await b.create_session(echo_actor, principal="alice", wait=False)
        for sup in (a, b):
            with pytest.raises(CapacityError, match="per principal"):
                await sup.create_session(echo_actor, principal="alice", wait=False)
        anonymous = await b.create_session(echo_actor, wait=False)
        with pytest.raises(CapacityError, match="per principal"):
            await b.bind_principal(anonymous.id, "alice")
        await b.bind_principal(anonymous.id, "bob")
        assert b.get_session(anonymous.id).principal == "bob"


async def test_events_reach_a_consumer_group_at_least_once(redis_server: RedisServer) -> None:
    async with nodes(redis_server.url, 2, max_sessions=10) as (a, b):
        seen: list[ClusterEvent] = []
        async with cluster_of(b).events("audit", "c1") as events:
            session = await a.create_session(echo_actor, wait=False)
            a.close_session(session.id, reason="done")
            with trio.fail_after(5):
                async for event in events:
                    if event.session_id == session.id:
                        seen.append(event)
                    if event.kind == EventKind.CLOSED:
                        break
        kinds = [e.kind for e in seen]
        assert kinds[0] == "created"
        assert kinds[-1] == "closed"
        assert seen[-1].reason == "done"
        assert [k for k in kinds if k in ("closed", "expired", "failed")] == ["closed"]


async def test_a_dead_nodes_sessions_are_reaped_once(redis_server: RedisServer) -> None:
    store = RedisStore(redis_server.url)
    async with nodes(redis_server.url, 1, max_sessions=10) as (a,), store.open():
        # A node that registers two sessions and stops renewing (as if killed).
        epoch, _ = await store.join("ghost", '{"address": ""}', 400, "", 400, 1000)
        await store.admit("ghost", epoch, 10, -1, [("", 2, 0, 0, 0)])
        await store.record(
            "ghost",
            1000,
            ["c", "s1.ghost", "created", "{}", "", "1", "c", "s2.ghost", "created", "{}", "", "1"],
        )
        async with cluster_of(a).events("reaper-test", "c1") as events:
            took = 0.0

            async def ghost_gone() -> bool:
                view = await cluster_of(a).view()
                return all(n.id != "ghost" for n in view.nodes)

            took = await eventually(ghost_gone, 0.4 + CHECK + 2, "the ghost node reaped")
            assert took < 0.4 + CHECK + 1.0
            terminal: dict[str, int] = {}
            with trio.move_on_after(1.5):
                async for event in events:
                    if event.kind == "failed":
                        terminal[event.session_id] = terminal.get(event.session_id, 0) + 1
                        assert event.reason == "node-lost"
        assert terminal == {"s1.ghost": 1, "s2.ghost": 1}
        view = await cluster_of(a).view()
        assert view.held <= 10 and all(n.id != "ghost" for n in view.nodes)


class _Flaky:
    """A store whose every call fails while ``down`` (a partition, as this node sees it)."""

    def __init__(self, inner: RedisStore) -> None:
        self.inner = inner
        self.down = False

    def __getattr__(self, name: str) -> Any:
        target = getattr(self.inner, name)
        if name in ("open", "hints"):
            return target

        async def call(*args: Any, **kwargs: Any) -> Any:
            if self.down:
                raise OSError("partitioned")
            return await target(*args, **kwargs)

        return call


async def test_a_node_that_cannot_renew_fences_itself_then_rejoins(
    redis_server: RedisServer,
) -> None:
    flaky = _Flaky(RedisStore(redis_server.url))
    cluster = Cluster(
        store=flaky,
        lease=LEASE,
        check_every=CHECK,
        request_timeout=TIMEOUT,
    )
    async with open_supervisor(cluster=cluster, max_sessions=10) as sup:
        session = await sup.create_session(echo_actor, wait=False)
        old = cluster.node_id
        ended: list[str | None] = []

        async with sup.subscribe(kinds=[EventKind.CLOSED]) as sub:
            flaky.down = True

            async def noticed() -> bool:
                return cluster.state == "unavailable"

            await eventually(noticed, LEASE / 3 + TIMEOUT + 0.2, "the store noticed away")
            assert await sup.call(session.id, 1) == 1  # existing sessions still serve
            with pytest.raises(ClusterUnavailable):
                await sup.create_session(echo_actor, wait=False)
            with trio.fail_after(LEASE + 1):
                async for event in sub:
                    assert isinstance(event, Event)
                    ended.append(event.reason)
                    break
        assert ended == ["fenced"]
        assert cluster.state == "fenced"
        flaky.down = False

        async def rejoined() -> bool:
            return cluster.state == "ready"

        await eventually(rejoined, 3, "rejoined")
        assert cluster.node_id != old
        fresh = await sup.create_session(echo_actor, wait=False)
        assert fresh.id.endswith("." + cluster.node_id)


async def test_a_redis_restart_is_survived(redis_server: RedisServer) -> None:
    async with nodes(redis_server.url, 2, max_sessions=4) as (a, b):
        kept = [await a.create_session(echo_actor, wait=False) for _ in range(2)]
        kept.append(await b.create_session(echo_actor, wait=False))
        redis_server.kill9()
        with pytest.raises(CapacityError):
            await a.create_session(echo_actor, wait=False)
        redis_server.restart()

        async def registered_again() -> bool:
            try:
                view = await cluster_of(b).view()
            except ClusterUnavailable:
                return False
            return view.sessions == 3 and len(view.nodes) == 2

        await eventually(registered_again, 5, "sessions registered again after the restart")
        for session in kept:
            owner = a if session.id in a else b
            assert await owner.call(session.id, "still") == "still"

        async def admits_again() -> bool:
            try:
                await b.create_session(echo_actor, wait=False)
            except CapacityError:
                return False
            return True

        await eventually(admits_again, 5, "admitting again")
        with pytest.raises(CapacityError):
            await a.create_session(echo_actor, wait=False)  # 4 of 4: the cap survived too


async def test_the_scripts_run_on_a_three_master_redis_cluster(redis_cluster: RedisCluster) -> None:
    nodes_at = [(n["host"], n["port"]) for n in redis_cluster.startup_nodes]
    clusters = [
        Cluster(
            "redis://",
            cluster_nodes=nodes_at,
            lease=1.5,
            check_every=CHECK,
            request_timeout=0.4,
        )
        for _ in range(2)
    ]
    async with AsyncExitStack() as stack:
        a, b = [
            await stack.enter_async_context(open_supervisor(cluster=c, max_sessions=3))
            for c in clusters
        ]
        await a.create_session(echo_actor, wait=False)
        await b.create_session(echo_actor, wait=False)
        await b.create_session(echo_actor, wait=False)
        with pytest.raises(CapacityError):
            await a.create_session(echo_actor, wait=False)
        view = await clusters[0].view()
        assert len(view.nodes) == 2
        assert view.held == 3


async def _never(ctx: SessionContext[Any]) -> None:  # pragma: no cover - placeholder actor
    await trio.sleep(math.inf)


async def test_a_node_reaped_before_its_records_arrived_still_ends_each_session_once(
    redis_server: RedisServer,
) -> None:
    flaky = _Flaky(RedisStore(redis_server.url))
    paused = Cluster(store=flaky, lease=LEASE, check_every=CHECK, request_timeout=TIMEOUT)
    async with (
        nodes(redis_server.url, 1, max_sessions=10) as (watcher,),
        open_supervisor(cluster=paused, max_sessions=10) as sup,
    ):
        old = paused.node_id
        async with cluster_of(watcher).events("orphans", "c1") as events:
            session = await sup.create_session(echo_actor, wait=False)
            flaky.down = True  # before its creation is recorded (records gather for 20 ms)

            async def reaped_and_back() -> bool:
                view = await cluster_of(watcher).view()
                return old not in {n.id for n in view.nodes} and paused.state == "fenced"

            await eventually(reaped_and_back, LEASE + CHECK + 2, "reaped, then fenced")
            flaky.down = False
            kinds: list[tuple[str, str | None]] = []
            with trio.move_on_after(3):
                async for event in events:
                    if event.session_id == session.id:
                        kinds.append((event.kind, event.reason))
                        if event.kind in ("closed", "expired", "failed"):
                            break
        assert kinds[0] == ("created", None)
        assert kinds[-1] == ("closed", "fenced")
        assert sum(k in ("closed", "expired", "failed") for k, _ in kinds) == 1


async def test_cancelling_an_attached_node_raises_nothing_but_the_cancellation(
    redis_server: RedisServer,
) -> None:
    # coredis's pub/sub tasks may meet their closed connection while a cancellation tears
    # them down; that must not escape as anyio.ClosedResourceError (a Ctrl-C's traceback).
    for _ in range(6):
        cluster = Cluster(redis_server.url, lease=0.9, check_every=0.3, request_timeout=0.25)
        with trio.CancelScope() as scope:
            async with trio.open_nursery() as nursery:

                async def run(cluster: Cluster = cluster) -> None:
                    async with open_supervisor(cluster=cluster):
                        await trio.sleep_forever()

                nursery.start_soon(run)
                await trio.sleep(0.3)
                scope.cancel()
        assert scope.cancelled_caught
