"""`RedisSessionStore`: durable sessions in the cluster's Redis/Valkey (`Cluster.store`).

The store speaks through the cluster's own coredis connection (no second pool) and uses the
cluster's node ids as owner tokens: `RedisSessionStore.node` is the node's *current*
incarnation, so after the node fenced itself (its lease lapsed) every write of an activation
it held before is refused, and the record can be activated on any node once the old
incarnation's lease is gone. Every method is one Lua script (`._durable_scripts`), atomic in
Redis; the keys share the cluster's hash tag, so it runs on Redis Cluster too.

Beyond `supervisor.SessionStore`: `RedisSessionStore.owner` (who holds a session now, one
read), which forwarding uses to send a request to a durable session's current owner.
"""

from __future__ import annotations

import enum
import json
import math
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import TYPE_CHECKING, Any, Final, Literal, final

import trio

from .._durable import ActiveElsewhere, DurableRecord, StoreError, Superseded
from .._exceptions import SessionNotFound, SupervisorError
from .._ids import short_id
from . import _durable_scripts
from ._store import RedisStore

if TYPE_CHECKING:
    from ._node import Cluster

__all__ = ["MISSING", "Missing", "RedisSessionStore"]

#: How long (ms) a session that ended for good, or expired, leaves a tombstone: longer than
#: any write of a stale activation can take to arrive (a node writes only while its lease is
#: surely valid, and every command times out within the cluster's request timeout).
TOMB_MS: Final = 5 * 60 * 1000

#: Expired records turned into tombstones per `PURGE` call (Redis runs one script at a time).
_PURGE_BATCH: Final = 500

#: Seconds before `PURGE` looks again at an expired record whose owner is alive.
_RECHECK: Final = 300


class Missing(enum.Enum):
    """`RedisSessionStore.owner`'s answer for a session the store has no record of."""

    MISSING = "missing"


#: No record (never saved, ended for good, or expired).
MISSING: Final = Missing.MISSING


def _dumps(value: Any, what: str) -> str:
    """Strict JSON text of ``value``; `TypeError` (never a store error) when there is none."""
    try:
        return json.dumps(value, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:  # ValueError: NaN/inf, a cycle
        raise TypeError(f"the session's {what} is not JSON-serializable: {exc}") from exc


def _number(value: float) -> str:
    """A wall-clock time as Redis and Lua both read it (no ``inf``: Lua's tonumber cannot)."""
    if math.isnan(value):
        raise ValueError("a time cannot be NaN")
    if math.isinf(value):
        return "1e308" if value > 0 else "-1e308"
    return repr(float(value))


def _data(record: DurableRecord) -> str:
    """What the scripts keep as opaque JSON: every field but epoch, owner and expires."""
    handshake = None if record.handshake is None else dict(record.handshake)
    return _dumps(
        {
            "actor": record.actor,
            "state": record.state,
            "transport": record.transport,
            "principal": record.principal,
            "metadata": dict(record.metadata),
            "handshake": handshake,
            "created": record.created,
        },
        "state or metadata",
    )


@final
class RedisSessionStore:
    """The `supervisor.SessionStore` of a `Cluster`, on its Redis or Valkey: `Cluster.store`.

    Hand it to the supervisor with the cluster:
    ``open_supervisor(cluster=cluster, store=cluster.store)``. It is usable while the cluster
    is attached (`open` refuses otherwise) and writes only while the node's lease is surely
    valid. Records live in ``{prefix}:durable:<id>`` hashes; passivated ones are indexed by
    expiry in ``{prefix}:durable-expiry``, so `purge` reads only what has expired.

    Raises (every method): `StoreError` when Redis fails or cannot be reached within the
    cluster's ``request_timeout``, or when this node cannot vouch for its lease right now.
    """

    def __init__(self, cluster: Cluster) -> None:
        self._cluster = cluster
        self._scripts: dict[str, Any] = {}
        self._client: Any = None

    def __repr__(self) -> str:
        return f"<RedisSessionStore of {self._cluster!r}>"

    @property
    def node(self) -> str:
        """This node's current incarnation id (a new one after the node fenced itself)."""
        return self._cluster.node_id

    def _redis(self) -> RedisStore:
        store = self._cluster._store
        if not isinstance(store, RedisStore):
            raise StoreError("durable store: the cluster does not run on a RedisStore")
        return store

    @asynccontextmanager
    async def open(self) -> AsyncIterator[None]:
        """Usable while the block runs; the cluster must be attached (joined) already.

        Raises:
            StoreError: the cluster is not attached, or its store is not connected.
        """
        redis = self._redis()
        client = redis._client
        if self._cluster._supervisor is None or client is None:
            raise StoreError(
                "durable store: the cluster is not attached (open the supervisor with "
                "cluster=... and store=cluster.store)"
            )
        if self._client is not client:
            self._scripts = {
                name: client.register_script(getattr(_durable_scripts, name))
                for name in _durable_scripts.__all__
            }
            self._client = client
        yield

    def _key(self, session_id: str) -> str:
        return f"{self._redis().prefix}:durable:{session_id}"

    def _expiry(self) -> str:
        return f"{self._redis().prefix}:durable-expiry"

    def _vouch(self) -> str:
        """This node's id, if its lease is surely still valid; else `StoreError`."""
        cluster = self._cluster
        if cluster.state not in ("ready", "unavailable") or (
            trio.current_time() >= cluster._fence_at
        ):
            raise StoreError(
                f"durable store: node {cluster.node_id} cannot vouch for its lease now "
                f"({cluster.state})"
            )
        return cluster.node_id

    async def _run(self, name: str, keys: list[str], args: list[Any]) -> Any:
        redis = self._redis()
        if redis._client is None or self._client is not redis._client:
            raise StoreError("durable store: not open (the cluster is not attached)")
        script = self._scripts[name]
        with _errors(), trio.fail_after(2 * self._cluster.request_timeout):
            return await script(keys=keys, args=[redis.prefix, *args])

    async def save(self, record: DurableRecord) -> None:
        """Write ``record`` as this node's activation (see `supervisor.SessionStore.save`).

        Raises:
            TypeError: the state, metadata or handshake is not JSON (nothing is written).
            Superseded: the record is at another epoch or owned by another activation (this
                node fenced itself since, or another node activated it), or it is gone.
            StoreError: Redis failed, or this node's lease may have lapsed.
        """
        expires = "" if record.expires is None else _number(record.expires)
        await self._write(record, expires, "")

    async def passivate(self, record: DurableRecord, expires: float) -> None:
        """Keep ``record`` without an owner until ``expires`` (wall clock); as `save`."""
        await self._write(record, _number(expires), "1")

    async def _write(self, record: DurableRecord, expires: str, passivate: str) -> None:
        data = _data(record)
        node = self._vouch()
        sid = record.id
        reply = await self._run(
            "SAVE",
            [self._key(sid), self._expiry()],
            [sid, str(record.epoch), node, data, expires, passivate],
        )
        status = str(reply[0])
        if status == "ok":
            return
        if status == "gone":
            raise Superseded(f"durable session {short_id(sid)} is gone (ended or expired)")
        stored_epoch, stored_owner = str(reply[1]), str(reply[2])
        whose = "this node's" if stored_owner == node else "another activation's"
        raise Superseded(
            f"durable session {short_id(sid)} is at epoch {stored_epoch} ({whose}); "
            f"this write is for epoch {record.epoch}"
        )

    async def activate(self, session_id: str, now: float) -> DurableRecord:
        """Move the record to the next epoch, owned by this node, and return it.

        Raises:
            SessionNotFound: no record (never saved, ended for good), or it was passivated
                and expired before ``now`` (it is forgotten).
            ActiveElsewhere: another node owns it and that node's lease exists.
            StoreError: Redis failed, or this node's lease may have lapsed.
        """
        node = self._vouch()
        reply = await self._run(
            "ACTIVATE",
            [self._key(session_id), self._expiry()],
            [session_id, node, _number(now), TOMB_MS],
        )
        status = str(reply[0])
        if status == "missing":
            raise SessionNotFound(f"no durable session {short_id(session_id)} in the store")
        if status == "elsewhere":
            owner = str(reply[1])
            raise ActiveElsewhere(
                f"durable session {short_id(session_id)} is active on node {owner}", owner
            )
        epoch, data, expires = int(reply[1]), json.loads(str(reply[2])), str(reply[3])
        handshake = data.get("handshake")
        return DurableRecord(
            id=session_id,
            actor=str(data["actor"]),
            epoch=epoch,
            owner=node,
            state=data.get("state"),
            transport=str(data.get("transport", "in-process")),
            principal=data.get("principal"),
            metadata=dict(data.get("metadata") or {}),
            handshake=None if handshake is None else dict(handshake),
            created=float(data.get("created", 0.0)),
            expires=float(expires) if expires else None,
        )

    async def delete(self, session_id: str, epoch: int) -> bool:
        """Forget the record if it is at ``epoch`` and owned by this node (its current
        incarnation) or by none (passivated); else do nothing. Returns whether it did.

        A forgotten record leaves a tombstone for `TOMB_MS`: a stale activation's save
        (even at epoch 1) is refused, and the id is not found.
        """
        deleted = await self._run(
            "DELETE",
            [self._key(session_id), self._expiry()],
            [session_id, str(epoch), self.node, TOMB_MS],
        )
        return bool(int(deleted))

    async def purge(self, now: float) -> int:
        """Forget the records whose ``expires`` is before ``now`` and that no live node owns
        (passivated, or left behind by a dead node); how many.

        Reads only the expired entries of the expiry index, a batch per script call.
        """
        total = 0
        at = _number(now)
        while True:
            purged, seen = await self._run(
                "PURGE", [self._expiry()], [at, _PURGE_BATCH, TOMB_MS, _RECHECK]
            )
            total += int(purged)
            if int(seen) < _PURGE_BATCH:
                return total

    async def owner(self, session_id: str, now: float) -> str | Literal[Missing.MISSING] | None:
        """Who holds the session's current activation, in one read.

        Returns:
            the owner's node id while its lease exists; None when the session is passivated
            or its owner is dead (it may be activated here); `MISSING` when there is no
            record (never saved, ended for good, or expired by ``now``).
        """
        reply = await self._run("OWNER", [self._key(session_id)], [session_id, _number(now)])
        status = str(reply[0])
        if status == "missing":
            return MISSING
        if status == "live":
            return str(reply[1])
        return None


@contextmanager
def _errors() -> Iterator[None]:
    """Any failure of the client (or a round trip past its time) as a `StoreError`."""
    try:
        yield
    except SupervisorError:
        raise
    except trio.TooSlowError as exc:
        raise StoreError("durable store: Redis did not answer in time") from exc
    except Exception as exc:
        raise StoreError(f"durable store: {type(exc).__name__}: {exc}") from exc
