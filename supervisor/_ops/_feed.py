"""Frames describing a supervisor for operators: plain JSON-ready dicts, ids truncated.

A *snapshot* frame carries the counters of `Supervisor.statistics` and a table of live sessions;
an *event* frame carries one lifecycle event; a *lagged* frame says how many events were missed.
The admin endpoint streams these as newline-delimited JSON and ``top`` renders them; ``serve
--top`` feeds them to the same view in process. No full session id is ever put in a frame: an
id is a bearer credential for its session; `short_id` (the core's `supervisor._ids.short_id`,
re-exported) is the one helper that shortens them.

Every row and event carries the session's protocol *era* (`session_era`) and whether it is a
state handle: a handle (metadata ``{"era": "2026-07-28", "state_handle": True}``) is of the
2026-07-28 era; any other session shows the protocol version its client negotiated, or
``"handshake"`` before it has negotiated one. A snapshot's ``stats`` count live sessions by
kind: ``{"handle": N, "protocol": M}`` (every session that is not a handle is ``protocol``).

In cluster mode a *cluster* frame (`cluster_frame`) describes the whole cluster as one node
sees it (a `supervisor.cluster.ClusterView`): nodes, sessions and slots, the newest cluster
events; `cluster_sessions_frame` lists sessions cluster-wide. Session ids are truncated there
too.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from itertools import islice
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import trio

from .. import CapacityError, Event, Lagged
from .._ids import ID_PREFIX as ID_PREFIX
from .._ids import short_id as short_id

if TYPE_CHECKING:
    from .. import Session, SessionSnapshot, SessionStatistics, Supervisor
    from ..cluster._view import ClusterView

__all__ = [
    "CLUSTER_TIMEOUT",
    "HANDSHAKE_ERA",
    "ID_PREFIX",
    "ClusterSource",
    "EventHistory",
    "Frame",
    "cluster_frame",
    "cluster_sessions_frame",
    "read_cluster",
    "event_frame",
    "is_state_handle",
    "run_feed",
    "session_era",
    "short_id",
    "snapshot_frame",
    "stats_dict",
]

#: Seconds the operator surface waits for the cluster's store: ``/cluster`` and
#: ``/sessions?scope=cluster`` then answer 503, a scrape omits the cluster-wide gauges.
CLUSTER_TIMEOUT = 2.0

_T = TypeVar("_T")


async def read_cluster(read: Callable[[], Awaitable[_T]]) -> tuple[_T | None, str]:
    """``await read()`` (a read of the cluster's store) bounded by `CLUSTER_TIMEOUT`:
    ``(value, "")``, or ``(None, why not)`` when the store is unreachable or too slow."""
    with trio.move_on_after(CLUSTER_TIMEOUT):
        try:
            return await read(), ""
        except CapacityError as exc:  # ClusterUnavailable: the store did not answer
            return None, str(exc) or type(exc).__name__
    return None, f"cluster: no answer from the store within {CLUSTER_TIMEOUT:g} s"


class ClusterSource(Protocol):
    """What the operator surface reads of a `supervisor.cluster.Cluster` (typed here so this
    module does not import the optional cluster layer)."""

    @property
    def node_id(self) -> str: ...

    @property
    def state(self) -> str: ...

    async def view(self, events: int = 20) -> ClusterView: ...

    async def sessions(self, limit: int = 200) -> list[dict[str, object]]: ...


#: Longest principal shown; principals can be long (issuer + subject).
PRINCIPAL_WIDTH = 40

Frame = dict[str, Any]

#: The era of a session that has negotiated no protocol version (or is not an MCP session).
HANDSHAKE_ERA = "handshake"

#: Longest era shown (a protocol version is a date; anything longer is cut).
ERA_WIDTH = 32

#: The metadata key that marks a state handle (``supervisor.mcp``'s, read here as plain data).
_HANDLE_MARK = "state_handle"


def is_state_handle(session: Session | SessionSnapshot) -> bool:
    """Whether ``session`` is a state handle (its metadata has ``"state_handle": True``)."""
    return session.metadata.get(_HANDLE_MARK) is True


def session_era(session: Session | SessionSnapshot) -> str:
    """A handle's ``"era"`` metadata, else the negotiated protocol version, else ``"handshake"``."""
    if is_state_handle(session):
        era = session.metadata.get("era")
        if isinstance(era, str) and era:
            return era[:ERA_WIDTH]
    version = session.protocol_version
    if isinstance(version, str) and version:
        return version[:ERA_WIDTH]
    return HANDSHAKE_ERA


def _principal(principal: str | None) -> str | None:
    if principal is None or len(principal) <= PRINCIPAL_WIDTH:
        return principal
    return principal[: PRINCIPAL_WIDTH - 1] + "…"


def stats_dict(stats: SessionStatistics) -> dict[str, Any]:
    """`SessionStatistics` as JSON-ready counters (states and transports by their values)."""
    return {
        "total": stats.total,
        "max_sessions": stats.max_sessions,
        "waiting": stats.waiting,
        "by_state": {state.value: n for state, n in stats.by_state.items()},
        "by_transport": {transport.value: n for transport, n in stats.by_transport.items()},
        "created": stats.created_total,
        "closed": stats.closed_total,
        "expired": stats.expired_total,
        "failed": stats.failed_total,
        "rejected": stats.rejected_total,
        "messages": stats.messages_total,
        "calls": stats.calls_total,
        "mailbox_high_water": stats.mailbox_high_water,
        "subscribers": stats.subscribers,
        "events_dropped": stats.events_dropped_total,
        "passivated": stats.passivated_total,
        "activated": stats.activated_total,
        "restarted": stats.restarted_total,
        "retained": stats.retained,
    }


def _row(session: Session, now: float) -> dict[str, Any]:
    deadline = session.deadline
    busy = session.in_flight > 0
    return {
        "id": short_id(session.id),
        "principal": _principal(session.principal),
        "transport": session.transport.value,
        "state": session.state.value,
        "era": session_era(session),
        "state_handle": is_state_handle(session),
        "age": round(now - session.created, 3),
        "idle": 0.0 if busy else round(max(0.0, now - session.last_activity), 3),
        "expires_in": None if math.isinf(deadline) else round(deadline - now, 3),
        "in_flight": session.in_flight,
        "messages": session.messages_total,
        "mailbox": session.mailbox_depth,
    }


def snapshot_frame(sup: Supervisor, *, limit: int = 200) -> Frame:
    """Counters and the ``limit`` newest live sessions. O(live sessions) to list them.

    Times in rows are seconds relative to now: ``age``, ``idle`` (0 while a call is in flight)
    and ``expires_in`` (``None``: no deadline). ``stats["by_kind"]`` counts every live session
    (handles and the rest), one more pass over them. ``durable``: the supervisor has a store
    (its ``stats`` count passivated, activated, restarted and retained sessions).
    """
    now = trio.current_time()
    live = sup.sessions()
    sessions: Iterable[Session] = reversed(live)
    rows = [_row(s, now) for s in islice(sessions, limit)]
    stats = sup.statistics()
    handles = sum(1 for s in live if is_state_handle(s))
    return {
        "type": "snapshot",
        "wall": time.time(),
        "stats": {
            **stats_dict(stats),
            "by_kind": {"handle": handles, "protocol": len(live) - handles},
        },
        "sessions": rows,
        "more": max(0, stats.total - len(rows)),
        "closing": sup.closing,
        "durable": sup.store is not None,
    }


def event_frame(event: Event) -> Frame:
    """One lifecycle event, id truncated; ``error`` is the exception's type and message.

    ``terminal``: the session ended (``closed``, ``expired``, ``failed``). ``leaves``: it left
    this supervisor's live sessions, a terminal event or ``passivated`` (a durable session's
    activation ended; it has not). A viewer drops the row on ``leaves`` and adds one on
    ``created`` or ``activated``.
    """
    snap = event.session
    frame: Frame = {
        "type": "event",
        "wall": time.time(),
        "kind": event.kind.value,
        "session": short_id(event.session_id),
        "transport": snap.transport.value,
        "state": snap.state.value,
        "principal": _principal(snap.principal),
        "era": session_era(snap),
        "state_handle": is_state_handle(snap),
        "terminal": event.kind.is_terminal,
        "leaves": event.kind.leaves,
    }
    if event.reason is not None:
        frame["reason"] = event.reason
    if event.error is not None:
        frame["error"] = f"{type(event.error).__name__}: {event.error}"[:200]
    if event.old_state is not None and event.new_state is not None:
        frame["old_state"] = event.old_state.value
        frame["new_state"] = event.new_state.value
    return frame


class EventHistory:
    """The last ``size`` event frames, so a viewer that connects late sees recent events.

    Run `run` as a task for the lifetime of the supervisor.
    """

    def __init__(self, size: int = 50) -> None:
        self.frames: deque[Frame] = deque(maxlen=size)

    async def run(self, sup: Supervisor) -> None:
        async with sup.subscribe(buffer=1024) as events:
            async for item in events:
                self.frames.append(_item_frame(item))


async def run_feed(
    sup: Supervisor,
    emit: Callable[[list[Frame]], Awaitable[None]],
    *,
    limit: int = 200,
    coalesce: float = 0.1,
    heartbeat: float = 2.0,
    history: EventHistory | None = None,
) -> None:
    """Emit a snapshot, then events as they happen, until the supervisor has shut down.

    Event-driven: it sleeps until an event arrives. After events it emits a fresh snapshot
    at most ``coalesce`` seconds later (one per burst), and with nothing happening one every
    ``heartbeat`` seconds (message counts and in-flight calls change without events, and a
    dead client is noticed). Frames already waiting are emitted together in one call. Returns
    after a last snapshot once the supervisor's subscriptions end (shutdown complete). With a
    ``history``, its recent events come first.
    """
    async with sup.subscribe(buffer=1024) as events:
        earlier = list(history.frames) if history is not None else []
        await emit([*earlier, snapshot_frame(sup, limit=limit)])
        snapshot_due: float | None = None
        while True:
            batch: list[Frame] = []
            ended = False
            deadline = snapshot_due if snapshot_due is not None else trio.current_time() + heartbeat
            with trio.move_on_at(deadline):
                try:
                    item = await events.__anext__()
                except StopAsyncIteration:
                    ended = True
                else:
                    batch.append(_item_frame(item))
                    while True:
                        try:
                            batch.append(_item_frame(events.receive_nowait()))
                        except trio.WouldBlock:
                            break
                        except trio.EndOfChannel:
                            ended = True
                            break
            if batch and snapshot_due is None:
                snapshot_due = trio.current_time() + coalesce
            if ended or not batch:
                batch.append(snapshot_frame(sup, limit=limit))
                snapshot_due = None
            await emit(batch)
            if ended:
                return


def cluster_frame(view: ClusterView) -> Frame:
    """A `ClusterView` as JSON-ready data; session ids truncated, ``wall`` the time now.

    ``nodes[i]["lease"]`` is the seconds left on that node's lease when the view was read
    (``None``: lapsed). Events keep their ``id``, ``node``, ``kind``, ``reason`` and ``at``
    (wall seconds) and a truncated ``session`` ("" for node entries); their other stored
    fields are not passed on (a principal or an id in them is not for every viewer).
    """
    return {
        "type": "cluster",
        "wall": time.time(),
        "node": view.node,
        "state": view.state,
        "sessions": view.sessions,
        "max_sessions": view.max_sessions,
        "held": view.held,
        "nodes": [
            {
                "id": node.id,
                "address": node.address,
                "sessions": node.sessions,
                "held": node.held,
                "lease": None if node.lease is None else round(node.lease, 3),
                "started": node.started,
                "this": node.this,
            }
            for node in view.nodes
        ],
        "events": [
            {
                "id": event.id,
                "node": event.node,
                "kind": event.kind,
                "session": short_id(event.session_id),
                "reason": event.reason,
                "at": event.at,
            }
            for event in view.events
        ],
    }


def cluster_sessions_frame(node: str, sessions: Iterable[dict[str, object]]) -> Frame:
    """Sessions cluster-wide (from ``Cluster.sessions``), ids truncated, principals shortened
    as in `snapshot_frame`; ``age`` in seconds from their wall-clock ``created``."""
    wall = time.time()
    rows = []
    for entry in sessions:
        principal = entry.get("principal")
        created = entry.get("created")
        created_at = float(created) if isinstance(created, int | float) else None
        rows.append(
            {
                "id": short_id(entry.get("id", "")),
                "node": str(entry.get("node", "")),
                "principal": _principal(principal if isinstance(principal, str) else None),
                "transport": str(entry.get("transport", "")),
                "created": created_at,
                "age": None if created_at is None else round(max(0.0, wall - created_at), 3),
            }
        )
    return {"type": "cluster-sessions", "wall": wall, "node": node, "sessions": rows}


def _item_frame(item: Event | Lagged) -> Frame:
    if isinstance(item, Lagged):
        return {"type": "lagged", "missed": item.missed}
    return event_frame(item)
