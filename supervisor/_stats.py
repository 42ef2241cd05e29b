"""Frozen snapshots of the supervisor's counters."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

import attrs

from ._state import SessionState, Transport

__all__ = ["SessionMetrics", "SessionStatistics"]


@attrs.frozen
class SessionMetrics:
    """The seed's ``getSessionMetrics()``: four numbers, O(1) to take.

    Attributes:
        total: sessions in the registry (not yet ended).
        active: sessions in state ``READY`` (the seed's definition of active).
        authenticated: sessions bound to a principal.
        expired: sessions ended by a deadline since the supervisor started (idle, init, lifetime).
    """

    total: int
    active: int
    authenticated: int
    expired: int


@attrs.frozen(kw_only=True)
class SessionStatistics:
    """The seed's ``getStats()`` and more; O(1) to take (counters are kept as things happen).

    ``by_state`` counts sessions in the registry, so ``CLOSED`` and ``ERROR`` are always 0 there:
    a session leaves the registry in the step that ends it. Ended sessions are counted in
    ``closed_total``, ``expired_total`` and ``failed_total``, which add up to ``ended_total``.

    Durable sessions: ``passivated_total`` activations ended in a passivation (not counted in
    ``ended_total``), ``activated_total`` passivated sessions ran again here (not counted in
    ``created_total``), ``restarted_total`` actors were restarted after raising; ``retained``
    passivated sessions this supervisor will expire when their retention ends.
    """

    total: int
    by_state: Mapping[SessionState, int]
    by_transport: Mapping[Transport, int]
    created_total: int
    closed_total: int
    expired_total: int
    failed_total: int
    rejected_total: int
    oldest: datetime | None
    newest: datetime | None
    active: int
    authenticated: int
    max_sessions: int
    waiting: int
    messages_total: int
    calls_total: int
    mailbox_high_water: int
    subscribers: int
    events_dropped_total: int
    passivated_total: int = 0
    activated_total: int = 0
    restarted_total: int = 0
    retained: int = 0

    @property
    def ended_total(self) -> int:
        """Sessions that have ended, by any of the three terminal events."""
        return self.closed_total + self.expired_total + self.failed_total
