"""The embedded durable-state store: `SqliteStore`, one SQLite file, no server.

It implements `supervisor.SessionStore` for a single process (one node); in cluster mode the
cluster's Redis store keeps the records instead. This layer depends on the core and the
standard library (`sqlite3`, `fcntl`) only.
"""

from __future__ import annotations

from ._sqlite import SqliteStore as SqliteStore

__all__ = ["SqliteStore"]
