"""`SupervisorConfig`: every knob, validated once, frozen."""

from __future__ import annotations

import math

import attrs

__all__ = ["SupervisorConfig"]


def _positive_or_none(_inst: object, attr: attrs.Attribute[float | None], value: object) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ValueError(f"{attr.name} must be a positive number of seconds or None, got {value!r}")


def _non_negative(_inst: object, attr: attrs.Attribute[float], value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
        raise ValueError(f"{attr.name} must be a number of seconds >= 0, got {value!r}")


def _count(minimum: int) -> object:
    def check(_inst: object, attr: attrs.Attribute[int | None], value: object) -> None:
        if value is None and attr.name == "max_sessions_per_principal":
            return
        if value == math.inf and attr.name == "mailbox_size":
            return
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f"{attr.name} must be an integer >= {minimum}, got {value!r}")

    return check


#: The largest `deadline_slack` accepted: slack trades precision for fewer deadline updates and
#: must stay small next to any sensible timeout.
MAX_DEADLINE_SLACK = 1.0


@attrs.frozen(kw_only=True)
class SupervisorConfig:
    """How a supervisor admits, times and ends sessions. All durations are seconds on trio's clock.

    Attributes:
        max_sessions: sessions that may exist at once (every session not yet ended counts).
        idle_timeout: a session expires this long after its last activity; ``None`` disables it.
        init_timeout: a session must reach ``READY`` this soon after creation, or it is closed
            with reason ``"init-timeout"``; ``None`` disables it.
        max_lifetime: a session is closed this long after creation whatever its activity
            (reason ``"max-lifetime"``); ``None`` disables it.
        mailbox_size: messages buffered per session before `send` waits and `send_nowait` raises
            `MailboxFull`.
        shutdown_grace: how long `Supervisor.shutdown` lets actors finish before cancelling them.
        close_grace: how long an actor may take to return after `Supervisor.close_session`.
        max_sessions_per_principal: sessions one principal may hold at once; ``None``: no limit.
        deadline_slack: how late an expiry may fire. Activity pushes the armed deadline only when
            the new one passes it, arming it ``deadline_slack`` further, so bursts of activity cost
            one deadline update. Expiry is never early and at most this late. At most 1 second.
    """

    max_sessions: int = attrs.field(default=100, validator=_count(1))  # type: ignore[arg-type]
    idle_timeout: float | None = attrs.field(default=1800.0, validator=_positive_or_none)
    init_timeout: float | None = attrs.field(default=None, validator=_positive_or_none)
    max_lifetime: float | None = attrs.field(default=None, validator=_positive_or_none)
    mailbox_size: int = attrs.field(default=64, validator=_count(0))  # type: ignore[arg-type]
    shutdown_grace: float = attrs.field(default=5.0, validator=_non_negative)
    close_grace: float = attrs.field(default=1.0, validator=_non_negative)
    max_sessions_per_principal: int | None = attrs.field(
        default=None,
        validator=_count(1),  # type: ignore[arg-type]
    )
    deadline_slack: float = attrs.field(default=0.01, validator=_non_negative)

    def __attrs_post_init__(self) -> None:
        if self.deadline_slack > MAX_DEADLINE_SLACK:
            raise ValueError(
                f"deadline_slack must be at most {MAX_DEADLINE_SLACK} s, got {self.deadline_slack!r}"
            )
