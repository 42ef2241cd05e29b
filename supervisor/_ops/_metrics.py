"""Prometheus metrics (prometheus-client) for a supervisor and its MCP HTTP front end.

Counters and gauges come from `Supervisor.statistics` (O(1)) at scrape time, so they are exact
and cost nothing between scrapes. Lifecycle events feed what statistics do not keep: sessions
ended by kind and reason, and a histogram of session durations. `TimedApp` wraps an ASGI app to
time MCP requests (POST and DELETE; a GET is a long-lived event stream, not a call).

Every `OperatorMetrics` has its own `CollectorRegistry`, so several supervisors (or tests) in
one process do not collide.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
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

if TYPE_CHECKING:
    from .. import Supervisor

__all__ = ["CONTENT_TYPE", "KNOWN_REASONS", "OperatorMetrics", "SupervisorCollector", "TimedApp"]

#: Content type of the text exposition format.
CONTENT_TYPE: str = CONTENT_TYPE_LATEST

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
    }
)

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


class OperatorMetrics:
    """The metrics of one supervisor: a registry, its collectors and the event subscriber.

    Run `run` as a task for the lifetime of the supervisor; scrape with `exposition`.
    """

    def __init__(self, sup: Supervisor, *, process: bool = True) -> None:
        self.supervisor = sup
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(SupervisorCollector(sup))
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
            ["method", "status"],
            registry=self.registry,
        )
        self.lagged = Counter(
            "supervisor_metrics_subscriber_lagged",
            "Events the metrics subscriber missed (so sessions_ended undercounts by this much).",
            registry=self.registry,
        )

    async def run(self) -> None:
        """Count terminal events until the supervisor has shut down."""
        terminal = (EventKind.CLOSED, EventKind.EXPIRED, EventKind.FAILED)
        async with self.supervisor.subscribe(kinds=terminal, buffer=1024) as events:
            async for item in events:
                if isinstance(item, Lagged):
                    self.lagged.inc(item.missed)
                    continue
                reason = item.reason if item.reason in KNOWN_REASONS else "other"
                self.ended.labels(item.kind.value, reason).inc()
                self.session_duration.observe(max(0.0, item.at - item.session.created))

    def exposition(self) -> bytes:
        """The text exposition format (serve with `CONTENT_TYPE`)."""
        return generate_latest(self.registry)

    def timed(self, app: Any) -> TimedApp:
        """``app`` wrapped so its POST and DELETE requests feed the request histogram."""
        return TimedApp(app, self.request_duration)


class TimedApp:
    """ASGI middleware: observe the duration of POST and DELETE requests, labelled by status."""

    def __init__(self, app: ASGIApp, histogram: Histogram) -> None:
        self.app = app
        self.histogram = histogram

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        method = scope.get("method")
        if scope["type"] != "http" or method not in ("POST", "DELETE"):
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = "none"

        async def timed_send(message: ASGIMessage) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = str(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, timed_send)
        finally:
            self.histogram.labels(method, status).observe(time.perf_counter() - start)
