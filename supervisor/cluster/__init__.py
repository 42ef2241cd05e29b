"""Cluster mode: several supervisor processes, one set of sessions, on Redis or Valkey.

``open_supervisor(cluster=Cluster("redis://host:6379/0"), ...)`` joins this process's
supervisor to a cluster: capacity (total and per principal) holds across every node, each
session is owned by the node that runs its actor and its id names that node, requests that
land on another node are forwarded to the owner (`Cluster.forwarding`), lifecycle events reach
cluster subscribers through Redis Streams, and the nodes reap a dead node's sessions.
``Cluster.store`` (a `RedisSessionStore`) keeps durable sessions in the same Redis, so a dead
node's durable sessions are activated again on whichever node gets their next request. Needs the
``[cluster]`` extra (coredis). See docs/cluster.md.
"""

from ._durable import RedisSessionStore
from ._node import Cluster, ClusterError, ClusterUnavailable
from ._store import ClusterStore, RedisStore
from ._view import ClusterEvent, ClusterView, NodeView

__all__ = [
    "Cluster",
    "ClusterError",
    "ClusterEvent",
    "ClusterStore",
    "ClusterUnavailable",
    "ClusterView",
    "NodeView",
    "RedisSessionStore",
    "RedisStore",
]
