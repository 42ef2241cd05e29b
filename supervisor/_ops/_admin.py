"""The admin endpoint: an ASGI app on its own bind address, for operators and ``top``.

Routes (GET only):

``/metrics``
    Prometheus text exposition (when metrics are on).
``/sessions``
    One JSON snapshot: counters and the newest live sessions (``?limit=N``, default 200).
    With ``?scope=cluster`` (cluster mode): the sessions of every node, each with its node
    (``Cluster.sessions``; 404 when this node is not in a cluster).
``/cluster``
    Cluster mode: the cluster as this node sees it (`supervisor.cluster.ClusterView` as JSON:
    this node's id and state, live nodes with their sessions, held slots and lease left, and the
    newest cluster events, ``?events=N``, default 20). 404 when the node is not in a cluster,
    503 with the error when the cluster's store does not answer (within `CLUSTER_TIMEOUT`).
``/events``
    Newline-delimited JSON: a snapshot, then lifecycle events as they happen, a fresh snapshot
    shortly after each burst and a heartbeat snapshot every few seconds; the stream ends after
    the supervisor has shut down. This is what ``python -m supervisor top`` reads.

Session ids appear truncated to 8 characters, never in full (cluster events and cluster-wide
sessions included). Bound to loopback (the default)
the endpoint needs no token but refuses a Host header that is not a loopback name (DNS
rebinding); bound elsewhere it needs a bearer token, and `serve_admin` refuses to start without
one.
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Awaitable, Callable
from functools import partial
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import parse_qs

import trio

from ._auth import is_loopback
from ._feed import (
    CLUSTER_TIMEOUT,
    ClusterSource,
    EventHistory,
    Frame,
    cluster_frame,
    cluster_sessions_frame,
    read_cluster,
    run_feed,
    snapshot_frame,
)

if TYPE_CHECKING:
    from .. import Supervisor

    # Types only: prometheus-client (the [metrics] extra) is optional, the endpoint is not.
    from ._metrics import OperatorMetrics, Receive, Scope, Send

__all__ = ["CLUSTER_TIMEOUT", "AdminApp", "is_loopback", "serve_admin"]

logger = logging.getLogger("supervisor.admin")

_INDEX = b"""trio-session-supervisor admin endpoint
  /metrics   Prometheus metrics
  /sessions  JSON snapshot: counters and live sessions (ids truncated)
             ?scope=cluster: sessions of every node of the cluster
  /events    newline-delimited JSON stream: snapshot, then lifecycle events
  /cluster   JSON: this node, the cluster's nodes, sessions, slots and events (cluster mode)
Live view: python -m supervisor top --url http://HOST:PORT
"""


def _host_is_loopback(header: str) -> bool:
    if header.startswith("["):
        name = header[1:].partition("]")[0]
    else:
        name = header.rpartition(":")[0] if header.count(":") == 1 else header
    return is_loopback(name)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return bytes(value).decode("latin-1")
    return None


async def _respond(
    send: Send,
    status: int,
    body: bytes,
    content_type: str = "text/plain; charset=utf-8",
    headers: tuple[tuple[bytes, bytes], ...] = (),
) -> None:
    raw = [
        (b"content-type", content_type.encode()),
        (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-store"),
        *headers,
    ]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body, "more_body": False})


def _ndjson(frames: list[Frame]) -> bytes:
    return b"".join(json.dumps(frame, separators=(",", ":")).encode() + b"\n" for frame in frames)


class AdminApp:
    """ASGI app serving ``/metrics``, ``/sessions`` and ``/events`` for one supervisor.

    Args:
        supervisor: the supervisor to describe.
        metrics: the metrics to expose on ``/metrics`` (``None``: 404 there).
        token: when set, every request needs ``Authorization: Bearer <token>``; when not, the
            Host header (if any) must name a loopback address.
        limit: most sessions listed in a snapshot.
        coalesce: seconds between an event and the snapshot that follows it on ``/events``.
        heartbeat: seconds between snapshots on ``/events`` while nothing happens.
        cluster: the node's `supervisor.cluster.Cluster` in cluster mode (``None``: ``/cluster``
            and ``/sessions?scope=cluster`` answer 404).
    """

    def __init__(
        self,
        supervisor: Supervisor,
        metrics: OperatorMetrics | None = None,
        *,
        token: str | None = None,
        limit: int = 200,
        coalesce: float = 0.1,
        heartbeat: float = 2.0,
        cluster: ClusterSource | None = None,
    ) -> None:
        self.supervisor = supervisor
        self.cluster = cluster
        self.metrics = metrics
        self.token = token
        self.limit = limit
        self.coalesce = coalesce
        self.heartbeat = heartbeat
        #: Recent events for viewers that connect late; fed while `run_history` runs.
        self.history = EventHistory()

    async def run_history(self) -> None:
        """Keep `history` up to date until the supervisor has shut down."""
        await self.history.run(self.supervisor)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        if not self._allowed(scope):
            await _respond(
                send,
                401 if self.token else 403,
                b"Unauthorized\n" if self.token else b"Forbidden: Host is not loopback\n",
                headers=((b"www-authenticate", b"Bearer"),) if self.token else (),
            )
            return
        if scope.get("method") not in ("GET", "HEAD"):
            await _respond(send, 405, b"Method Not Allowed\n", headers=((b"allow", b"GET"),))
            return
        path = str(scope.get("path", "/")).rstrip("/") or "/"
        query = parse_qs(bytes(scope.get("query_string", b"")).decode("latin-1"))
        limit = self.limit
        if "limit" in query and query["limit"][0].isascii() and query["limit"][0].isdigit():
            limit = min(int(query["limit"][0]), 10_000)
        if path == "/":
            await _respond(send, 200, _INDEX)
        elif path == "/metrics" and self.metrics is not None:
            from ._metrics import CONTENT_TYPE

            await self.metrics.refresh()
            await _respond(send, 200, self.metrics.exposition(), CONTENT_TYPE)
        elif path == "/cluster":
            events = 20
            if "events" in query and query["events"][0].isascii() and query["events"][0].isdigit():
                events = min(int(query["events"][0]), 1000)
            await self._cluster(send, lambda cluster: self._cluster_view(cluster, events))
        elif path == "/sessions" and query.get("scope", ["local"])[0] == "cluster":
            await self._cluster(send, lambda cluster: self._cluster_sessions(cluster, limit))
        elif path == "/sessions" and query.get("scope", ["local"])[0] != "local":
            await _respond(send, 400, b"Bad Request: scope is local (the default) or cluster\n")
        elif path == "/sessions":
            body = json.dumps(snapshot_frame(self.supervisor, limit=limit), indent=1).encode()
            await _respond(send, 200, body + b"\n", "application/json")
        elif path == "/events":
            await self._events(receive, send, limit)
        else:
            await _respond(send, 404, b"Not Found\n")

    async def _cluster(self, send: Send, read: Callable[[ClusterSource], Awaitable[Frame]]) -> None:
        """Answer with what ``read`` gets from the cluster: 404 unclustered, 503 unreachable."""
        if self.cluster is None:
            await _respond(send, 404, b"Not Found: this node is not in a cluster (no --cluster)\n")
            return
        frame, error = await read_cluster(partial(read, self.cluster))
        if frame is None:
            state = f"node {self.cluster.node_id} is {self.cluster.state}"
            body = f"Service Unavailable ({state}): {error}".replace("\n", " ")
            await _respond(send, 503, body.encode() + b"\n")
            return
        await _respond(send, 200, json.dumps(frame, indent=1).encode() + b"\n", "application/json")

    @staticmethod
    async def _cluster_view(cluster: ClusterSource, events: int) -> Frame:
        return cluster_frame(await cluster.view(events=events))

    @staticmethod
    async def _cluster_sessions(cluster: ClusterSource, limit: int) -> Frame:
        return cluster_sessions_frame(cluster.node_id, await cluster.sessions(limit=limit))

    def _allowed(self, scope: Scope) -> bool:
        if self.token is not None:
            authorization = _header(scope, b"authorization") or ""
            scheme, _, given = authorization.partition(" ")
            return scheme.lower() == "bearer" and hmac.compare_digest(
                given.strip().encode(), self.token.encode()
            )
        host = _header(scope, b"host")
        return host is None or _host_is_loopback(host)

    async def _events(self, receive: Receive, send: Send, limit: int) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"application/x-ndjson"),
                    (b"cache-control", b"no-store"),
                ],
            }
        )

        async def emit(frames: list[Frame]) -> None:
            await send({"type": "http.response.body", "body": _ndjson(frames), "more_body": True})

        async with trio.open_nursery() as nursery:

            async def until_disconnect() -> None:
                while (await receive())["type"] != "http.disconnect":
                    pass
                nursery.cancel_scope.cancel()

            nursery.start_soon(until_disconnect)
            await run_feed(
                self.supervisor,
                emit,
                limit=limit,
                coalesce=self.coalesce,
                heartbeat=self.heartbeat,
                history=self.history,
            )
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            nursery.cancel_scope.cancel()


async def serve_asgi(
    app: Callable[[Scope, Receive, Send], Awaitable[None]],
    *,
    host: str,
    port: int,
    shutdown_trigger: Callable[[], Awaitable[None]] | None = None,
    graceful_timeout: float = 1.0,
    errorlog: logging.Logger = logger,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve an ASGI app with hypercorn's trio worker; ``task_status.started(base_url)``."""
    from hypercorn.config import Config
    from hypercorn.trio import serve

    config = Config()
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.accesslog = None
    config.errorlog = errorlog
    config.graceful_timeout = graceful_timeout
    async with trio.open_nursery() as nursery:
        binds: list[str] = await nursery.start(
            partial(serve, cast(Any, app), config, shutdown_trigger=shutdown_trigger)
        )
        task_status.started(binds[0])


async def serve_admin(
    supervisor: Supervisor,
    metrics: OperatorMetrics | None,
    *,
    host: str = "127.0.0.1",
    port: int = 8001,
    token: str | None = None,
    shutdown_trigger: Callable[[], Awaitable[None]] | None = None,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
    **options: Any,
) -> None:
    """Serve `AdminApp` on ``host:port``; ``task_status.started(base_url)``.

    Raises:
        ValueError: ``host`` is not loopback and no ``token`` was given.
    """
    if token is None and not is_loopback(host):
        raise ValueError(
            f"the admin endpoint on {host} (not loopback) needs a token: "
            "pass --admin-token or set SUPERVISOR_ADMIN_TOKEN"
        )
    app = AdminApp(supervisor, metrics, token=token, **options)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(app.run_history)
        await serve_asgi(
            app, host=host, port=port, shutdown_trigger=shutdown_trigger, task_status=task_status
        )
        nursery.cancel_scope.cancel()
