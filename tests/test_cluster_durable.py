"""Durable sessions across a cluster: one activation per epoch, whatever the interleaving.

Three parts:

* hypothesis drives interleavings of activate / save / passivate / delete from three nodes on
  one real redis-server (each example on its own key prefix), with nodes whose lease lapses
  (the others see them dead, they go on writing as if nothing happened) and nodes that fence
  themselves (a new incarnation id). The checks are over the store's epochs: each epoch is
  granted to one activation, epochs only grow, a write is accepted only from the holder of the
  current epoch, and the record ends as the last accepted write left it;
* real supervisors (`open_supervisor(cluster=..., store=cluster.store)`) in one trio run: a
  durable counter survives its node's death and continues on another node, and two nodes that
  activate it at once get one activation between them;
* `Forwarding` for durable sessions over a fake directory (no Redis, no peers): what it does
  per case (live here, no record, live elsewhere, passivated or dead owner, a lost race, no
  slot, a relayed request).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, MutableMapping
from functools import partial
from typing import Any, Literal, cast

import attrs
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mcp import Client

from supervisor import (
    ActiveElsewhere,
    CapacityError,
    Event,
    EventKind,
    SessionContext,
    SessionNotFound,
    StoreError,
    Superseded,
    Supervisor,
    open_supervisor,
)
from supervisor._durable import DurableRecord
from supervisor.cluster import Cluster, RedisSessionStore, RedisStore
from supervisor.cluster._durable import MISSING, Missing
from supervisor.cluster._forward import FORWARDED_HEADER, Forwarding
from supervisor.mcp import McpHttpApp, create_demo_server, serve_http

from ._redis import RedisServer, command, shared_redis_fixture  # noqa: F401
from .test_cluster_forward import count, http_client, initialize
from .test_store_redis import CHECK, LEASE, TIMEOUT, fresh_prefix


async def eventually(check: Callable[[], Awaitable[bool]], within: float, what: str) -> None:
    start = trio.current_time()
    while not await check():
        if trio.current_time() - start > within:
            pytest.fail(f"not within {within} s: {what}")
        await trio.sleep(0.02)


# -- hypothesis: interleavings over the store's epochs ------------------------------------------


@attrs.define
class _Host:
    """Just enough of a `Cluster` for `RedisSessionStore`, with an identity the test sets:
    ``node_id`` is the incarnation, its lease a key the test creates and deletes. It never
    fences by itself, so a node whose lease lapsed goes on writing (the worst case: a process
    paused past its lease that resumes before it notices)."""

    _store: RedisStore
    node_id: str
    state: str = "ready"
    _fence_at: float = float("inf")
    request_timeout: float = 1.0
    _supervisor: object = attrs.field(factory=object)


@attrs.define
class _Node:
    host: _Host
    store: RedisSessionStore
    incarnation: int = 0
    held: int | None = None  # the epoch this node believes it holds


OPS = ("activate", "save", "passivate", "delete", "lapse", "fence")
WRITES = ("save", "passivate")
SID = "durable-session.n0"

#: Rounds of operations; the operations of a round run concurrently, one per node at most.
#: Every example starts with node 0 creating the session (its first save); activations and
#: saves come twice as often as the rest.
ROUNDS = st.lists(
    st.lists(
        st.tuples(st.integers(0, 2), st.sampled_from((*OPS, "activate", "save"))),
        min_size=1,
        max_size=3,
    ),
    min_size=2,
    max_size=12,
).map(lambda rounds: [[(0, "save")], *rounds])


def _record(node: _Node, epoch: int, value: int) -> DurableRecord:
    return DurableRecord(
        id=SID, actor="counter", epoch=epoch, owner=node.store.node, state={"value": value}
    )


async def _step(
    server: RedisServer,
    tag: str,
    nodes: list[_Node],
    values: Iterator[int],
    i: int,
    op: str,
    results: list[tuple[int, str, str, int, Any]],
) -> None:
    """Node ``i`` does ``op``; what came of it is appended to ``results``."""
    node = nodes[i]
    writer = node.store.node
    epoch = node.held if node.held is not None else 1
    if op == "activate":
        try:
            record = await node.store.activate(SID, time.time())
        except SessionNotFound:
            results.append((i, op, "missing", 0, None))
        except ActiveElsewhere as exc:
            results.append((i, op, "elsewhere", 0, exc.owner))
        else:
            assert record.owner == writer
            node.held = record.epoch
            results.append((i, op, "ok", record.epoch, record.state))
    elif op in ("save", "passivate"):
        value = next(values)
        try:
            if op == "save":
                await node.store.save(_record(node, epoch, value))
            else:
                await node.store.passivate(_record(node, epoch, value), time.time() + 60)
        except Superseded:
            results.append((i, op, "refused", epoch, writer))
        else:
            results.append((i, op, "ok", epoch, (writer, value)))
    elif op == "delete":
        deleted = await node.store.delete(SID, epoch)
        results.append((i, op, "ok" if deleted else "refused", epoch, writer))
    elif op == "lapse":  # the others see it dead; it does not know
        command(server.port, "DEL", f"{tag}:lease:{node.host.node_id}")
    else:  # fence: a new incarnation with its own lease; it forgets nothing
        node.incarnation += 1
        node.host.node_id = f"n{i}i{node.incarnation}"
        command(server.port, "SET", f"{tag}:lease:{node.host.node_id}", "1")


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(rounds=ROUNDS)
def test_interleavings_keep_one_activation_per_epoch(
    shared_redis: RedisServer, rounds: list[list[tuple[int, str]]]
) -> None:
    trio.run(_interleave, shared_redis, rounds)


async def _interleave(server: RedisServer, rounds: list[list[tuple[int, str]]]) -> None:
    prefix = fresh_prefix()
    tag = "{" + prefix + "}"
    values = itertools.count(1)
    async with contextlib.AsyncExitStack() as stack:
        nodes: list[_Node] = []
        for i in range(3):
            redis = RedisStore(server.url, prefix=prefix, timeout=1.0)
            await stack.enter_async_context(redis.open())
            host = _Host(redis, f"n{i}i0")
            store = RedisSessionStore(cast(Cluster, host))
            await stack.enter_async_context(store.open())
            nodes.append(_Node(host, store))
            command(server.port, "SET", f"{tag}:lease:{host.node_id}", "1")

        granted: dict[int, str] = {}  # epoch -> the incarnation it was granted to
        granted_in: dict[int, int] = {}  # epoch -> the round that granted it
        last: int | Literal["gone"] | None = None  # the last accepted write's value

        for number, ops in enumerate(rounds):
            done: dict[int, str] = {}
            results: list[tuple[int, str, str, int, Any]] = []  # node, op, outcome, epoch, x
            # Who holds the record as the round starts (its epoch, its owner: '' while
            # passivated), and whether the holder's lease exists.
            stored = command(server.port, "HMGET", f"{tag}:durable:{SID}", "epoch", "owner")
            assert isinstance(stored, list)
            stored_epoch, holder = (v.decode() if isinstance(v, bytes) else None for v in stored)
            parked = int(stored_epoch) if stored_epoch is not None and holder == "" else None
            holder = holder or ""
            holder_alive = (
                bool(holder) and command(server.port, "EXISTS", f"{tag}:lease:{holder}") == 1
            )
            ids_at_start = [node.store.node for node in nodes]

            async with trio.open_nursery() as nursery:
                for i, op in ops:
                    if i not in done:
                        done[i] = op
                        nursery.start_soon(_step, server, tag, nodes, values, i, op, results)

            if holder_alive and holder in ids_at_start:
                # A live holder that did nothing this round keeps the session to itself.
                if ids_at_start.index(holder) not in done:
                    assert not any(o == "activate" and out == "ok" for (_, o, out, _, _) in results)
            elif holder_alive:  # an earlier incarnation, whose lease the test never drops
                assert not any(o == "activate" and out == "ok" for (_, o, out, _, _) in results)

            before = last
            writes = [x[1] for (_, o, out, _, x) in results if o in WRITES and out == "ok"]
            deleted = any(o == "delete" and out == "ok" for (_, o, out, _, _) in results)
            # One holder at a time: at most one accepted write per round (and one delete,
            # which, if both were accepted, came after the write: a tombstone refuses all).
            assert len(writes) <= 1, results
            for i, op, outcome, epoch, extra in results:
                if op == "activate" and outcome == "ok":
                    # One activation per epoch; epochs only grow from round to round.
                    assert epoch not in granted, f"epoch {epoch} granted twice"
                    assert all(epoch > e for e, r in granted_in.items() if r < number)
                    granted[epoch] = nodes[i].store.node
                    granted_in[epoch] = number
                    # It reads what the last accepted write left, or this round's write.
                    allowed = set(writes) | ({before} if isinstance(before, int) else set())
                    assert extra is not None and extra["value"] in allowed, (extra, allowed)
                elif op == "activate" and outcome == "missing":
                    assert not isinstance(before, int) or deleted, "a live record was not found"
            for _, op, outcome, epoch, extra in results:
                if op in WRITES and outcome == "ok":
                    writer, value = extra
                    if epoch == 1 and 1 not in granted:
                        granted[1] = writer  # the session's creation
                        granted_in[1] = number
                    # Accepted only from the holder of the epoch, and no newer epoch was
                    # granted in an earlier round.
                    assert granted.get(epoch) == writer, (epoch, writer, granted)
                    assert all(e <= epoch for e, r in granted_in.items() if r < number), (
                        f"a write at epoch {epoch} accepted after a newer activation"
                    )
                    last = value
            for _, op, outcome, epoch, extra in results:
                if op == "activate" and outcome == "elsewhere":  # a holder of some epoch
                    assert extra in granted.values(), (extra, granted)
                elif op == "delete" and outcome == "ok":
                    # Only the holder of the epoch deletes, or anyone once it is passivated.
                    parked_now = any(
                        o == "passivate" and out == "ok" and e == epoch
                        for (_, o, out, e, _) in results
                    )
                    assert granted.get(epoch) == extra or parked == epoch or parked_now, (
                        epoch,
                        extra,
                        granted,
                    )
            if deleted:
                last = "gone"

        # The final state: every owner dead, a fresh node activates what is left.
        for i, node in enumerate(nodes):
            for k in range(node.incarnation + 1):
                command(server.port, "DEL", f"{tag}:lease:n{i}i{k}")
        redis = RedisStore(server.url, prefix=prefix, timeout=1.0)
        await stack.enter_async_context(redis.open())
        final = RedisSessionStore(cast(Cluster, _Host(redis, "final")))
        await stack.enter_async_context(final.open())
        if isinstance(last, int):
            got = await final.activate(SID, time.time())
            assert got.state == {"value": last}
            assert got.epoch == max(granted) + 1
        else:
            with pytest.raises(SessionNotFound):
                await final.activate(SID, time.time())


# -- real supervisors ----------------------------------------------------------------------------


async def counter(ctx: SessionContext[Any]) -> None:
    """A durable counter: ``"inc"`` adds one, saves (write-through), replies the count."""
    if not ctx.session.is_initialized:
        ctx.initialize(client_info={"name": "counter"})
    count = (ctx.saved or {}).get("count", 0)
    async for msg in ctx.mailbox:
        if msg.payload == "inc":
            count += 1
            await ctx.save({"count": count})
        msg.reply(count)


_STEPS = frozenset({"join", "renew", "admit", "give", "record", "reap", "reconcile", "view"})


class _Mortal(RedisStore):
    """A RedisStore that dies on demand: once ``dead``, every cluster step fails and the
    durable store finds no connection, so the node writes nothing more (no passivation, no
    leaving) and its lease lapses, as if the process had been killed."""

    dead = False

    def __getattribute__(self, name: str) -> Any:
        value = super().__getattribute__(name)
        if name == "_client" and super().__getattribute__("dead"):
            return None
        if name in _STEPS and super().__getattribute__("dead"):

            async def failing(*args: Any, **kwargs: Any) -> Any:
                raise OSError("this node is dead")

            return failing
        return value


def _node(url: str, prefix: str, store: RedisStore | None = None) -> Cluster:
    if store is not None:
        return Cluster(store=store, lease=LEASE, check_every=CHECK, request_timeout=TIMEOUT)
    return Cluster(url, prefix=prefix, lease=LEASE, check_every=CHECK, request_timeout=TIMEOUT)


@contextlib.asynccontextmanager
async def durable_node(cluster: Cluster, **config: Any) -> AsyncIterator[Supervisor]:
    async with open_supervisor(cluster=cluster, store=cluster.store, **config) as sup:
        sup.register_durable("counter", counter)
        yield sup


async def test_a_dead_nodes_counter_continues_on_another_node(shared_redis: RedisServer) -> None:
    prefix = fresh_prefix()
    mortal = _Mortal(shared_redis.url, prefix=prefix, timeout=TIMEOUT)
    a, b, c = (
        _node("", prefix, mortal),
        _node(shared_redis.url, prefix),
        _node(shared_redis.url, prefix),
    )
    async with durable_node(b, max_sessions=10) as sup_b, durable_node(c, max_sessions=10) as sup_c:
        ids: list[str] = []
        a_alive, a_dies = trio.Event(), trio.Event()

        async def run_a() -> None:
            async with durable_node(a, max_sessions=10) as sup_a:
                first = await sup_a.create_session(counter, durable=True)
                second = await sup_a.create_session(counter, durable=True)
                assert [await sup_a.call(first.id, "inc") for _ in range(3)] == [1, 2, 3]
                assert await sup_a.call(second.id, "inc") == 1
                ids.extend((first.id, second.id))
                await trio.sleep(0.2)  # its registrations reach the store (a 20 ms batch)
                a_alive.set()
                await a_dies.wait()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(run_a)
            with trio.fail_after(10):
                await a_alive.wait()
            first, second = ids
            a_node = a.node_id
            # While A lives, its sessions are its own.
            with pytest.raises(ActiveElsewhere) as refused:
                await sup_b.activate(first)
            assert refused.value.owner == a_node
            assert await b.durable_owner(first) == a_node
            # A dies: it writes nothing more (its passivations and its leaving fail), and
            # its lease lapses. (Not a cancellation, which trips coredis: its pub/sub cleanup
            # raises ClosedResourceError once the connection tasks were cancelled.)
            mortal.dead = True
            a_dies.set()

        async def a_lapsed() -> bool:
            return await b.durable_owner(first) is None

        await eventually(a_lapsed, LEASE + 2, "A's lease lapsed")

        def lost() -> list[dict[str, str]]:
            entries = command(shared_redis.port, "XRANGE", "{" + prefix + "}:events", "-", "+")
            assert isinstance(entries, list)
            found = []
            for entry in entries:
                assert isinstance(entry, list) and isinstance(entry[1], list)
                raw = [x.decode() if isinstance(x, bytes) else str(x) for x in entry[1]]
                fields = dict(zip(raw[::2], raw[1::2], strict=True))
                if fields.get("reason") == "node-lost" and fields.get("session"):
                    found.append(fields)
            return found

        async def reaped() -> bool:
            return len(lost()) == 2

        await eventually(reaped, LEASE + 3, "A's two sessions reaped")
        # The stream does not say A's durable sessions ended: they outlive their node.
        assert {e["kind"] for e in lost()} == {"passivated"}, lost()
        session = await sup_b.activate(first)
        assert session.id == first and session.durable and session.epoch == 2
        assert await sup_b.call(first, "inc") == 4
        assert await c.durable_owner(first) == b.node_id
        with pytest.raises(ActiveElsewhere) as refused:
            await sup_c.activate(first)
        assert refused.value.owner == b.node_id

        # Two nodes activate A's other session at once: one activation between them.
        outcomes: dict[str, Any] = {}

        async def activate(name: str, sup: Supervisor) -> None:
            try:
                outcomes[name] = await sup.activate(second)
            except ActiveElsewhere as exc:
                outcomes[name] = exc

        async with trio.open_nursery() as nursery:
            nursery.start_soon(activate, "b", sup_b)
            nursery.start_soon(activate, "c", sup_c)
        won = [name for name, got in outcomes.items() if not isinstance(got, ActiveElsewhere)]
        assert len(won) == 1, outcomes
        winner, loser = won[0], ({"b", "c"} - set(won)).pop()
        winner_node = {"b": b, "c": c}[winner].node_id
        assert cast(ActiveElsewhere, outcomes[loser]).owner == winner_node
        winner_sup = {"b": sup_b, "c": sup_c}[winner]
        assert await winner_sup.call(second, "inc") == 2

        # The cluster's registry and stream know where the sessions run now.
        async def registered() -> bool:
            rows = await c.sessions()
            return {(r["id"], r["node"]) for r in rows} >= {
                (first, b.node_id),
                (second, winner_node),
            }

        await eventually(registered, 3, "the activated sessions registered on their new nodes")
        view = await c.view(events=50)
        activated = {(e.session_id, e.node) for e in view.events if e.kind == "activated"}
        assert (first, b.node_id) in activated and (second, winner_node) in activated

        # B leaves gracefully: its sessions passivate, and the stream says so.
        b_node = b.node_id
        await sup_b.shutdown()

        async def passivated() -> bool:
            events = (await c.view(events=50)).events
            return any(
                e.kind == "passivated" and e.session_id == first and e.node == b_node
                for e in events
            )

        await eventually(passivated, 3, "B's passivation in the stream")
        assert await c.durable_owner(first) is None  # passivated: anyone may activate it
        assert (await sup_c.activate(first)).epoch == 3
        assert await sup_c.call(first, "inc") == 5


async def test_a_fenced_nodes_durable_sessions_stay_activatable(shared_redis: RedisServer) -> None:
    # Fencing closes the node's sessions; a durable one is passivated, not ended (its record
    # stays with the old incarnation, whose lease is gone), so another node activates it.
    prefix = fresh_prefix()

    class NoRenewals(RedisStore):
        down = False

        async def renew(self, node: str, lease_ms: int, epoch: str, info: str = "") -> str:
            if self.down:
                raise OSError("partitioned")
            return await super().renew(node, lease_ms, epoch, info)

    flaky = NoRenewals(shared_redis.url, prefix=prefix, timeout=TIMEOUT)
    a, b = _node("", prefix, flaky), _node(shared_redis.url, prefix)
    async with durable_node(a, max_sessions=10) as sup_a, durable_node(b, max_sessions=10) as sup_b:
        session = await sup_a.create_session(counter, durable=True)
        assert await sup_a.call(session.id, "inc") == 1
        old = a.node_id
        async with sup_a.subscribe(kinds=[EventKind.PASSIVATED, EventKind.CLOSED]) as sub:
            flaky.down = True
            with trio.fail_after(LEASE + 2):
                async for event in sub:
                    assert isinstance(event, Event)
                    assert event.session_id == session.id and event.reason == "fenced"
                    assert event.kind is EventKind.PASSIVATED  # it has not ended
                    break
        assert a.node_id != old
        flaky.down = False

        async def free() -> bool:
            return await b.durable_owner(session.id) is None

        await eventually(free, LEASE + 2, "the fenced incarnation's lease gone")
        assert (await sup_b.activate(session.id)).epoch == 2
        assert await sup_b.call(session.id, "inc") == 2


# -- through HTTP: three nodes serving McpHttpApp behind forwarding -------------------------------


@attrs.define
class _HttpNode:
    cluster: Cluster
    sup: Supervisor
    url: str


@contextlib.asynccontextmanager
async def http_node(cluster: Cluster) -> AsyncIterator[_HttpNode]:
    """A supervisor on ``cluster`` with its store, serving the demo server behind forwarding."""
    async with (
        open_supervisor(cluster=cluster, store=cluster.store, max_sessions=10) as sup,
        trio.open_nursery() as nursery,
    ):
        made: list[Forwarding] = []

        def wrap(app: McpHttpApp) -> Forwarding:
            forwarding = cast(Forwarding, cluster.forwarding(app))
            made.append(forwarding)
            return forwarding

        url: str = await nursery.start(
            partial(serve_http, sup, create_demo_server(), port=0, wrap=wrap)
        )
        cluster.set_address(url.removesuffix("/mcp"))
        try:
            yield _HttpNode(cluster, sup, url)
        finally:
            for forwarding in made:
                await forwarding.aclose()
            nursery.cancel_scope.cancel()


async def test_a_durable_mcp_session_continues_through_another_node_after_its_owner_died(
    shared_redis: RedisServer,
) -> None:
    prefix = fresh_prefix()
    mortal = _Mortal(shared_redis.url, prefix=prefix, timeout=TIMEOUT)
    a = _node("", prefix, mortal)
    with trio.fail_after(30):
        async with (
            http_node(_node(shared_redis.url, prefix)) as b,
            http_node(_node(shared_redis.url, prefix)) as c,
            http_client() as http,
        ):
            a_alive, a_dies = trio.Event(), trio.Event()
            ids: list[str] = []

            async def run_a() -> None:
                async with http_node(a) as node_a:
                    # Visible to the peers before a request is relayed to it.
                    await eventually(
                        lambda: _known(b.cluster, a.node_id), 3, "A's address known to B"
                    )
                    session_id = await initialize(http, node_a.url)
                    assert await count(http, node_a.url, session_id) == 1
                    assert await count(http, node_a.url, session_id) == 2
                    assert await count(http, b.url, session_id) == 3  # relayed to its owner
                    assert len(b.sup) == 0
                    ids.append(session_id)
                    a_alive.set()
                    await a_dies.wait()
                    mortal.dead = True  # writes nothing more: no passivation, no leaving

            async with trio.open_nursery() as nursery:
                nursery.start_soon(run_a)
                await a_alive.wait()
                a_dies.set()
            [session_id] = ids

            async def lapsed() -> bool:
                return await b.cluster.durable_owner(session_id) is None

            await eventually(lapsed, LEASE + 2, "A's lease lapsed")
            # The next request, on any node, activates it there from its last saved state.
            assert await count(http, b.url, session_id) == 4
            assert b.sup.has_session(session_id)
            assert await count(http, c.url, session_id) == 5  # relayed to B, its owner now
            assert not c.sup.has_session(session_id)


async def test_a_durable_state_handle_continues_through_another_node_after_its_owner_died(
    shared_redis: RedisServer,
) -> None:
    prefix = fresh_prefix()
    mortal = _Mortal(shared_redis.url, prefix=prefix, timeout=TIMEOUT)
    a = _node("", prefix, mortal)
    with trio.fail_after(30):
        async with (
            http_node(_node(shared_redis.url, prefix)) as b,
            http_node(_node(shared_redis.url, prefix)) as c,
            Client(b.url) as on_b,
            Client(c.url) as on_c,
        ):

            async def counted(client: Client, handle: str) -> Any:
                answer = await client.call_tool("counter", {"session": handle})
                assert isinstance(answer.structured_content, dict), answer
                return answer.structured_content.get("count")

            handles: list[str] = []
            a_alive, a_dies = trio.Event(), trio.Event()

            async def run_a() -> None:
                async with http_node(a) as node_a, Client(node_a.url) as on_a:
                    await eventually(
                        lambda: _known(b.cluster, a.node_id), 3, "A's address known to B"
                    )
                    opened = await on_a.call_tool("open_session", {})
                    assert isinstance(opened.structured_content, dict)
                    handle = opened.structured_content["session"]
                    assert await counted(on_a, handle) == 1
                    assert await counted(on_a, handle) == 2
                    assert await counted(on_b, handle) == 3  # relayed to its owner
                    handles.append(handle)
                    a_alive.set()
                    await a_dies.wait()
                    mortal.dead = True

            async with trio.open_nursery() as nursery:
                nursery.start_soon(run_a)
                await a_alive.wait()
                a_dies.set()
            [handle] = handles

            async def lapsed() -> bool:
                return await b.cluster.durable_owner(handle) is None

            await eventually(lapsed, LEASE + 2, "A's lease lapsed")
            assert await counted(on_c, handle) == 4  # activated on C
            assert c.sup.has_session(handle)
            assert await counted(on_b, handle) == 5  # relayed to C, its owner now
            assert not b.sup.has_session(handle)


async def _known(cluster: Cluster, node: str) -> bool:
    return await cluster.locate(node) is not None


# -- forwarding ------------------------------------------------------------------------------------


@attrs.define
class FakeDurableDirectory:
    """A `DurableDirectory` whose answers the test sets; it records what it was asked."""

    node_id: str = "here"
    live: set[str] = attrs.field(factory=set)
    owners: dict[str, str | None] = attrs.field(factory=dict)  # absent: no record
    activation: BaseException | None = None
    asked: list[tuple[str, str]] = attrs.field(factory=list)
    durable: bool = True

    def owner_of(self, session_id: str) -> str | None:
        head, dot, node = session_id.rpartition(".")
        return node if dot and head and node else None

    def address_of(self, node: str) -> str | None:
        self.asked.append(("address", node))
        return None  # nobody can be reached: a relay attempt shows as this question

    def is_live(self, session_id: str) -> bool:
        return session_id in self.live

    async def durable_owner(self, session_id: str) -> str | Literal[Missing.MISSING] | None:
        self.asked.append(("owner", session_id))
        return self.owners.get(session_id, MISSING) if session_id in self.owners else MISSING

    async def activate(self, session_id: str) -> None:
        self.asked.append(("activate", session_id))
        if self.activation is not None:
            raise self.activation
        self.live.add(session_id)


@attrs.define
class Recorder:
    """An ASGI app that answers 200 and remembers the session ids it served."""

    served: list[str] = attrs.field(factory=list)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        headers = dict(scope["headers"])
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        self.served.append(headers.get(b"mcp-session-id", b"").decode() or body.decode())
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


async def _request(
    forwarding: Forwarding,
    session_id: str,
    *,
    forwarded: bool = False,
    modern: bool = False,
) -> tuple[int, dict[str, str]]:
    headers = [(b"content-type", b"application/json")]
    body = b'{"jsonrpc": "2.0", "id": 1, "method": "ping"}'
    if modern:
        headers += [(b"mcp-protocol-version", b"2026-07-28"), (b"mcp-method", b"tools/call")]
        body = json.dumps(
            {
                "jsonrpc": "2.0",
                "id": 1,
                "method": "tools/call",
                "params": {"name": "counter", "arguments": {"session": session_id}},
            }
        ).encode()
    else:
        headers.append((b"mcp-session-id", session_id.encode()))
    if forwarded:
        headers.append((FORWARDED_HEADER.encode(), b"elsewhere"))
    scope = {"type": "http", "method": "POST", "path": "/mcp", "headers": headers}
    sent = False
    answer: dict[str, Any] = {}

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await trio.sleep_forever()
        raise AssertionError  # pragma: no cover

    async def send(message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.start":
            answer["status"] = message["status"]
            answer["headers"] = {k.decode().lower(): v.decode() for k, v in message["headers"]}

    with trio.fail_after(5):
        await forwarding(scope, receive, send)
    return answer["status"], answer["headers"]


async def test_forwarding_routes_a_durable_session_to_where_it_can_run() -> None:
    directory = FakeDurableDirectory()
    app = Recorder()
    forwarding = Forwarding(app, directory)

    # Live here: served here, no round trip.
    directory.live.add("live.here")
    assert (await _request(forwarding, "live.here"))[0] == 200
    assert directory.asked == []

    # No record: as before (this node's id: served here; a dead node's: 404).
    assert (await _request(forwarding, "gone.here"))[0] == 200
    assert (await _request(forwarding, "gone.there"))[0] == 404
    assert ("address", "there") in directory.asked

    # Held by another live node: relayed there (it cannot be reached here: 503, retry).
    directory.asked.clear()
    directory.owners["moved.here"] = "other"
    status, headers = await _request(forwarding, "moved.here")
    assert (status, headers.get("retry-after")) == (503, "1")
    assert directory.asked == [("owner", "moved.here"), ("address", "other")]

    # Passivated, or its owner is dead: activated here, then served here.
    directory.asked.clear()
    directory.owners["parked.there"] = None
    assert (await _request(forwarding, "parked.there"))[0] == 200
    assert directory.asked == [("owner", "parked.there"), ("activate", "parked.there")]
    assert app.served[-1] == "parked.there"

    # Another node won the race to activate it: relayed to the winner.
    directory.asked.clear()
    directory.owners["raced.there"] = None
    directory.activation = ActiveElsewhere("raced", "winner")
    assert (await _request(forwarding, "raced.there"))[0] == 503
    assert directory.asked[-1] == ("address", "winner")

    # No slot here, or the store away: 503 with Retry-After.
    for failure in (CapacityError("full"), StoreError("away")):
        directory.activation = failure
        directory.owners["full.there"] = None
        status, headers = await _request(forwarding, "full.there")
        assert (status, headers.get("retry-after")) == (503, "1")

    # Expired meanwhile (not found): the app answers as for any unknown session.
    directory.activation = SessionNotFound("expired")
    directory.owners["expired.there"] = None
    assert (await _request(forwarding, "expired.there"))[0] == 200
    assert app.served[-1] == "expired.there"


async def test_a_relayed_request_is_activated_here_never_relayed_again() -> None:
    directory = FakeDurableDirectory()
    app = Recorder()
    forwarding = Forwarding(app, directory)
    directory.owners["parked.there"] = "other"  # whatever the store says, no second hop
    assert (await _request(forwarding, "parked.there", forwarded=True))[0] == 200
    assert directory.asked == [("activate", "parked.there")]
    directory.asked.clear()
    directory.activation = ActiveElsewhere("raced", "winner")
    assert (await _request(forwarding, "raced.there", forwarded=True))[0] == 503
    assert directory.asked == [("activate", "raced.there")]
    # Not durable-enabled: the relayed request goes straight to the app, as before.
    directory.durable = False
    directory.asked.clear()
    assert (await _request(forwarding, "other.there", forwarded=True))[0] == 200
    assert directory.asked == []


async def test_a_durable_handle_is_activated_where_its_tool_call_lands() -> None:
    directory = FakeDurableDirectory()
    app = Recorder()
    forwarding = Forwarding(app, directory)
    directory.owners["parked.there"] = None
    assert (await _request(forwarding, "parked.there", modern=True))[0] == 200
    assert directory.asked == [("owner", "parked.there"), ("activate", "parked.there")]
    directory.asked.clear()
    directory.owners["moved.here"] = "other"
    assert (await _request(forwarding, "moved.here", modern=True))[0] == 503
    assert directory.asked == [("owner", "moved.here"), ("address", "other")]


async def test_a_full_cluster_passivates_an_idle_durable_session_of_the_admitting_node(
    shared_redis: RedisServer,
) -> None:
    # passivate_at_capacity counts the cluster's cap too: this node has room of its own, the
    # cluster has none, so this node's least recently used idle durable session makes room.
    prefix = fresh_prefix()

    async def idle(ctx: SessionContext[Any]) -> None:
        async for _ in ctx.mailbox:
            pass

    def node() -> Cluster:
        return Cluster(
            shared_redis.url,
            prefix=prefix,
            lease=LEASE,
            check_every=CHECK,
            request_timeout=TIMEOUT,
            lease_block=0,
        )

    a_cluster, b_cluster = node(), node()
    config: dict[str, Any] = {"max_sessions": 2, "passivate_at_capacity": True}
    async with (
        open_supervisor(cluster=a_cluster, store=a_cluster.store, **config) as a,
        open_supervisor(cluster=b_cluster, store=b_cluster.store, **config) as b,
    ):
        for sup in (a, b):
            sup.register_durable("idle", idle)
        old = (await a.create_session(idle, durable=True, wait=False)).id
        await b.create_session(idle, wait=False)
        with pytest.raises(CapacityError):  # B has nothing durable to passivate
            await b.create_session(idle, wait=False)
        async with a.subscribe(kinds=[EventKind.PASSIVATED]) as events:
            new = await a.create_session(idle, wait=False)
            passivated = await events.__anext__()
        assert isinstance(passivated, Event)
        assert (passivated.session_id, passivated.reason) == (old, "capacity")
        assert new.id in a and old not in a
