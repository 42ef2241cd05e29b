"""Session states, transports and the one table of allowed transitions."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from types import MappingProxyType

from ._exceptions import InvalidTransition

__all__ = ["LIVE_STATES", "TRANSITIONS", "SessionState", "Transport", "check_transition"]


class SessionState(enum.StrEnum):
    """Where a session is in its life. Values are the seed's strings."""

    CREATED = "created"
    INITIALIZING = "initializing"
    READY = "ready"
    CLOSING = "closing"
    CLOSED = "closed"
    ERROR = "error"


class Transport(enum.StrEnum):
    """How the session's client is connected. Values are the seed's strings."""

    STDIO = "stdio"
    HTTP = "http"
    WEBSOCKET = "websocket"
    IN_PROCESS = "in-process"


_S = SessionState

#: Every allowed transition, and nothing else. ``CLOSED`` and ``ERROR`` are terminal: a session in
#: either has ended and left the registry.
TRANSITIONS: Mapping[SessionState, frozenset[SessionState]] = MappingProxyType(
    {
        _S.CREATED: frozenset({_S.INITIALIZING, _S.CLOSING, _S.ERROR}),
        _S.INITIALIZING: frozenset({_S.READY, _S.CLOSING, _S.ERROR}),
        _S.READY: frozenset({_S.CLOSING, _S.ERROR}),
        _S.CLOSING: frozenset({_S.CLOSED, _S.ERROR}),
        _S.CLOSED: frozenset(),
        _S.ERROR: frozenset(),
    }
)

#: States in which a session is serving (the seed's ``getActiveSessions`` filter).
LIVE_STATES: frozenset[SessionState] = frozenset({_S.CREATED, _S.INITIALIZING, _S.READY})


def check_transition(old: SessionState, new: SessionState) -> None:
    """Raise `InvalidTransition` unless ``old -> new`` is in `TRANSITIONS`."""
    if new not in TRANSITIONS[old]:
        allowed = ", ".join(sorted(s.value for s in TRANSITIONS[old])) or "none (terminal)"
        raise InvalidTransition(
            f"cannot move a session from {old.value!r} to {new.value!r}; allowed: {allowed}"
        )
