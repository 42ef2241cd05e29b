"""`Cluster`: one node of a cluster of supervisors sharing capacity, ownership and events.

A node is one process's supervisor joined to the cluster's store. It

* mints session ids that name it (``<192 random bits>.<node>``), so any node knows a session's
  owner without a lookup;
* counts its sessions against the cluster-wide caps through a *slot lease*: it holds slots in
  the store (its sessions plus a few spare ones, never more than the store grants), spends
  them synchronously (`create_session_nowait` stays synchronous) and takes more, or gives
  spare ones back, in one batched round trip at a time (the *ledger*);
* renews its lease every third of the lease period and fences itself (stops admitting, closes
  its sessions, joins again as a new incarnation) when it could not renew in time;
* reaps nodes whose lease has gone (their sessions, capacity, one terminal event each);
* records its sessions and their lifecycle events in the store (the registry and the event
  stream) from a bounded buffer, off the hot path: the local bus never waits on the store;
* after the store lost its data (a restart without persistence), claims its live sessions
  again before anyone admits (the reconcile window).

See docs/cluster.md for the design, the guarantees and the figures.
"""

from __future__ import annotations

import json
import logging
import math
import os
import secrets
import socket
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager, suppress
from typing import TYPE_CHECKING, Any, Final, Literal

import attrs
import trio

from .. import CapacityError, EventKind, SessionNotFound, SessionState
from ._durable import MISSING, Missing, RedisSessionStore
from ._store import ClusterStore, RedisStore, StoreError, redact, registry_info
from ._view import ClusterEvent, ClusterView, NodeView

if TYPE_CHECKING:
    from .. import Session, Supervisor

__all__ = ["Cluster", "ClusterError", "ClusterUnavailable"]

logger = logging.getLogger("supervisor.cluster")

#: How many buffered registry/event operations a node keeps while the store is slow or away;
#: past it, events other than creations and ends (state changes) are dropped, counted in
#: `Cluster.dropped_events` and logged once the store answers again.
MAX_PENDING: Final = 100_000

#: Operations per RECORD call.
_CHUNK: Final = 500

#: Values per buffered operation: the node whose registry it goes to, then RECORD's six.
_OP: Final = 7

#: Tombstones of reaped nodes live this long (ms): a node paused longer than this and then
#: resumed no longer learns it was reaped, but its lease check fences it anyway.
_TOMB_MS: Final = 24 * 3600 * 1000


class ClusterError(RuntimeError):
    """The cluster cannot be joined or used as configured."""


class ClusterUnavailable(CapacityError):
    """The cluster's store is not answering (or this node is fenced): no new session now.

    A `CapacityError`, so the HTTP front end answers 503 with ``Retry-After``.
    """


@attrs.define
class _Request:
    """One admit or bind waiting for the ledger's next round trip."""

    principal: str  # "" when the principal's slot is not counted
    total: bool  # an admit (a total slot and maybe the principal's), not a bind
    need_total: int
    need_principal: int
    done: trio.Event = attrs.Factory(trio.Event)
    status: str = "pending"
    taken: bool = False


def _node_token() -> str:
    return secrets.token_hex(5)


class Cluster:
    """A node of a cluster on Redis or Valkey: pass it as ``open_supervisor(cluster=...)``.

    Every node of one cluster must use the same store (URL and ``prefix``) and the same
    ``max_sessions`` and ``max_sessions_per_principal``: they are the cluster-wide caps.

    Args:
        url: ``redis://[user:password@]host:port/db``, ``rediss://...`` (TLS), ``valkey://``
            or ``valkeys://``.
        advertise: the base URL peers forward requests to (``http://host:port``); can be set
            later with `set_address` (the CLI does once its port is bound).
        lease: seconds a node's lease lasts; it is renewed every ``lease / 3``. A node that
            could not renew within about ``0.9 * lease`` fences itself.
        check_every: seconds between two checks of the other nodes' leases. A dead node's
            sessions are reaped within about ``lease + check_every``.
        lease_block: spare slots a node may hold beyond its sessions (so that
            `Supervisor.create_session_nowait` can admit without a round trip). The store
            grants spares only while plenty of room is left (at most ``room / (2 * nodes)``),
            and a node gives them back when another is refused.
        prefix: the hash tag of every key (one slot on Redis Cluster).
        events_maxlen: the event stream is trimmed to about this many entries.
        request_timeout: seconds one store round trip may take; shorter than a third of the
            lease (a renewal must fit in its period). Default: ``min(0.5, lease / 4)``.
        store: a `ClusterStore` to use instead of ``url`` (tests, other engines).
        cluster_nodes: ``(host, port)`` startup nodes of a Redis Cluster (``url`` then only
            gives the scheme and credentials).
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        advertise: str | None = None,
        lease: float = 3.0,
        check_every: float = 1.0,
        lease_block: int = 8,
        prefix: str = "tss",
        events_maxlen: int = 10_000,
        request_timeout: float | None = None,
        store: ClusterStore | None = None,
        cluster_nodes: Sequence[tuple[str, int]] | None = None,
    ) -> None:
        if not (isinstance(lease, int | float) and lease > 0 and math.isfinite(lease)):
            raise ValueError(f"lease must be a positive number of seconds, got {lease!r}")
        if not (isinstance(check_every, int | float) and 0 < check_every < math.inf):
            raise ValueError(f"check_every must be a positive number of seconds: {check_every!r}")
        if not isinstance(lease_block, int) or lease_block < 0:
            raise ValueError(f"lease_block must be an integer >= 0, got {lease_block!r}")
        if request_timeout is None:
            request_timeout = min(0.5, lease / 4)
        if not (isinstance(request_timeout, int | float) and request_timeout > 0):
            raise ValueError(f"request_timeout must be positive, got {request_timeout!r}")
        if request_timeout >= lease / 3:
            raise ValueError("request_timeout must be shorter than a third of the lease")
        if store is None:
            if url is None:
                raise TypeError("Cluster needs a url (redis://...) or a store")
            store = RedisStore(
                url, prefix=prefix, cluster_nodes=cluster_nodes, timeout=request_timeout
            )
        self.url = None if url is None else redact(url)
        self._store = store
        self._address = advertise or ""
        self.lease = float(lease)
        self.check_every = float(check_every)
        self.lease_block = lease_block
        self.events_maxlen = events_maxlen
        self.request_timeout = float(request_timeout)
        self.node_id = _node_token()
        self.state = "joining"
        self._epoch = ""
        self._supervisor: Supervisor | None = None
        self._max = 0
        self._limit = -1
        # Slots held in the store (absolute, as the store last said) and spent locally.
        self._held_total = 0
        self._used_total = 0
        self._held_p: dict[str, int] = {}
        self._used_p: dict[str, int] = {}
        self._room_p: dict[str, int] = {}
        self._room = 0
        self._nodes_seen = 1
        self._dirty: set[str] = set()
        self._give_all_until = -math.inf
        self._queue: list[_Request] = []
        self._ledger_kick = trio.Event()
        self._lease_kick = trio.Event()
        self._freed = trio.Event()
        self._fence_at = -math.inf
        # Registry and event operations waiting for the store (flat RECORD arguments).
        self._ops: list[str] = []
        self._records_kick = trio.Event()
        self.dropped_events = 0
        self._dropped_logged = 0
        self._addresses: dict[str, str] = {}
        # Sessions activated here whose id names another node (or an earlier incarnation):
        # session id -> the incarnation whose registry holds them.
        self._hosted: dict[str, str] = {}
        self._durable: RedisSessionStore | None = None
        self.fenced_total = 0
        self.reaped_total = 0
        self._started = time.time()

    def __repr__(self) -> str:
        return f"<Cluster node {self.node_id} {self.state} {self.url or ''}>"

    # -- the core's hook (supervisor._cluster.ClusterHook) --------------------------------------

    def new_session_id(self) -> str:
        return f"{secrets.token_urlsafe(24)}.{self.node_id}"

    def _key(self, principal: str | None) -> str:
        return principal if principal is not None and self._limit >= 0 else ""

    def _unavailable(self) -> str:
        if self.state == "fenced":
            return "cluster: this node is fenced (its lease lapsed); it is joining again"
        if self.state == "joining":
            return "cluster: this node is joining the cluster"
        return "cluster: the cluster's store is not answering"

    def _serving(self) -> bool:
        return self.state == "ready" and trio.current_time() < self._fence_at

    def _spare(self, key: str | None) -> int:
        """Held slots not spent: the node's total (``key`` None) or a principal's."""
        if key is None:
            return self._held_total - self._used_total
        return self._held_p.get(key, 0) - self._used_p.get(key, 0)

    def _take(self, key: str, total: bool) -> bool:
        """Spend one held slot (total and/or the principal's) if both are there."""
        if (total and self._spare(None) < 1) or (key and self._spare(key) < 1):
            return False
        if total:
            self._used_total += 1
        if key:
            self._used_p[key] = self._used_p.get(key, 0) + 1
        return True

    def _untake(self, key: str, total: bool) -> None:
        """Give back what `_take` spent (it becomes a spare; the ledger may return it)."""
        if total:
            self._used_total -= 1
        if key:
            self._used_p[key] -= 1
        self._kick_ledger()

    def admit_nowait(self, principal: str | None) -> str | None:
        if not self._serving():
            return self._unavailable()
        if self._take(self._key(principal), True):
            return None
        self._kick_ledger()
        return (
            "cluster: this node holds no spare cluster slot (create_session_nowait spends "
            "only those; await create_session() takes one from the cluster)"
        )

    async def admit(self, principal: str | None, *, wait: bool) -> None:
        await self._acquire(self._key(principal), True, wait)

    def bind_nowait(self, principal: str) -> str | None:
        key = self._key(principal)
        if not key:
            return None
        if not self._serving():
            return self._unavailable()
        if self._take(key, False):
            return None
        self._kick_ledger()
        return (
            f"cluster: this node holds no spare slot for principal {principal!r} "
            "(await bind_principal() takes one from the cluster)"
        )

    async def bind(self, principal: str) -> None:
        key = self._key(principal)
        if key:
            await self._acquire(key, False, wait=False)

    def unbind(self, principal: str) -> None:
        key = self._key(principal)
        if key:
            self._untake(key, False)

    def release(self, principal: str | None) -> None:
        self._untake(self._key(principal), True)

    def event(
        self,
        kind: EventKind,
        session: Session,
        reason: str | None,
        old_state: SessionState | None,
        new_state: SessionState | None,
    ) -> None:
        at = f"{time.time():.3f}"
        sid = session.id
        if kind is EventKind.ACTIVATED:
            # Registered here, whichever node the id names (a durable session moves).
            node = self._hosted[sid] = self.node_id
        else:
            node = self._hosted.get(sid) or sid.rpartition(".")[2]
        if kind in (EventKind.CREATED, EventKind.AUTHENTICATED, EventKind.ACTIVATED):
            info = registry_info(
                session.principal, session.transport.value, session._created_wall, session.durable
            )
            tag = "a" if kind is EventKind.AUTHENTICATED else "c"
            op = (node, tag, sid, kind.value, info, "", at)
        elif kind.leaves:  # a terminal event, or PASSIVATED: the session leaves this node
            self._hosted.pop(sid, None)
            op = (node, "e", sid, kind.value, reason or "", "", at)
        else:
            if len(self._ops) >= _OP * MAX_PENDING:
                self.dropped_events += 1
                return
            old = "" if old_state is None else old_state.value
            new = "" if new_state is None else new_state.value
            op = (node, "x", sid, kind.value, old, new, at)
        self._ops.extend(op)
        self._records_kick.set()

    @asynccontextmanager
    async def attach(self, supervisor: Supervisor) -> AsyncIterator[None]:
        if self._supervisor is not None:
            raise ClusterError("a Cluster object serves one supervisor at a time")
        self._supervisor = supervisor
        config = supervisor.config
        self._max = config.max_sessions
        limit = config.max_sessions_per_principal
        self._limit = -1 if limit is None else limit
        try:
            async with self._store.open():
                try:
                    await self._join(first=True)
                except (StoreError, trio.TooSlowError) as exc:
                    raise ClusterUnavailable(f"cluster: cannot join: {exc}") from exc
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._run_lease, name="cluster lease")
                    nursery.start_soon(self._run_reaper, name="cluster reaper")
                    nursery.start_soon(self._run_ledger, name="cluster ledger")
                    nursery.start_soon(self._run_records, name="cluster records")
                    nursery.start_soon(self._run_hints, name="cluster hints")
                    try:
                        yield
                    finally:
                        with trio.CancelScope(shield=True) as leaving:
                            leaving.deadline = trio.current_time() + 2 * self.request_timeout + 1
                            await self._leave()
                        nursery.cancel_scope.cancel()
        finally:
            self._supervisor = None

    # -- the public surface --------------------------------------------------------------------

    def set_address(self, address: str) -> None:
        """Advertise ``address`` (``http://host:port``) to the peers from now on."""
        self._address = address.rstrip("/")
        self._lease_kick.set()  # publish it now, not at the next renewal

    @property
    def address(self) -> str:
        return self._address

    def owner_of(self, session_id: str) -> str | None:
        """The node a session id names (its part after the last ``.``), or None."""
        _, dot, node = session_id.rpartition(".")
        return node if dot and node else None

    def address_of(self, node: str) -> str | None:
        """The base URL of a live node, None when unknown or dead (refreshed every check)."""
        if node == self.node_id:
            return self._address or None
        return self._addresses.get(node)

    async def locate(self, node: str) -> str | None:
        """`address_of`, reading the store once when the node is not known yet."""
        known = self.address_of(node)
        if known is not None:
            return known
        try:
            with trio.fail_after(self.request_timeout):
                await self._refresh_nodes()
        except (StoreError, trio.TooSlowError):
            return None
        return self.address_of(node)

    async def view(self, events: int = 20) -> ClusterView:
        """The cluster as the store sees it now (one round trip)."""
        try:
            with trio.fail_after(self.request_timeout):
                _epoch, nodes, entries = await self._store.view(events)
        except (StoreError, trio.TooSlowError) as exc:
            raise ClusterUnavailable(f"cluster: the store is not answering: {exc}") from exc
        views = self._node_views(nodes)
        tail = tuple(reversed([_cluster_event(e) for e in entries]))
        return ClusterView(
            node=self.node_id,
            state=self.state,
            nodes=tuple(views),
            sessions=sum(n.sessions for n in views),
            max_sessions=self._max,
            held=sum(n.held for n in views),
            events=tail,
        )

    async def sessions(self, limit: int = 200) -> list[dict[str, object]]:
        """Sessions registered cluster-wide (at most ``limit``): id, node, principal..."""
        try:
            with trio.fail_after(self.request_timeout):
                rows = await self._store.sessions(limit)
        except (StoreError, trio.TooSlowError) as exc:
            raise ClusterUnavailable(f"cluster: the store is not answering: {exc}") from exc
        out: list[dict[str, object]] = []
        for node, sid, info in rows:
            described = _describe(info)
            out.append(
                {
                    "id": sid,
                    "node": node,
                    "principal": described.get("principal"),
                    "transport": described.get("transport"),
                    "created": described.get("created"),
                }
            )
        return out

    @asynccontextmanager
    async def events(
        self, group: str, consumer: str | None = None, *, claim_after: float = 30.0
    ) -> AsyncIterator[AsyncIterator[ClusterEvent]]:
        """Cluster-wide lifecycle events for a consumer group: at least once.

        Each consumer of a group gets its share of the stream; an entry is acknowledged when
        the consumer asks for the next one (or leaves the block), so one not acknowledged
        (the consumer died) is delivered again to a consumer of the group after
        ``claim_after`` seconds. A new group starts at the stream's end.
        """
        name = consumer or f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        unacked: list[str] = []
        try:
            with trio.fail_after(self.request_timeout):
                await self._store.ensure_group(group)
        except (StoreError, trio.TooSlowError) as exc:
            raise ClusterUnavailable(f"cluster: the store is not answering: {exc}") from exc

        async def iterate() -> AsyncIterator[ClusterEvent]:
            while True:
                if unacked:
                    await self._store.ack(group, unacked)
                    unacked.clear()
                # Blocks for half a round trip's timeout at most: the command must not time out.
                entries = await self._store.read_group(
                    group, name, 100, int(self.request_timeout * 500), int(claim_after * 1000)
                )
                for entry_id, fields in entries:
                    if unacked:
                        await self._store.ack(group, unacked)
                        unacked.clear()
                    unacked.append(entry_id)
                    yield _cluster_event([entry_id, fields])

        try:
            yield iterate()
        finally:
            if unacked:
                with trio.move_on_after(self.request_timeout) as cleanup:
                    cleanup.shield = True
                    with suppress(StoreError):
                        await self._store.ack(group, unacked)

    def forwarding(self, app: Any, *, path: str | None = "/mcp", **options: Any) -> Any:
        """``app`` (an ASGI app, normally `McpHttpApp`) behind forwarding to owners."""
        from ._forward import Forwarding

        return Forwarding(app, self, path=path, **options)

    # -- durable sessions ----------------------------------------------------------------------

    @property
    def store(self) -> RedisSessionStore:
        """The durable-session store on this cluster's Redis (one per `Cluster`):
        ``open_supervisor(cluster=cluster, store=cluster.store)``. Its owner token is this
        node's current incarnation id. Needs the cluster to run on a `RedisStore`."""
        if self._durable is None:
            if not isinstance(self._store, RedisStore):
                raise ClusterError("Cluster.store needs the cluster to run on a RedisStore")
            self._durable = RedisSessionStore(self)
        return self._durable

    def _durable_store(self) -> RedisSessionStore | None:
        """The cluster's durable store, if the attached supervisor uses it."""
        supervisor = self._supervisor
        durable = self._durable
        if supervisor is None or durable is None:
            return None
        return durable if getattr(supervisor, "store", None) is durable else None

    def is_live(self, session_id: str) -> bool:
        """True when the session runs on this node now (forwarding serves it here)."""
        supervisor = self._supervisor
        return supervisor is not None and session_id in supervisor

    async def durable_owner(self, session_id: str) -> str | Literal[Missing.MISSING] | None:
        """Who holds a durable session now (one read of the store): the owner's node id
        while its lease exists, None when it is passivated or its owner is dead, `MISSING`
        when there is no record or the supervisor does not use `store`.

        Raises:
            supervisor.StoreError: the store did not answer.
        """
        durable = self._durable_store()
        if durable is None:
            return MISSING
        return await durable.owner(session_id, time.time())

    async def activate(self, session_id: str) -> None:
        """Activate a durable session on this node (`Supervisor.activate`).

        Raises:
            whatever `Supervisor.activate` raises (SessionNotFound, ActiveElsewhere, ...).
        """
        supervisor = self._supervisor
        if supervisor is None or self._durable_store() is None:
            raise SessionNotFound("no durable store on this node")
        await supervisor.activate(session_id)

    @property
    def durable(self) -> bool:
        """True when the attached supervisor keeps durable sessions in `store`."""
        return self._durable_store() is not None

    def _owned(self, supervisor: Supervisor, node: str) -> list[Session]:
        """The supervisor's sessions registered under ``node``: created by it (the id names
        it) or activated by it; oldest first."""
        suffix = "." + node
        hosted = self._hosted
        return [
            s
            for s in supervisor.sessions()
            if hosted.get(s.id, "") == node or (s.id not in hosted and s.id.endswith(suffix))
        ]

    # -- joining, leaving, fencing -------------------------------------------------------------

    def _info(self) -> str:
        return json.dumps(
            {
                "address": self._address,
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "started": self._started,
            }
        )

    async def _join(self, *, first: bool = False) -> None:
        lease_ms = int(self.lease * 1000)
        start = trio.current_time()
        with trio.fail_after(self.request_timeout * 2):
            epoch, reset = await self._store.join(
                self.node_id, self._info(), lease_ms, self._epoch, lease_ms, self.events_maxlen
            )
        self._epoch = epoch
        self._fence_at = start + self.lease * 0.9
        if reset and not first:
            await self._reconcile()
        with trio.fail_after(self.request_timeout):
            await self._refresh_nodes()  # know the peers' addresses before serving
        self.state = "ready"
        logger.info("cluster: node %s joined %s", self.node_id, self.url or "the store")
        self._kick_ledger()

    async def _reconcile(self) -> None:
        """The store lost its data: claim what the live sessions use, register them again."""
        supervisor = self._supervisor
        assert supervisor is not None
        principals = [(p, n) for p, n in self._used_p.items() if n > 0]
        with trio.fail_after(self.request_timeout * 2):
            granted = await self._store.reconcile(
                self.node_id, self._epoch, self._max, self._limit, self._used_total, principals
            )
        if granted is None:
            raise StoreError("the registry changed again while reconciling")
        self._held_total = granted[0]
        self._held_p = {p: g for (p, _), g in zip(principals, granted[1:], strict=True)}
        # Register every live session again (no events: the old stream is gone).
        sessions = self._owned(supervisor, self.node_id)
        registered: list[str] = []
        for session in sessions:
            info = registry_info(
                session.principal, session.transport.value, session._created_wall, session.durable
            )
            registered.extend((self.node_id, "r", session.id, "created", info, "", ""))
        self._ops[:0] = registered
        self._records_kick.set()
        excess = self._used_total - self._held_total
        for session in reversed(sessions):  # newest first
            if excess <= 0:
                break
            if supervisor.close_session(session.id, reason="capacity-lost"):
                excess -= 1
        logger.warning(
            "cluster: the store lost its data; node %s registered %d sessions again",
            self.node_id,
            len(sessions),
        )

    async def _fence(self, why: str) -> None:
        """This node can no longer prove its slots are its own: close everything, rejoin."""
        if self.state == "fenced":
            return
        old = self.node_id
        self.state = "fenced"
        self.fenced_total += 1
        logger.warning("cluster: node %s fenced itself (%s); closing its sessions", old, why)
        # The new incarnation first: the durable store's writes and deletes are this node's
        # only while its id is the one holding the record, so the closing sessions' records
        # stay with the old (dead) incarnation, to be activated anywhere.
        self.node_id = _node_token()
        supervisor = self._supervisor
        if supervisor is not None:
            for session in self._owned(supervisor, old):
                if session.durable:  # it lives on: activated again here or elsewhere
                    supervisor.passivate_session(session.id, reason="fenced")
                else:
                    supervisor.close_session(session.id, reason="fenced")
        for request in self._queue:
            request.status = "unavailable"
            request.done.set()
        self._queue.clear()
        self._held_total = 0
        self._held_p.clear()
        self._dirty.clear()
        while True:
            try:
                with trio.fail_after(self.request_timeout * 2):
                    # Our old incarnation's leftovers (terminal events included), if nobody
                    # reaped them yet: exactly once, whoever gets there first.
                    await self._store.reap(old, self.events_maxlen, _TOMB_MS, "fenced", True)
                await self._join()
                return
            except (StoreError, trio.TooSlowError):
                await trio.sleep(self.lease / 3)

    async def _leave(self) -> None:
        try:
            await self._flush_records(final=True)
            with trio.fail_after(self.request_timeout):
                await self._store.reap(
                    self.node_id, self.events_maxlen, _TOMB_MS, "node-left", True
                )
            logger.info("cluster: node %s left", self.node_id)
        except (StoreError, trio.TooSlowError) as exc:
            logger.warning(
                "cluster: node %s could not leave cleanly (%s); its lease runs out",
                self.node_id,
                exc,
            )
        self.state = "left"

    # -- background tasks ----------------------------------------------------------------------

    async def _run_lease(self) -> None:
        period = self.lease / 3
        lease_ms = int(self.lease * 1000)
        described = self._address
        while True:
            wake = min(trio.current_time() + period, self._fence_at)
            with trio.move_on_at(wake):
                await self._lease_kick.wait()
            self._lease_kick = trio.Event()
            serving = self.state in ("ready", "unavailable")
            if serving and trio.current_time() >= self._fence_at:
                await self._fence("no lease renewal in time")
                continue
            start = trio.current_time()
            try:
                with trio.fail_after(self.request_timeout):
                    info = "" if described == self._address else self._info()
                    status = await self._store.renew(self.node_id, lease_ms, self._epoch, info)
                if status == "ok":
                    described = self._address
            except (StoreError, trio.TooSlowError) as exc:
                if self.state == "ready":
                    logger.warning("cluster: the store is not answering (%s)", exc)
                    self.state = "unavailable"
                continue
            if status == "ok":
                self._fence_at = start + self.lease * 0.9
                if self.state == "unavailable":
                    logger.info("cluster: the store answers again")
                    self.state = "ready"
            elif status == "reset":
                logger.warning("cluster: the store lost its data (restarted?); reconciling")
                self.state = "joining"
                try:
                    await self._join()  # reconciles: the epoch it saw is gone
                except (StoreError, trio.TooSlowError) as exc:
                    logger.warning("cluster: reconcile failed (%s); retrying", exc)
                    self.state = "unavailable"
            else:
                await self._fence(f"lease {status}")

    def _node_views(self, nodes: list[list[Any]]) -> list[NodeView]:
        """The store's rows of nodes as views, oldest first; refreshes the address cache."""
        views = []
        for node, info, pttl, held, sessions in nodes:
            described = _describe(info)
            views.append(
                NodeView(
                    id=str(node),
                    address=str(described.get("address", "")),
                    sessions=int(sessions),
                    held=int(held),
                    lease=None if int(pttl) < 0 else int(pttl) / 1000,
                    started=float(described.get("started", 0.0)),
                    this=node == self.node_id,
                )
            )
        views.sort(key=lambda n: n.started)
        self._addresses = {n.id: n.address for n in views if n.address}
        return views

    async def _refresh_nodes(self) -> list[NodeView]:
        _, nodes, _ = await self._store.view(0)
        return self._node_views(nodes)

    async def _run_reaper(self) -> None:
        while True:
            await trio.sleep(self.check_every)
            try:
                with trio.fail_after(self.request_timeout):
                    nodes = await self._refresh_nodes()
                for node in nodes:
                    if node.lease is None and not node.this:  # REAP checks the lease again
                        with trio.fail_after(self.request_timeout):
                            reaped = await self._store.reap(
                                node.id, self.events_maxlen, _TOMB_MS, "node-lost", False
                            )
                        if reaped >= 0:
                            self.reaped_total += 1
                            self._addresses.pop(node.id, None)
                            logger.warning(
                                "cluster: node %s is gone: reaped its %d sessions", node.id, reaped
                            )
            except (StoreError, trio.TooSlowError):
                continue  # the lease task reports the store's state

    def _kick_ledger(self) -> None:
        self._ledger_kick.set()

    async def _acquire(self, key: str, total: bool, wait: bool) -> None:
        while True:
            if not self._serving():
                raise ClusterUnavailable(self._unavailable())
            if self._take(key, total):
                await trio.lowlevel.checkpoint()
                return
            need_total = int(total and self._spare(None) < 1)
            need_p = int(bool(key) and self._spare(key) < 1)
            request = _Request(key, total, need_total, need_p)
            self._queue.append(request)
            self._kick_ledger()
            freed = self._freed
            try:
                await request.done.wait()
            except BaseException:
                if request.taken:  # granted as we were cancelled: it becomes a spare
                    self._untake(key, total)
                else:
                    request.status = "abandoned"
                raise
            status = request.status
            if status == "ok" and request.taken:
                return
            if status == "unavailable":
                raise ClusterUnavailable(self._unavailable())
            if status in ("full", "principal_full", "reconciling"):
                if not wait:
                    raise CapacityError(_refusal(status, self._max, self._limit, key))
                with trio.move_on_after(self.check_every):
                    await freed.wait()
            # "ok" but someone spent it first, or "retry": go round again

    def _give_amounts(self, now: float) -> tuple[int, list[tuple[str, int]]]:
        """Spare slots beyond what this node should keep (all of them while others want)."""
        giving_all = now < self._give_all_until
        keep = 0 if giving_all else min(self.lease_block, self._room // (2 * self._nodes_seen))
        total = max(0, self._spare(None) - max(0, keep))
        principals = []
        for key in self._held_p:
            room = self._room_p.get(key, 0)
            keep_p = 0 if giving_all else min(self.lease_block, room // (2 * self._nodes_seen))
            extra = self._spare(key) - max(0, keep_p)
            if extra > 0:
                principals.append((key, extra))
        return total, principals

    async def _run_ledger(self) -> None:
        while True:
            await self._ledger_kick.wait()
            self._ledger_kick = trio.Event()
            if self.state not in ("ready", "unavailable"):
                continue
            batch = [r for r in self._queue if r.status == "pending"]
            self._queue.clear()
            try:
                if batch or self._dirty:
                    await self._admit_batch(batch)
                total, principals = self._give_amounts(trio.current_time())
                if total or principals:
                    await self._give(total, principals)
            except (StoreError, trio.TooSlowError) as exc:
                logger.debug("cluster: ledger round trip failed: %s", exc)
                for request in batch:
                    if request.status == "pending":
                        request.status = "unavailable"
                        request.done.set()
                await trio.sleep(min(0.2, self.lease / 10))
                self._ledger_kick.set()

    async def _admit_batch(self, batch: list[_Request]) -> None:
        requests: list[tuple[str, int, int, int, int]] = []
        spare_asked: set[str] = set()
        for r in batch:  # spares are asked once per key and batch
            spare_t = self.lease_block if r.need_total and "" not in spare_asked else 0
            spare_p = self.lease_block if r.principal and r.principal not in spare_asked else 0
            if spare_t:
                spare_asked.add("")
            if r.principal:
                spare_asked.add(r.principal)
            requests.append((r.principal, r.need_total, r.need_principal, spare_t, spare_p))
        dirty = [p for p in self._dirty if p not in spare_asked]
        requests.extend((p, 0, 0, 0, 0) for p in dirty)
        try:
            with trio.fail_after(self.request_timeout):
                reply = await self._store.admit(
                    self.node_id, self._epoch, self._max, self._limit, requests
                )
        except BaseException:
            self._dirty.update(r.principal for r in batch if r.principal)
            raise
        self._dirty.difference_update(dirty)
        if reply.status != "ok":
            for r in batch:
                r.status = "unavailable"
                r.done.set()
            if reply.status == "reset":
                self._ledger_kick.set()  # the lease task reconciles; nothing is held
            return
        self._held_total = reply.held
        self._room = reply.room
        self._nodes_seen = max(1, reply.nodes)
        for (principal, *_), (_status, held_p, room_p) in zip(requests, reply.results, strict=True):
            if principal:
                self._held_p[principal] = held_p
                self._room_p[principal] = room_p
        for r, (status, _held, _room) in zip(batch, reply.results, strict=False):
            if r.status == "abandoned":
                continue
            if status == "ok":
                r.taken = self._take(r.principal, r.total)
                r.status = "ok" if r.taken else "retry"
            else:
                r.status = status
                self._give_all_until = -math.inf
            r.done.set()

    async def _give(self, total: int, principals: list[tuple[str, int]]) -> None:
        # Counted as given before the round trip, so nothing spends them meanwhile.
        self._held_total -= total
        for key, n in principals:
            self._held_p[key] -= n
        try:
            with trio.fail_after(self.request_timeout):
                after = await self._store.give(self.node_id, total, principals)
        except BaseException:
            self._dirty.update(key for key, _ in principals)
            raise
        self._held_total = after[0]
        for (key, _), held in zip(principals, after[1:], strict=True):
            if held:
                self._held_p[key] = held
            else:
                self._held_p.pop(key, None)
                self._room_p.pop(key, None)
                if not self._used_p.get(key):
                    self._used_p.pop(key, None)

    async def _run_hints(self) -> None:
        while True:
            try:
                async with self._store.hints() as hints:
                    async for hint in hints:
                        if hint == "want":
                            self._give_all_until = trio.current_time() + self.check_every
                            self._kick_ledger()
                        else:
                            freed, self._freed = self._freed, trio.Event()
                            freed.set()
            except StoreError:
                pass
            # The iteration ended (it can, silently, after the server restarts): re-enter.
            await trio.sleep(min(0.5, self.lease / 6))

    async def _run_records(self) -> None:
        while True:
            await self._records_kick.wait()
            self._records_kick = trio.Event()
            await trio.sleep(0.02)  # let a burst gather into one round trip
            try:
                await self._flush_records()
            except (StoreError, trio.TooSlowError):
                await trio.sleep(min(0.5, self.lease / 6))
                self._records_kick.set()

    async def _flush_records(self, *, final: bool = False) -> None:
        while self._ops:
            chunk = self._ops[: _OP * _CHUNK]
            by_node: dict[str, list[str]] = {}
            for i in range(0, len(chunk), _OP):
                by_node.setdefault(chunk[i], []).extend(chunk[i + 1 : i + _OP])
            if self.dropped_events > self._dropped_logged:
                dropped = self.dropped_events - self._dropped_logged
                self._dropped_logged = self.dropped_events
                logger.warning("cluster: dropped %d events while the store was away", dropped)
            with trio.fail_after(self.request_timeout):
                for node, ops in by_node.items():
                    await self._store.record(node, self.events_maxlen, ops)
            del self._ops[: len(chunk)]


def _refusal(status: str, max_sessions: int, limit: int, key: str) -> str:
    if status == "principal_full":
        return f"maximum sessions per principal ({limit}) reached cluster-wide for {key!r}"
    if status == "reconciling":
        return "cluster: the store restarted; nodes are registering their sessions again"
    return f"maximum sessions ({max_sessions}) reached cluster-wide"


def _describe(info: object) -> dict[str, Any]:
    try:
        value = json.loads(str(info))
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _cluster_event(entry: Any) -> ClusterEvent:
    entry_id, raw = entry
    if isinstance(raw, dict):
        fields = {str(k): str(v) for k, v in raw.items()}
    else:
        fields = {str(raw[i]): str(raw[i + 1]) for i in range(0, len(raw), 2)}
    try:
        at = float(fields.get("at", "0"))
    except ValueError:
        at = 0.0
    return ClusterEvent(
        id=str(entry_id),
        node=fields.get("node", ""),
        kind=fields.get("kind", ""),
        session_id=fields.get("session", ""),
        reason=fields.get("reason") or None,
        at=at,
        fields=fields,
    )
