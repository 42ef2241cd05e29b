"""What a node can tell of the whole cluster: nodes, sessions per node, the event tail."""

from __future__ import annotations

import attrs

__all__ = ["ClusterEvent", "ClusterView", "NodeView"]


@attrs.frozen(kw_only=True)
class NodeView:
    """One live node of the cluster.

    Attributes:
        id: the node's incarnation token (the part of its session ids after the last ``.``).
        address: the base URL its peers forward requests to (``http://host:port``).
        sessions: sessions registered to it.
        held: cluster slots it holds (its sessions plus its spare lease).
        lease: seconds left on its lease (None: lapsed, about to be reaped).
        started: when it joined (wall clock, seconds since the epoch).
        this: True for the node that made the view.
    """

    id: str
    address: str
    sessions: int
    held: int
    lease: float | None
    started: float
    this: bool = False


@attrs.frozen(kw_only=True)
class ClusterEvent:
    """One entry of the cluster's event stream (Redis Streams).

    Attributes:
        id: the stream entry id (``<ms>-<n>``).
        node: the node it came from (for ``node-lost``, the node reaped).
        kind: an `EventKind` value (``created``, ``closed``...), or ``node-joined``,
            ``node-left`` or ``node-lost`` for the cluster's own entries.
        session_id: the full session id ("" for node entries): a credential, as everywhere.
        reason: for terminal events, why the session ended (``node-lost`` when reaped).
        at: wall clock seconds since the epoch.
        fields: every field of the entry as stored (``old``/``new`` states, ``principal``...).
    """

    id: str
    node: str
    kind: str
    session_id: str
    reason: str | None
    at: float
    fields: dict[str, str] = attrs.field(factory=dict, eq=False)


@attrs.frozen(kw_only=True)
class ClusterView:
    """The cluster as one node sees it, read from the store in one round trip.

    Attributes:
        node: this node's id.
        state: this node's state: ``joining``, ``ready``, ``unavailable`` (the store is not
            answering: existing sessions serve, new ones are refused) or ``fenced``.
        nodes: live nodes, this one included, oldest first.
        sessions: sessions registered cluster-wide.
        max_sessions: the cluster-wide cap.
        held: slots held by all nodes (sessions plus spare leases): never above the cap.
        events: the newest entries of the event stream, oldest first.
    """

    node: str
    state: str
    nodes: tuple[NodeView, ...]
    sessions: int
    max_sessions: int
    held: int
    events: tuple[ClusterEvent, ...]
