"""The exception family. Every error the supervisor raises derives from `SupervisorError`."""

from __future__ import annotations

import trio

__all__ = [
    "CapacityError",
    "InvalidTransition",
    "MailboxFull",
    "PrincipalMismatch",
    "SessionClosed",
    "SessionNotFound",
    "SupervisorClosed",
    "SupervisorError",
]


class SupervisorError(Exception):
    """Base class of every error raised by the supervisor."""


class CapacityError(SupervisorError):
    """No slot is free: `max_sessions` (or the per-principal limit) is reached.

    Raised by `Supervisor.create_session_nowait`; `Supervisor.create_session` waits instead.
    """


class SupervisorClosed(SupervisorError):
    """The supervisor is shutting down (or has shut down) and admits no new session."""


class SessionNotFound(SupervisorError, KeyError):
    """No live session has this id: it never existed, or it has ended (closed, expired, failed)."""

    def __str__(self) -> str:
        # KeyError.__str__ repr()s its argument; we carry a sentence.
        return str(self.args[0]) if self.args else "session not found"


class SessionClosed(SupervisorError):
    """The session is closing or ended before the operation could complete.

    Raised by `Supervisor.call` when the session ends before replying, and by sends to a session
    that is closing (its mailbox no longer accepts messages).
    """


class InvalidTransition(SupervisorError, ValueError):
    """The requested state change is not in the transition table (see `supervisor.TRANSITIONS`)."""


class PrincipalMismatch(SupervisorError, PermissionError):
    """The session is bound to another principal; a session never changes owner."""


class MailboxFull(SupervisorError, trio.WouldBlock):
    """The session's mailbox is full: `send_nowait` would have to wait (backpressure)."""
