"""Lifecycle events and the broadcast that carries them to subscribers without ever blocking."""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable, Collection
from contextlib import suppress
from types import TracebackType
from typing import TypeAlias, final

import attrs
import trio

from ._session import Session, SessionSnapshot, _short
from ._state import SessionState

__all__ = ["Event", "EventKind", "Lagged", "Subscription"]


class EventKind(enum.StrEnum):
    """What happened.

    ``CLOSED``, ``EXPIRED`` and ``FAILED`` are terminal: each session ends with exactly one.

    Durable sessions (``create_session(..., durable=True)``) have three more. ``PASSIVATED``:
    the actor stopped and its state is kept in the store (reason ``"idle-timeout"``,
    ``"capacity"`` or ``"shutdown"``); not terminal, but this activation is over: the session
    left this supervisor's registry and its slot is free. ``ACTIVATED``: a passivated session
    (or one whose node died) runs again, with the same id, from its last saved state. It is to
    a registry what ``CREATED`` is. ``RESTARTED``: the actor raised and was started again from
    the last saved state (``error`` is the exception).
    """

    CREATED = "created"
    INITIALIZED = "initialized"
    AUTHENTICATED = "authenticated"
    STATE_CHANGED = "state-changed"
    CLOSED = "closed"
    EXPIRED = "expired"
    FAILED = "failed"
    PASSIVATED = "passivated"
    ACTIVATED = "activated"
    RESTARTED = "restarted"

    @property
    def is_terminal(self) -> bool:
        return self in _TERMINAL

    @property
    def leaves(self) -> bool:
        """True when the session leaves this supervisor's registry: a terminal event or
        ``PASSIVATED``."""
        return self in _LEAVING


_TERMINAL = frozenset({EventKind.CLOSED, EventKind.EXPIRED, EventKind.FAILED})
_LEAVING = _TERMINAL | {EventKind.PASSIVATED}


@attrs.frozen(kw_only=True)
class Event:
    """One lifecycle event of one session.

    Attributes:
        kind: what happened.
        session_id: the session's id.
        session: a frozen snapshot of the session taken when the event was published.
        reason: for terminal events, why the session ended (``"closed"``, ``"idle-timeout"``,
            ``"init-timeout"``, ``"max-lifetime"``, ``"shutdown"``, ``"actor-returned"``,
            ``"actor-error"``, ``"task-error"``, ``"cancelled"``, ``"superseded"``,
            ``"retention"`` or a reason given to `Supervisor.close_session`); for
            ``PASSIVATED``, why it was passivated; for ``RESTARTED``, ``"actor-error"``.
        error: for ``FAILED`` and ``RESTARTED``, the exception the actor (or one of its tasks)
            raised, unwrapped.
        old_state: for ``STATE_CHANGED``, the state left.
        new_state: for ``STATE_CHANGED``, the state entered.
        at: when, on trio's clock.
    """

    kind: EventKind
    session_id: str = attrs.field(repr=lambda session_id: repr(_short(session_id)))
    session: SessionSnapshot
    at: float
    reason: str | None = None
    error: BaseException | None = None
    old_state: SessionState | None = None
    new_state: SessionState | None = None


@attrs.frozen
class Lagged:
    """In place of events a subscriber missed: its buffer was full and the oldest were dropped."""

    missed: int


@final
class Subscription:
    """An async iterator of `Event` (and `Lagged`) items; use as ``async with sup.subscribe()``.

    Iteration ends once the supervisor has shut down and every event published before that has
    been delivered. Publishing never waits for a subscriber: when the buffer is full the oldest
    event is dropped and a `Lagged` item stands in for what was missed.
    """

    __slots__ = (
        "_buffer",
        "_bus",
        "_closed",
        "_kinds",
        "_lot",
        "_missed",
        "_session_id",
        "_size",
        "dropped_total",
        "sessions",
    )

    def __init__(
        self,
        bus: EventBus,
        kinds: frozenset[EventKind] | None,
        session_id: str | None,
        size: int,
        sessions: tuple[SessionSnapshot, ...],
    ) -> None:
        self._bus = bus
        self._kinds = kinds
        self._session_id = session_id
        self._size = size
        self._buffer: deque[Event] = deque()
        self._missed = 0
        self._closed = False
        self._lot = trio.lowlevel.ParkingLot()
        #: Events dropped for this subscriber so far.
        self.dropped_total = 0
        #: With ``subscribe(snapshot=True)``: the sessions live when the subscription began.
        self.sessions = sessions

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop receiving; buffered items are discarded. Idempotent."""
        self._bus._remove(self)
        self._buffer.clear()
        self._missed = 0
        self._end()

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Event | Lagged:
        await trio.lowlevel.checkpoint()
        while True:
            try:
                return self.receive_nowait()
            except trio.WouldBlock:
                await self._lot.park()
            except trio.EndOfChannel:
                raise StopAsyncIteration from None

    def receive_nowait(self) -> Event | Lagged:
        """The next item without waiting.

        Raises:
            trio.WouldBlock: nothing buffered yet.
            trio.EndOfChannel: the supervisor has shut down and everything was delivered.
        """
        if self._missed:
            missed, self._missed = self._missed, 0
            return Lagged(missed)
        if self._buffer:
            return self._buffer.popleft()
        if self._closed:
            raise trio.EndOfChannel
        raise trio.WouldBlock

    def _wants(self, kind: EventKind, session_id: str) -> bool:
        return (self._kinds is None or kind in self._kinds) and (
            self._session_id is None or self._session_id == session_id
        )

    def _push(self, event: Event) -> None:
        buffer = self._buffer
        if len(buffer) >= self._size:
            buffer.popleft()
            self._missed += 1
            self.dropped_total += 1
            self._bus.dropped_total += 1
        buffer.append(event)
        if self._lot:
            self._lot.unpark_all()

    def _end(self) -> None:
        self._closed = True
        self._lot.unpark_all()


#: ``sink(kind, session, reason, old_state, new_state)``: see `EventBus.sink`.
EventSink: TypeAlias = Callable[
    [EventKind, Session, str | None, SessionState | None, SessionState | None], None
]


@final
class EventBus:
    """Fan-out of events to subscriptions. Internal; reached through `Supervisor.subscribe`."""

    __slots__ = ("_closed", "_subscriptions", "dropped_total", "sink")

    def __init__(self) -> None:
        self._subscriptions: list[Subscription] = []
        self._closed = False
        self.dropped_total = 0
        #: Called with every event published, before the subscriptions get it (the cluster
        #: layer's way in: `supervisor._cluster.ClusterHook.event`). Must not block or raise.
        self.sink: EventSink | None = None

    def __bool__(self) -> bool:
        return bool(self._subscriptions) or self.sink is not None

    def __len__(self) -> int:
        return len(self._subscriptions)

    def subscribe(
        self,
        kinds: Collection[EventKind] | None,
        session_id: str | None,
        buffer: int,
        sessions: tuple[SessionSnapshot, ...],
    ) -> Subscription:
        if isinstance(buffer, bool) or not isinstance(buffer, int) or buffer < 1:
            raise ValueError(f"buffer must be an integer >= 1, got {buffer!r}")
        wanted = None if kinds is None else frozenset(EventKind(k) for k in kinds)
        sub = Subscription(self, wanted, session_id, buffer, sessions)
        if self._closed:
            sub._end()
        else:
            self._subscriptions.append(sub)
        return sub

    def publish(
        self,
        kind: EventKind,
        session: Session,
        at: float,
        reason: str | None = None,
        error: BaseException | None = None,
        old_state: SessionState | None = None,
        new_state: SessionState | None = None,
    ) -> None:
        """Deliver to every matching subscription. Never blocks; O(subscribers)."""
        sink = self.sink
        if sink is not None:
            sink(kind, session, reason, old_state, new_state)
        event = None
        session_id = session._id
        for sub in self._subscriptions:
            if sub._wants(kind, session_id):
                if event is None:
                    event = Event(
                        kind=kind,
                        session_id=session_id,
                        session=session.snapshot(),
                        at=at,
                        reason=reason,
                        error=error,
                        old_state=old_state,
                        new_state=new_state,
                    )
                sub._push(event)

    def close(self) -> None:
        """End every subscription once its buffered events are consumed."""
        self._closed = True
        for sub in self._subscriptions:
            sub._end()

    def _remove(self, sub: Subscription) -> None:
        with suppress(ValueError):
            self._subscriptions.remove(sub)
