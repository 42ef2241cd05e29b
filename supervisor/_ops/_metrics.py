"""Prometheus metrics (prometheus-client) for a supervisor and its MCP HTTP front end.

Counters and gauges come from `Supervisor.statistics` (O(1)) at scrape time, so they are exact
and cost nothing between scrapes; live sessions by kind (state handles or not) take one pass
over the live sessions per scrape. Lifecycle events feed what statistics do not keep: sessions
ended by kind and reason, durable sessions passivated by reason, and a histogram of session
durations. Durable sessions (a supervisor with a store): ``supervisor_sessions_passivated``,
``_activated`` and ``_restarted`` (counters) and ``supervisor_sessions_retained`` (gauge) come
from the statistics; a passivated session leaves ``supervisor_sessions_live`` (its slot is
free) and an activated one counts there again. `TimedApp` wraps an ASGI app to
time MCP requests (POST and DELETE; a GET is a long-lived event stream, not a call) and count
them by protocol era (the ``MCP-Protocol-Version`` header) and whether they name a state handle.

In cluster mode (``OperatorMetrics(..., cluster=...)``) the ``supervisor_cluster_*`` gauges
describe the whole cluster: `OperatorMetrics.refresh` (the admin endpoint calls it before each
scrape) reads one `supervisor.cluster.ClusterView` (one round trip to the store, bounded by
`CLUSTER_TIMEOUT`). ``supervisor_cluster_state{state=...}`` (1 for this node's state, 0 for the
others) and ``supervisor_cluster_store_up`` are always there; when the store does not answer,
``supervisor_cluster_store_up`` is 0 and the gauges read from the view (``nodes``,
``sessions``, ``sessions_per_node``, ``slots_held``, ``max_sessions``) are *omitted* from that
scrape, never stale.

Every `OperatorMetrics` has its own `CollectorRegistry`, so several supervisors (or tests) in
one process do not collide.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from functools import partial
from typing import TYPE_CHECKING, Any, TypeAlias

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .. import EventKind, Lagged, SessionState, Transport
from ._feed import CLUSTER_TIMEOUT, HANDSHAKE_ERA, ClusterSource, is_state_handle, read_cluster

if TYPE_CHECKING:
    from .. import Supervisor
    from ..cluster._view import ClusterView

__all__ = [
    "CLUSTER_STATES",
    "CLUSTER_TIMEOUT",
    "CONTENT_TYPE",
    "ClusterCollector",
    "KNOWN_REASONS",
    "MODERN_ERAS",
    "PASSIVATION_REASONS",
    "OperatorMetrics",
    "SupervisorCollector",
    "TimedApp",
    "request_era",
]

#: Content type of the text exposition format.
CONTENT_TYPE: str = CONTENT_TYPE_LATEST

#: The states of a cluster node, each a ``supervisor_cluster_state`` series.
CLUSTER_STATES = ("joining", "ready", "unavailable", "fenced")

#: Reasons kept as label values; any other (free-form `close_session` reasons) counts as "other",
#: so a caller cannot blow up the number of series.
KNOWN_REASONS = frozenset(
    {
        "closed",
        "idle-timeout",
        "init-timeout",
        "max-lifetime",
        "shutdown",
        "actor-returned",
        "actor-error",
        "task-error",
        "cancelled",
        "client-delete",
        "init-failed",
        "client-disconnected",
        "closed-by-client",  # a state handle ended by the close_session tool
        "retention",  # a passivated durable session kept past its retention
        "superseded",  # a durable session activated elsewhere since (a stale copy ends)
    }
)

#: Why a durable session is passivated (``supervisor_sessions_passivated_by_reason``'s label
#: values; anything else counts as "other").
PASSIVATION_REASONS = frozenset({"idle-timeout", "capacity", "shutdown"})

#: Sessionless protocol versions: a request whose ``MCP-Protocol-Version`` is one of these is
#: labelled with it (``era="2026-07-28"``); every other request, with any other header value or
#: none, is ``era="handshake"``. So the label has at most ``len(MODERN_ERAS) + 1`` values
#: whatever clients send. (The same set as the MCP SDK's ``MODERN_PROTOCOL_VERSIONS``; kept here
#: so the metrics do not import the SDK.)
MODERN_ERAS = frozenset({"2026-07-28"})

#: Most body bytes the middleware inspects to tell whether a request names a state handle; a
#: longer body counts as ``handle="no"`` (the app's own ``max_body_size`` refuses most of them).
INSPECT_LIMIT = 1 << 20

_VERSION_HEADER = b"mcp-protocol-version"
_SESSION_KEY = b'"session"'

Scope: TypeAlias = MutableMapping[str, Any]
ASGIMessage: TypeAlias = MutableMapping[str, Any]
Receive: TypeAlias = Callable[[], Awaitable[ASGIMessage]]
Send: TypeAlias = Callable[[ASGIMessage], Awaitable[None]]
ASGIApp: TypeAlias = Callable[[Scope, Receive, Send], Awaitable[None]]


class SupervisorCollector(Collector):
    """Reads `Supervisor.statistics` on every scrape (O(1)); holds no state of its own."""

    def __init__(self, sup: Supervisor) -> None:
        self._sup = sup

    def collect(self) -> Iterable[Metric]:
        stats = self._sup.statistics()
        by_state = GaugeMetricFamily(
            "supervisor_sessions", "Live sessions by state.", labels=["state"]
        )
        for state in SessionState:
            if state not in (SessionState.CLOSED, SessionState.ERROR):
                by_state.add_metric([state.value], stats.by_state.get(state, 0))
        yield by_state
        by_transport = GaugeMetricFamily(
            "supervisor_sessions_by_transport",
            "Live sessions by transport.",
            labels=["transport"],
        )
        for transport in Transport:
            by_transport.add_metric([transport.value], stats.by_transport.get(transport, 0))
        yield by_transport
        # O(live sessions): the statistics do not count handles. About 2 ms for 10,000.
        live = self._sup.sessions()
        handles = sum(1 for session in live if is_state_handle(session))
        by_kind = GaugeMetricFamily(
            "supervisor_sessions_by_kind",
            "Live sessions by kind: state handles (2026-07-28 era) and the rest (protocol).",
            labels=["kind"],
        )
        by_kind.add_metric(["handle"], handles)
        by_kind.add_metric(["protocol"], len(live) - handles)
        yield by_kind
        gauges = (
            (
                "supervisor_sessions_live",
                "Sessions not yet ended (they hold capacity).",
                stats.total,
            ),
            ("supervisor_sessions_max", "Session capacity (max_sessions).", stats.max_sessions),
            ("supervisor_sessions_waiting", "Callers waiting for a free slot.", stats.waiting),
            (
                "supervisor_sessions_authenticated",
                "Live sessions bound to a principal.",
                stats.authenticated,
            ),
            (
                "supervisor_mailbox_high_water",
                "Deepest any session mailbox has been (messages).",
                stats.mailbox_high_water,
            ),
            ("supervisor_event_subscribers", "Open event subscriptions.", stats.subscribers),
            (
                "supervisor_sessions_retained",
                "Passivated durable sessions this supervisor keeps until their retention ends.",
                stats.retained,
            ),
        )
        for name, doc, value in gauges:
            yield GaugeMetricFamily(name, doc, value=value)
        counters = (
            ("supervisor_sessions_created", "Sessions created.", stats.created_total),
            ("supervisor_sessions_closed", "Sessions ended by a close.", stats.closed_total),
            ("supervisor_sessions_expired", "Sessions ended by a deadline.", stats.expired_total),
            ("supervisor_sessions_failed", "Sessions whose actor raised.", stats.failed_total),
            (
                "supervisor_sessions_rejected",
                "Sessions refused for lack of capacity.",
                stats.rejected_total,
            ),
            (
                "supervisor_sessions_passivated",
                "Durable sessions' activations ended by a passivation (their state kept).",
                stats.passivated_total,
            ),
            (
                "supervisor_sessions_activated",
                "Durable sessions activated again here from their saved state.",
                stats.activated_total,
            ),
            (
                "supervisor_sessions_restarted",
                "Durable sessions' actors restarted from their last save after raising.",
                stats.restarted_total,
            ),
            ("supervisor_messages", "Messages delivered to mailboxes.", stats.messages_total),
            ("supervisor_calls", "Calls (messages expecting a reply).", stats.calls_total),
            (
                "supervisor_events_dropped",
                "Events dropped because a subscriber fell behind (all subscribers).",
                stats.events_dropped_total,
            ),
        )
        for name, doc, value in counters:
            yield CounterMetricFamily(name, doc, value=value)


class ClusterCollector(Collector):
    """The ``supervisor_cluster_*`` gauges: this node's state (read on every scrape) and the
    cluster-wide figures of the last `refresh` (``None``: omitted, the store did not answer)."""

    def __init__(self, cluster: ClusterSource) -> None:
        self._cluster = cluster
        self.view: ClusterView | None = None

    async def refresh(self) -> None:
        """Read one view (bounded by `CLUSTER_TIMEOUT`); never raises for an absent store."""
        self.view, _ = await read_cluster(partial(self._cluster.view, events=0))

    def collect(self) -> Iterable[Metric]:
        state = GaugeMetricFamily(
            "supervisor_cluster_state",
            "This node's cluster state (1 for the current one).",
            labels=["state"],
        )
        current = self._cluster.state
        for name in (*CLUSTER_STATES, *(() if current in CLUSTER_STATES else (current,))):
            state.add_metric([name], 1 if name == current else 0)
        yield state
        view = self.view
        yield GaugeMetricFamily(
            "supervisor_cluster_store_up",
            "Whether the last scrape read the cluster's store (0: cluster-wide gauges omitted).",
            value=0 if view is None else 1,
        )
        if view is None:
            return
        gauges = (
            ("supervisor_cluster_nodes", "Live nodes in the cluster.", len(view.nodes)),
            ("supervisor_cluster_sessions", "Sessions registered cluster-wide.", view.sessions),
            (
                "supervisor_cluster_slots_held",
                "Cluster slots held by all nodes (sessions plus spare leases).",
                view.held,
            ),
            ("supervisor_cluster_max_sessions", "The cluster-wide cap.", view.max_sessions),
        )
        for name, doc, value in gauges:
            yield GaugeMetricFamily(name, doc, value=value)
        per_node = GaugeMetricFamily(
            "supervisor_cluster_sessions_per_node",
            "Sessions registered to each live node.",
            labels=["node"],
        )
        for node in view.nodes:
            per_node.add_metric([node.id], node.sessions)
        yield per_node


class OperatorMetrics:
    """The metrics of one supervisor: a registry, its collectors and the event subscriber.

    Run `run` as a task for the lifetime of the supervisor; scrape with `refresh` then
    `exposition`. With a ``cluster`` (a `supervisor.cluster.Cluster`), the cluster gauges too.
    """

    def __init__(
        self, sup: Supervisor, *, process: bool = True, cluster: ClusterSource | None = None
    ) -> None:
        self.supervisor = sup
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(SupervisorCollector(sup))
        self.cluster: ClusterCollector | None = None
        if cluster is not None:
            self.cluster = ClusterCollector(cluster)
            self.registry.register(self.cluster)
        if process:
            ProcessCollector(registry=self.registry)
        self.ended = Counter(
            "supervisor_sessions_ended",
            "Sessions ended, by terminal event and reason (unknown reasons as 'other').",
            ["kind", "reason"],
            registry=self.registry,
        )
        self.session_duration = Histogram(
            "supervisor_session_duration_seconds",
            "How long sessions lived, creation to terminal event.",
            buckets=(0.1, 1, 5, 30, 60, 300, 900, 1800, 3600, 4 * 3600, 24 * 3600),
            registry=self.registry,
        )
        self.request_duration = Histogram(
            "supervisor_mcp_request_duration_seconds",
            "MCP HTTP requests (POST and DELETE), from request to the end of the response.",
            ["method", "status", "era"],
            registry=self.registry,
        )
        self.requests = Counter(
            "supervisor_mcp_requests",
            "MCP HTTP requests (POST and DELETE) by protocol era, and whether a tools/call "
            "named a state handle.",
            ["era", "handle"],
            registry=self.registry,
        )
        self.passivated = Counter(
            "supervisor_sessions_passivated_by_reason",
            "Durable sessions passivated, by reason (idle-timeout, capacity, shutdown).",
            ["reason"],
            registry=self.registry,
        )
        self.lagged = Counter(
            "supervisor_metrics_subscriber_lagged",
            "Events the metrics subscriber missed (so sessions_ended undercounts by this much).",
            registry=self.registry,
        )

    async def run(self) -> None:
        """Count terminal and passivation events until the supervisor has shut down."""
        kinds = (EventKind.CLOSED, EventKind.EXPIRED, EventKind.FAILED, EventKind.PASSIVATED)
        async with self.supervisor.subscribe(kinds=kinds, buffer=1024) as events:
            async for item in events:
                if isinstance(item, Lagged):
                    self.lagged.inc(item.missed)
                    continue
                if item.kind is EventKind.PASSIVATED:  # not an end: no duration either
                    known = item.reason in PASSIVATION_REASONS
                    self.passivated.labels(item.reason if known else "other").inc()
                    continue
                reason = item.reason if item.reason in KNOWN_REASONS else "other"
                self.ended.labels(item.kind.value, reason).inc()
                self.session_duration.observe(max(0.0, item.at - item.session.created))

    async def refresh(self) -> None:
        """Before a scrape: read what is not local (the cluster's view, in cluster mode; at
        most `CLUSTER_TIMEOUT` seconds). Never raises for an unreachable store."""
        if self.cluster is not None:
            await self.cluster.refresh()

    def exposition(self) -> bytes:
        """The text exposition format (serve with `CONTENT_TYPE`)."""
        return generate_latest(self.registry)

    def timed(self, app: Any) -> TimedApp:
        """``app`` wrapped so its POST and DELETE requests feed the request metrics."""
        return TimedApp(app, self.request_duration, self.requests)


def request_era(scope: Scope) -> str:
    """The ``era`` label of a request: its ``MCP-Protocol-Version`` if sessionless, else
    ``"handshake"``."""
    for key, raw in scope.get("headers", ()):
        if key == _VERSION_HEADER:
            version = bytes(raw).decode("latin-1").strip()
            return version if version in MODERN_ERAS else HANDSHAKE_ERA
    return HANDSHAKE_ERA


def _names_a_handle(body: bytes) -> bool:
    """Whether ``body`` is a ``tools/call`` (or a batch holding one) whose arguments have a
    string ``session``. Parsed only when the bytes ``"session"`` occur in it, so most requests
    cost a substring search."""
    if _SESSION_KEY not in body:
        return False
    try:
        decoded = json.loads(body)
    except (ValueError, RecursionError):
        return False
    for message in decoded if isinstance(decoded, list) else [decoded]:
        if not isinstance(message, dict) or message.get("method") != "tools/call":
            continue
        params = message.get("params")
        arguments = params.get("arguments") if isinstance(params, dict) else None
        if isinstance(arguments, dict) and isinstance(arguments.get("session"), str):
            return True
    return False


class TimedApp:
    """ASGI middleware: time POST and DELETE requests (by method, status and era) and count
    them (by era and handle).

    The era comes from the ``MCP-Protocol-Version`` header (`request_era`). ``handle`` is
    ``"yes"`` when the body the app read is a ``tools/call`` naming a ``session`` argument,
    which the middleware sees as the chunks pass by (nothing is read that the app does not
    read; at most `INSPECT_LIMIT` bytes are kept).
    """

    def __init__(self, app: ASGIApp, histogram: Histogram, requests: Counter | None = None) -> None:
        self.app = app
        self.histogram = histogram
        self.requests = requests

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        method = scope.get("method")
        if scope["type"] != "http" or method not in ("POST", "DELETE"):
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = "none"
        era = request_era(scope)
        chunks: list[bytes] = []
        size = 0

        async def watched_receive() -> ASGIMessage:
            nonlocal size
            message = await receive()
            if message.get("type") == "http.request" and size <= INSPECT_LIMIT:
                chunk = bytes(message.get("body", b""))
                size += len(chunk)
                if size <= INSPECT_LIMIT:
                    chunks.append(chunk)
                else:
                    chunks.clear()
            return message

        async def timed_send(message: ASGIMessage) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = str(message["status"])
            await send(message)

        try:
            await self.app(scope, watched_receive, timed_send)
        finally:
            self.histogram.labels(method, status, era).observe(time.perf_counter() - start)
            if self.requests is not None:
                handle = "yes" if chunks and _names_a_handle(b"".join(chunks)) else "no"
                self.requests.labels(era, handle).inc()
