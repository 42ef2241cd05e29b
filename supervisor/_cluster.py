"""What the core asks of a cluster layer: the small interface `supervisor.cluster` implements.

The core never imports the cluster layer (it depends on trio and attrs only). A supervisor
opened with ``open_supervisor(cluster=...)`` asks the object given for session ids, for the
cluster-wide share of its capacity and for nothing else; the node-local checks (``max_sessions``
and ``max_sessions_per_principal`` over this process's sessions) still apply first.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from ._events import EventKind
    from ._session import Session
    from ._state import SessionState
    from ._supervisor import Supervisor

__all__ = ["ClusterHook"]


class ClusterHook(Protocol):
    """The cluster side of a supervisor (implemented by `supervisor.cluster.Cluster`).

    The synchronous methods are called on the supervisor's hot paths and must not block;
    the ``async`` ones may take a round trip to the cluster's store.
    """

    def attach(self, supervisor: Supervisor) -> AbstractAsyncContextManager[None]:
        """Joined to the cluster while the block runs; entered before the supervisor's block
        body, left after the last session has ended."""
        ...

    def new_session_id(self) -> str:
        """A fresh session id that tells every node which node owns it."""
        ...

    def admit_nowait(self, principal: str | None) -> str | None:
        """Take a cluster slot (and the principal's, if any) without waiting.

        Returns None when admitted, else why not (the CapacityError's message).
        """
        ...

    async def admit(self, principal: str | None, *, wait: bool) -> None:
        """Take a cluster slot (and the principal's), with a round trip if need be.

        ``wait``: wait for a slot freed anywhere in the cluster instead of refusing.
        Cancellation-safe: a cancelled admit holds nothing.

        Raises:
            CapacityError: full cluster-wide (``wait=False``), or the cluster is unreachable.
        """
        ...

    def bind_nowait(self, principal: str) -> str | None:
        """Take the principal's slot for a session admitted without one, without waiting.

        Returns None when bound, else why not (the CapacityError's message).
        """
        ...

    async def bind(self, principal: str) -> None:
        """Take the principal's slot, with a round trip if need be.

        Raises:
            CapacityError: the principal's limit is reached cluster-wide.
        """
        ...

    def unbind(self, principal: str) -> None:
        """Give back a principal slot taken by `bind` that ended up unused."""
        ...

    def release(self, principal: str | None) -> None:
        """Give back a slot taken by `admit` or `admit_nowait` (and the principal's, if one)."""
        ...

    def event(
        self,
        kind: EventKind,
        session: Session,
        reason: str | None,
        old_state: SessionState | None,
        new_state: SessionState | None,
    ) -> None:
        """Every lifecycle event, as it is published (synchronously, in order; never blocks).

        ``CREATED`` registers the session cluster-wide, a terminal event unregisters it.
        """
        ...
