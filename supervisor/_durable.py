"""What the core asks of a durable-state store: the small interface `SessionStore`.

A durable session (``create_session(actor, durable=True)``) outlives its actor: its last saved
state, and what it takes to start it again (the actor's registered name, transport, principal,
metadata, handshake), are kept in a store. The core never imports a store (it depends on trio
and attrs only); `supervisor.durable.SqliteStore` (embedded, no server) and the cluster's Redis
store implement this interface, and one test suite (``tests/_store_contract.py``) checks both.

Exactly one activation of a session exists at any time: every record carries an *epoch* and an
*owner* (the node's token). `SessionStore.activate` moves the record to a new epoch owned by the
caller, refused while another live node owns it; `SessionStore.save` and
`SessionStore.passivate` are accepted only from the activation that holds the current epoch,
so a stale owner's write is refused (`Superseded`) and can never overwrite a newer one.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

import attrs

from ._exceptions import SupervisorError

__all__ = [
    "ActiveElsewhere",
    "DurableRecord",
    "SessionStore",
    "StoreError",
    "Superseded",
    "json_metadata",
]


class StoreError(SupervisorError):
    """The durable-state store failed or cannot be reached (a save was not confirmed)."""


class Superseded(SupervisorError):
    """The store refused a write: the session was activated again since (on another node, or
    after this node lost its lease) or it ended for good. The writer's activation is stale."""


class ActiveElsewhere(SupervisorError):
    """Activation refused: another live node holds the session's current activation.

    Attributes:
        owner: that node's token (in cluster mode, a node id `supervisor.cluster` can locate).
    """

    def __init__(self, message: str, owner: str) -> None:
        super().__init__(message)
        self.owner = owner


@attrs.frozen(kw_only=True)
class DurableRecord:
    """What a store keeps of one durable session. Every value is JSON-serializable.

    Attributes:
        id: the session id (the same across activations).
        actor: the name the actor was registered under (`Supervisor.register_durable`).
        epoch: the activation this record belongs to: 1 for a new session, one more at each
            activation. A write is accepted only with the record's current epoch.
        owner: the node token of the activation that holds ``epoch``; ``None`` when passivated.
        state: the snapshot the actor saved last (``None`` before its first save).
        transport: the `supervisor.Transport` value.
        principal: the principal the session is bound to, if any.
        metadata: the session's metadata (JSON values only; others are left out).
        handshake: ``client_info``, ``protocol_version`` and ``capabilities`` once initialized.
        created: wall-clock time (``time.time()``) the session was first created.
        expires: wall-clock time after which the record goes unless a live node owns it: the
            end of a passivated session's retention, and for an active one the retention
            counted from its last save (so that a record a dead node left behind does not
            stay forever). ``None``: no such bound.
    """

    id: str
    actor: str
    epoch: int
    owner: str | None
    state: Any = None
    transport: str = "in-process"
    principal: str | None = None
    metadata: Mapping[str, Any] = attrs.field(factory=dict)
    handshake: Mapping[str, Any] | None = None
    created: float = 0.0
    expires: float | None = None


class SessionStore(Protocol):
    """Keeps durable sessions' records. Every method is one atomic step in the store.

    Implementations: `supervisor.durable.SqliteStore`, `supervisor.cluster.Cluster.store`.
    Methods raise `StoreError` when the store fails or cannot be reached.
    """

    @property
    def node(self) -> str:
        """This node's owner token (valid while attached)."""
        ...

    def open(self) -> AbstractAsyncContextManager[None]:
        """Open while the block runs: `supervisor.open_supervisor` enters it before its block
        body (after joining the cluster, if any) and leaves it after the last session has
        ended and the last write has been confirmed."""
        ...

    async def save(self, record: DurableRecord) -> None:
        """Write ``record`` (its owner is ``self.node``, its state the new snapshot).

        Accepted when the stored record has the same epoch and owner, or when there is none
        and ``record.epoch`` is 1 (a session's first save). Confirmed when this returns.
        ``record.expires`` is kept as the record's expiry.

        Raises:
            Superseded: the stored epoch or owner differs, or the record is gone (ended, or
                expired) at an epoch above 1.
        """
        ...

    async def activate(self, session_id: str, now: float) -> DurableRecord:
        """Move the record to a new epoch owned by this node and return it.

        Allowed when the record is passivated (no owner), owned by this node, or owned by a
        node that is no longer alive. ``now`` is wall-clock time: a record whose ``expires``
        has passed and that no live node owns is deleted and not found. The returned record
        keeps the stored ``expires`` (the activation's first save moves it).

        Raises:
            SessionNotFound: no record (never saved, ended for good, or expired).
            ActiveElsewhere: a live node owns the current activation.
        """
        ...

    async def passivate(self, record: DurableRecord, expires: float) -> None:
        """Keep ``record`` without an owner until ``expires`` (wall clock); as `save`, but
        the stored record is left with ``owner=None``.

        Raises:
            Superseded: as `save`.
        """
        ...

    async def delete(self, session_id: str, epoch: int) -> bool:
        """Forget the record if it is still at ``epoch`` and owned by this node or by none
        (a session that ended for good, or whose retention ran out); return whether it did.
        Nothing happens otherwise (a newer activation exists, or the record is gone)."""
        ...

    async def purge(self, now: float) -> int:
        """Delete the records whose ``expires`` is before ``now`` (wall clock) and that no
        live node owns (passivated, or left behind by a dead node); return how many."""
        ...


def json_metadata(metadata: Mapping[str, Any] | None) -> dict[str, Any]:
    """The entries of ``metadata`` a store can keep: JSON-serializable values under str keys."""
    kept: dict[str, Any] = {}
    for key, value in (metadata or {}).items():
        if not isinstance(key, str):
            continue
        try:
            json.dumps(value)
        except (TypeError, ValueError):
            continue
        kept[key] = value
    return kept
