"""The cluster's store: a small interface of our own, and its Redis/Valkey implementation.

`Cluster` speaks only `ClusterStore`: each method is one atomic step of the protocol (one Lua
script, see `supervisor.cluster._scripts`) or one read. `RedisStore` implements it with coredis
6 (anyio, so it runs under trio), on a single Redis or Valkey server or on Redis Cluster.
"""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import (
    AbstractAsyncContextManager,
    AsyncExitStack,
    asynccontextmanager,
    contextmanager,
    suppress,
)
from typing import Any, Protocol

import anyio
import attrs

from . import _scripts

__all__ = ["AdmitReply", "ClusterStore", "RedisStore", "StoreError", "redact"]

#: What the store raises when it cannot answer (connection refused, timeout, a script error).
StoreError = OSError


@attrs.frozen
class AdmitReply:
    """The answer to one `ClusterStore.admit` call.

    Attributes:
        status: ``ok``, ``reset`` (the registry was lost) or ``lapsed`` (this node's lease).
        results: per request (status, held for its principal, the principal's room left).
        held: slots this node holds now (absolute).
        room: slots free cluster-wide after this call.
        nodes: live nodes.
    """

    status: str
    results: tuple[tuple[str, int, int], ...] = ()
    held: int = 0
    room: int = 0
    nodes: int = 1


class ClusterStore(Protocol):
    """One atomic step of the cluster protocol per method; all raise `StoreError`."""

    def open(self) -> AbstractAsyncContextManager[None]:
        """Connected while the block runs."""
        ...

    async def join(
        self, node: str, info: str, lease_ms: int, seen: str, reconcile_ms: int, maxlen: int
    ) -> tuple[str, bool]: ...

    async def renew(self, node: str, lease_ms: int, epoch: str, info: str = "") -> str:
        """Renew the lease (and rewrite the node's description when ``info`` is given)."""
        ...

    async def admit(
        self,
        node: str,
        epoch: str,
        max_sessions: int,
        limit: int,
        requests: Sequence[tuple[str, int, int, int, int]],
    ) -> AdmitReply: ...

    async def give(self, node: str, total: int, principals: Sequence[tuple[str, int]]) -> list[int]:
        """Give back slots; returns the node's holdings after (total, then per principal)."""
        ...

    async def record(self, node: str, maxlen: int, ops: Sequence[str]) -> int: ...

    async def reap(self, node: str, maxlen: int, tomb_ms: int, reason: str, force: bool) -> int: ...

    async def reconcile(
        self,
        node: str,
        epoch: str,
        max_sessions: int,
        limit: int,
        total: int,
        principals: Sequence[tuple[str, int]],
    ) -> list[int] | None: ...

    async def view(self, events: int) -> tuple[str, list[list[Any]], list[Any]]: ...

    async def sessions(self, limit: int) -> list[tuple[str, str, str]]: ...

    def hints(self) -> AbstractAsyncContextManager[AsyncIterator[str]]:
        """Pub/sub hints (``want``/``freed``), at most once; the iterator may end: re-enter."""
        ...

    async def read_group(
        self, group: str, consumer: str, count: int, block_ms: int, claim_idle_ms: int
    ) -> list[tuple[str, dict[str, str]]]: ...

    async def ensure_group(self, group: str) -> None:
        """Create the consumer group at the stream's end unless it exists."""
        ...

    async def ack(self, group: str, ids: Sequence[str]) -> None: ...


def redact(url: str) -> str:
    """``url`` with its password (userinfo, or a ``password=`` query value) shown as ``***``,
    for banners and logs."""
    parts = urllib.parse.urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        user, colon, _password = userinfo.partition(":")
        netloc = f"{user}:***@{hostport}" if colon else f"***@{hostport}"
    query = "&".join(
        f"{key}=***" if key.lower() == "password" else item
        for item in parts.query.split("&")
        if item
        for key in (item.partition("=")[0],)
    )
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


#: URL schemes `RedisStore` accepts (valkey:// is spelled redis:// to coredis).
SCHEMES = ("redis", "rediss", "valkey", "valkeys")


def _store_url(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in SCHEMES:
        raise ValueError(
            f"cluster URL must start with one of {', '.join(s + '://' for s in SCHEMES)}: "
            f"{redact(url)!r}"
        )
    return {"valkey": "redis", "valkeys": "rediss"}.get(scheme, scheme) + "://" + rest


class RedisStore:
    """`ClusterStore` on Redis or Valkey (Redis 7 protocol), through coredis.

    Args:
        url: ``redis://[user:password@]host:port/db`` (also ``rediss://``, ``valkey://``,
            ``valkeys://``).
        prefix: the hash tag every key shares (one slot on Redis Cluster).
        cluster_nodes: connect to Redis Cluster through these ``(host, port)`` startup nodes
            instead (``url`` then gives only the scheme, credentials and options).
        timeout: seconds any one command may take (connect included).
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "tss",
        cluster_nodes: Sequence[tuple[str, int]] | None = None,
        timeout: float = 1.0,
    ) -> None:
        if not prefix or any(c in prefix for c in "{}"):
            raise ValueError(f"prefix must be a non-empty name without braces: {prefix!r}")
        self.url = _store_url(url)
        self.prefix = "{" + prefix + "}"
        self._cluster_nodes = None if cluster_nodes is None else list(cluster_nodes)
        self._timeout = timeout
        self._client: Any = None
        self._scripts: dict[str, Any] = {}
        self._route = [f"{self.prefix}:epoch"]  # one declared key routes every script

    @asynccontextmanager
    async def open(self) -> AsyncIterator[None]:
        import coredis

        options: dict[str, Any] = {
            "decode_responses": True,
            "stream_timeout": self._timeout,
            "connect_timeout": self._timeout,
        }
        client: Any
        if self._cluster_nodes is not None:
            nodes: Any = [{"host": h, "port": p} for h, p in self._cluster_nodes]
            client = coredis.RedisCluster(startup_nodes=nodes, **options)
        else:
            client = coredis.Redis.from_url(self.url, **options)
        async with AsyncExitStack() as stack:
            try:
                await stack.enter_async_context(client)
            except Exception as exc:
                raise StoreError(f"cluster store: cannot connect: {exc}") from exc
            self._client = client
            self._scripts = {
                name: client.register_script(getattr(_scripts, name)) for name in _scripts.__all__
            }
            try:
                yield
            finally:
                self._client = None

    def _connected(self) -> Any:
        if self._client is None:
            raise StoreError("cluster store: not connected")
        return self._client

    async def _run(self, name: str, args: Sequence[Any]) -> Any:
        self._connected()
        with _errors():
            return await self._scripts[name](keys=self._route, args=[self.prefix, *args])

    async def join(
        self, node: str, info: str, lease_ms: int, seen: str, reconcile_ms: int, maxlen: int
    ) -> tuple[str, bool]:
        epoch, reset = await self._run("JOIN", [node, info, lease_ms, seen, reconcile_ms, maxlen])
        return str(epoch), bool(int(reset))

    async def renew(self, node: str, lease_ms: int, epoch: str, info: str = "") -> str:
        return str(await self._run("RENEW", [node, lease_ms, epoch, info]))

    async def admit(
        self,
        node: str,
        epoch: str,
        max_sessions: int,
        limit: int,
        requests: Sequence[tuple[str, int, int, int, int]],
    ) -> AdmitReply:
        args: list[Any] = [node, epoch, max_sessions, limit, len(requests)]
        for request in requests:
            args.extend(request)
        reply = await self._run("ADMIT", args)
        if reply[0] != "ok":
            return AdmitReply(str(reply[0]))
        results = tuple(
            (str(reply[i]), int(reply[i + 1]), int(reply[i + 2]))
            for i in range(1, 1 + 3 * len(requests), 3)
        )
        held, room, nodes = (int(v) for v in reply[-3:])
        return AdmitReply("ok", results, held, room, nodes)

    async def give(self, node: str, total: int, principals: Sequence[tuple[str, int]]) -> list[int]:
        args: list[Any] = [node, total]
        for principal, n in principals:
            args.extend((principal, n))
        return [int(v) for v in await self._run("GIVE", args)]

    async def record(self, node: str, maxlen: int, ops: Sequence[str]) -> int:
        return int(await self._run("RECORD", [node, maxlen, *ops]))

    async def reap(self, node: str, maxlen: int, tomb_ms: int, reason: str, force: bool) -> int:
        return int(await self._run("REAP", [node, maxlen, tomb_ms, reason, "1" if force else "0"]))

    async def reconcile(
        self,
        node: str,
        epoch: str,
        max_sessions: int,
        limit: int,
        total: int,
        principals: Sequence[tuple[str, int]],
    ) -> list[int] | None:
        args: list[Any] = [node, epoch, max_sessions, limit, total]
        for principal, n in principals:
            args.extend((principal, n))
        reply = await self._run("RECONCILE", args)
        if reply and reply[0] == "reset":
            return None
        return [int(v) for v in reply]

    async def view(self, events: int) -> tuple[str, list[list[Any]], list[Any]]:
        epoch, nodes, entries = await self._run("VIEW", [events])
        return str(epoch), list(nodes), list(entries)

    async def sessions(self, limit: int) -> list[tuple[str, str, str]]:
        flat = await self._run("SESSIONS", [limit])
        return [(flat[i], flat[i + 1], flat[i + 2]) for i in range(0, len(flat), 3)]

    @asynccontextmanager
    async def hints(self) -> AsyncIterator[AsyncIterator[str]]:
        client = self._connected()
        channels = [f"{self.prefix}:want", f"{self.prefix}:freed"]
        try:
            with _errors():
                async with client.pubsub(
                    channels=channels, ignore_subscribe_messages=True
                ) as pubsub:

                    async def messages() -> AsyncIterator[str]:
                        async for message in pubsub:
                            if message and message.get("type") == "message":
                                yield str(message["channel"]).rpartition(":")[2]

                    yield messages()
        except* (anyio.ClosedResourceError, anyio.BrokenResourceError):
            # coredis's pub/sub tasks meet the closed connection when a cancellation tears
            # them down; what else the group holds (the Cancelled) goes on up.
            pass

    async def read_group(
        self, group: str, consumer: str, count: int, block_ms: int, claim_idle_ms: int
    ) -> list[tuple[str, dict[str, str]]]:
        client = self._connected()
        key = f"{self.prefix}:events"
        with _errors():
            # A dead consumer's pending entries first (at least once), then new ones.
            claimed = await client.xautoclaim(key, group, consumer, claim_idle_ms, "0-0", count)
            entries = list(claimed[1]) if claimed else []
            if not entries:
                reply = await client.xreadgroup(
                    group, consumer, {key: ">"}, count=count, block=block_ms
                )
                if reply:
                    entries = list(next(iter(reply.values())))
        return [
            (str(e.identifier), {str(k): str(v) for k, v in e.field_values.items()})
            for e in entries
        ]

    async def ensure_group(self, group: str) -> None:
        client = self._connected()
        from coredis.exceptions import StreamDuplicateConsumerGroupError

        with _errors(), suppress(StreamDuplicateConsumerGroupError):  # exists: consumers share it
            await client.xgroup_create(
                f"{self.prefix}:events", group, identifier="$", mkstream=True
            )

    async def ack(self, group: str, ids: Sequence[str]) -> None:
        if not ids or self._client is None:
            return
        with _errors():
            await self._client.xack(f"{self.prefix}:events", group, list(ids))


@contextmanager
def _errors() -> Iterator[None]:
    """Any failure of the client as a `StoreError`, the one exception `Cluster` handles."""
    try:
        yield
    except StoreError:
        raise
    except Exception as exc:
        raise StoreError(f"cluster store: {type(exc).__name__}: {exc}") from exc


def registry_info(
    principal: str | None, transport: str, created: float, durable: bool = False
) -> str:
    """The JSON a session is registered with (``durable``: its node's death does not end it,
    so the reaper records it as passivated, not failed)."""
    info: dict[str, object] = {"principal": principal, "transport": transport, "created": created}
    if durable:
        info["durable"] = True
    return json.dumps(info)
