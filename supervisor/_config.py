"""`SupervisorConfig`: every knob, validated once, frozen."""

from __future__ import annotations

import math

import attrs

__all__ = ["MAX_DEADLINE_SLACK", "SupervisorConfig"]

#: The largest `SupervisorConfig.deadline_slack` accepted: slack trades expiry precision for fewer
#: timer wake-ups and must stay small next to any sensible timeout.
MAX_DEADLINE_SLACK = 1.0


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and not math.isnan(value)


@attrs.frozen(kw_only=True)
class SupervisorConfig:
    """How a supervisor admits, times and ends sessions. Durations are seconds on trio's clock.

    Attributes:
        max_sessions: sessions that may exist at once (every session not yet ended counts).
        idle_timeout: a session expires this long after its last activity (reason
            ``"idle-timeout"``); ``None`` disables it.
        init_timeout: a session must reach ``READY`` this soon after creation, or it expires
            with reason ``"init-timeout"``; ``None`` disables it.
        max_lifetime: a session expires this long after creation whatever its activity
            (reason ``"max-lifetime"``); ``None`` disables it.
        mailbox_size: messages buffered per session before `Supervisor.send` waits and
            `Supervisor.send_nowait` raises `MailboxFull`.
        shutdown_grace: how long `Supervisor.shutdown` lets actors finish before cancelling them.
        close_grace: how long an actor may take to return after `Supervisor.close_session`
            before it is cancelled.
        max_sessions_per_principal: sessions one principal may hold at once; ``None``: no limit.
        retention: how long a passivated durable session is kept, then it expires for good
            (an ``EXPIRED`` event with reason ``"retention"``; its record is deleted).
        max_restarts: a durable session whose actor raises is restarted from its last saved
            state at most this many times within ``restart_window`` seconds (OTP's restart
            intensity); the next crash fails it. 0: never restart.
        restart_window: see ``max_restarts``.
        passivate_at_capacity: when `max_sessions` is reached, `Supervisor.create_session`
            and `Supervisor.activate` passivate the least recently used idle durable session
            to make room instead of refusing (or waiting).
        deadline_slack: how late an expiry may fire. The supervisor's timers wake once for
            all sessions due within one slack of each other. Expiry is never early and at most
            this late (plus the expiry work itself when very many are due at once). Between 0
            and `MAX_DEADLINE_SLACK`.

    Raises:
        ValueError: a value of the wrong type or out of range, naming the field.
    """

    max_sessions: int = 100
    idle_timeout: float | None = 1800.0
    init_timeout: float | None = None
    max_lifetime: float | None = None
    mailbox_size: int = 64
    shutdown_grace: float = 5.0
    close_grace: float = 1.0
    max_sessions_per_principal: int | None = None
    deadline_slack: float = 0.01
    retention: float = 86400.0
    max_restarts: int = 3
    restart_window: float = 5.0
    passivate_at_capacity: bool = False

    def __attrs_post_init__(self) -> None:
        for name in ("max_sessions", "max_sessions_per_principal"):
            value = getattr(self, name)
            if value is None and name == "max_sessions_per_principal":
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        size = self.mailbox_size
        if not (isinstance(size, int) and not isinstance(size, bool) and size >= 0):
            raise ValueError(f"mailbox_size must be an integer >= 0, got {size!r}")
        for name in ("idle_timeout", "init_timeout", "max_lifetime"):
            value = getattr(self, name)
            if value is not None and not (_is_number(value) and value > 0):
                raise ValueError(f"{name} must be a number of seconds > 0 or None, got {value!r}")
        for name in ("shutdown_grace", "close_grace", "deadline_slack"):
            value = getattr(self, name)
            if not (_is_number(value) and 0 <= value < math.inf):
                raise ValueError(f"{name} must be a finite number of seconds >= 0, got {value!r}")
        for name in ("retention", "restart_window"):
            value = getattr(self, name)
            if not (_is_number(value) and 0 < value < math.inf):
                raise ValueError(f"{name} must be a finite number of seconds > 0, got {value!r}")
        restarts = self.max_restarts
        if not (isinstance(restarts, int) and not isinstance(restarts, bool) and restarts >= 0):
            raise ValueError(f"max_restarts must be an integer >= 0, got {restarts!r}")
        if not isinstance(self.passivate_at_capacity, bool):
            raise ValueError(
                f"passivate_at_capacity must be True or False, got {self.passivate_at_capacity!r}"
            )
        if self.deadline_slack > MAX_DEADLINE_SLACK:
            raise ValueError(
                f"deadline_slack must be at most {MAX_DEADLINE_SLACK} s, "
                f"got {self.deadline_slack!r}"
            )
