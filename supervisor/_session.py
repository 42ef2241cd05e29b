"""The session record (a read-only `Session` view for users), its messages and its mailbox.

The bottom of the core: everything here is a function of one session record, and it imports
only the leaves (`supervisor._state`, `supervisor._ids`, `supervisor._exceptions`). The
supervisor (`supervisor._supervisor`) and the actor's handle on it (`SessionContext`, defined
there) build on it; nothing here calls up.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, Generic, TypeVar, final

import attrs
import outcome
import trio

from ._exceptions import SessionClosed
from ._ids import short_id
from ._state import SessionState, Transport

__all__ = ["Mailbox", "Message", "Session", "SessionSnapshot"]

T = TypeVar("T")

_EMPTY: Mapping[str, Any] = MappingProxyType({})

# Message status. A message sent with `send` is _ONE_WAY; one sent with `call` is _PENDING until
# it is answered (_ANSWERED), or its caller gave up or the session ended (_ABANDONED).
_ONE_WAY = 0
_PENDING = 1
_ANSWERED = 2
_ABANDONED = 3


def _wall(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


@final
@attrs.define(eq=False, repr=False)
class Session:
    """A live, read-only view of one session, kept up to date by the supervisor.

    Users get it from `Supervisor.get_session`, `Supervisor.create_session_nowait` and
    ``ctx.session``; they never construct it. Use `snapshot` for a frozen copy. Times named ``*_at``
    are wall-clock datetimes for display; deadlines and durations use trio's clock.
    """

    # Identity and what the seed's MCPSession carried.
    _id: str
    _transport: Transport
    _principal: str | None
    _created: float  # trio clock
    _created_wall: float  # time.time() at creation, for display only
    _last_activity: float  # trio clock
    _idle_timeout: float  # config.idle_timeout, or inf
    _slack: float  # config.deadline_slack
    _state: SessionState = SessionState.CREATED
    _authenticated: bool = False
    _initialized: bool = False
    _client_info: Any = None
    _protocol_version: Any = None
    _capabilities: Any = None
    _metadata: dict[str, Any] | None = None
    # Traffic.
    _in_flight: int = 0
    _messages: int = 0
    _depth: int = 0
    _high_water: int = 0
    # Owned by the supervisor: the actor's scope, its mailbox and its deadlines.
    _scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    _send: trio.MemorySendChannel[Message[Any]] | None = None
    _recv: trio.MemoryReceiveChannel[Message[Any]] | None = None
    _armed: float = math.inf  # idle deadline as armed on the scope; inf while paused
    _hard: float = math.inf  # min(init deadline while not READY, lifetime deadline)
    _lifetime_deadline: float = math.inf
    _close_reason: str | None = None  # decided once: see _ending
    _expired: bool = False  # the close reason is the deadline that fired
    _error: BaseException | None = None
    _error_reason: str | None = None
    _pending: set[Message[Any]] | None = None
    _tasks: int = 0
    _task_scopes: set[trio.CancelScope] | None = None
    _actor_done: bool = False
    _ended: bool = False

    def __repr__(self) -> str:
        return f"<Session {short_id(self._id)}… {self._state.value} {self._transport.value}>"

    @property
    def id(self) -> str:
        """The session id: 192 random bits from `secrets`, URL-safe base64 (32 characters)."""
        return self._id

    @property
    def state(self) -> SessionState:
        return self._state

    @property
    def transport(self) -> Transport:
        return self._transport

    @property
    def principal(self) -> str | None:
        """Who owns the session (set at creation or by authentication); never changes once set."""
        return self._principal

    @property
    def created_at(self) -> datetime:
        return _wall(self._created_wall)

    @property
    def last_activity_at(self) -> datetime:
        return _wall(self._created_wall + (self._last_activity - self._created))

    @property
    def created(self) -> float:
        """Creation time on trio's clock."""
        return self._created

    @property
    def last_activity(self) -> float:
        """Time of the last activity on trio's clock."""
        return self._last_activity

    @property
    def is_initialized(self) -> bool:
        return self._initialized

    @property
    def is_authenticated(self) -> bool:
        return self._authenticated

    @property
    def client_info(self) -> Any:
        return self._client_info

    @property
    def protocol_version(self) -> Any:
        return self._protocol_version

    @property
    def capabilities(self) -> Any:
        return self._capabilities

    @property
    def metadata(self) -> Mapping[str, Any]:
        """A read-only view; change it with `Supervisor.set_metadata` or ``ctx.metadata``."""
        return _EMPTY if self._metadata is None else MappingProxyType(self._metadata)

    @property
    def in_flight(self) -> int:
        """Calls awaiting a reply plus ``ctx.busy()`` blocks; the idle clock stops while > 0."""
        return self._in_flight

    @property
    def messages_total(self) -> int:
        """Messages delivered to the mailbox (sends and calls)."""
        return self._messages

    @property
    def mailbox_depth(self) -> int:
        """Messages sent to this session that its actor has not taken yet.

        Senders waiting for room in a full mailbox count too, so this can exceed
        ``mailbox_size`` while there is backpressure.
        """
        return self._depth

    @property
    def mailbox_high_water(self) -> int:
        """The highest `mailbox_depth` so far."""
        return self._high_water

    @property
    def close_reason(self) -> str | None:
        """Why the session is closing or ended (``None`` while it serves).

        Decided once: the reason given to `Supervisor.close_session` (or ``"shutdown"``), the
        deadline that fired (``"idle-timeout"``, ``"init-timeout"``, ``"max-lifetime"``),
        ``"actor-returned"``; nothing that happens later replaces it. A failure (``FAILED``)
        is reported by the terminal event's reason and error.
        """
        _ending(self)
        return self._close_reason

    @property
    def deadline(self) -> float:
        """When the session ends unless something changes, on trio's clock (``inf``: never).

        While serving: the earliest of the idle deadline (``last_activity + idle_timeout``; none
        while a call is in flight), the init deadline (until ``READY``) and the lifetime deadline.
        While closing: when the actor is cancelled if it has not returned. Once a deadline has
        fired: that deadline; nothing moves it any more.
        """
        if _ending(self):
            return self._scope.deadline
        return self._hard if self._in_flight else min(self._hard, self._idle_deadline())

    def _idle_deadline(self) -> float:
        # _armed carries up to deadline_slack of headroom; report the exact idle deadline.
        return self._last_activity + self._idle_timeout

    def snapshot(self) -> SessionSnapshot:
        """A frozen copy of this view as it is now."""
        return SessionSnapshot(
            id=self._id,
            state=self._state,
            transport=self._transport,
            principal=self._principal,
            created_at=_wall(self._created_wall),
            last_activity_at=_wall(self._created_wall + (self._last_activity - self._created)),
            is_initialized=self._initialized,
            is_authenticated=self._authenticated,
            client_info=self._client_info,
            protocol_version=self._protocol_version,
            capabilities=self._capabilities,
            metadata=_EMPTY if not self._metadata else MappingProxyType(dict(self._metadata)),
            in_flight=self._in_flight,
            messages_total=self._messages,
            close_reason=self._close_reason,
            created=self._created,
            last_activity=self._last_activity,
        )


@attrs.frozen(kw_only=True)
class SessionSnapshot:
    """A frozen copy of a `Session` at one moment (what `Event.session` carries).

    Its repr shows the first 8 characters of the id only (full ids are credentials).
    """

    id: str = attrs.field(repr=lambda session_id: repr(_short(session_id)))
    state: SessionState
    transport: Transport
    principal: str | None
    created_at: datetime
    last_activity_at: datetime
    is_initialized: bool
    is_authenticated: bool
    client_info: Any
    protocol_version: Any
    capabilities: Any
    metadata: Mapping[str, Any]
    in_flight: int
    messages_total: int
    close_reason: str | None
    created: float  # trio clock
    last_activity: float  # trio clock


@final
class Message(Generic[T]):
    """One message in a session's mailbox.

    ``payload`` is what the sender passed. A message sent with `Supervisor.call` expects a reply:
    answer it once with `reply` or `fail`. Users receive messages; they never construct them.
    """

    __slots__ = ("_outcome", "_session", "_status", "_waiter", "payload")

    def __init__(self, payload: T, session: Session, status: int) -> None:
        self.payload = payload
        self._session = session
        self._status = status
        self._waiter: trio.lowlevel.Task | None = None
        self._outcome: outcome.Outcome[Any] | None = None

    def __repr__(self) -> str:
        kind = "call" if self._status != _ONE_WAY else "send"
        return f"<Message {kind} {self.payload!r:.60}>"

    @property
    def expects_reply(self) -> bool:
        """True for a `call` whose caller is still waiting for the answer."""
        return self._status == _PENDING

    def reply(self, value: Any = None) -> bool:
        """Answer a call with ``value``: the caller's ``await sup.call(...)`` returns it.

        Returns:
            True if the answer was delivered; False if no answer is expected (the message came
            from `send`, or the caller was cancelled or timed out: a race the actor cannot see).

        Raises:
            RuntimeError: the message was already answered.
        """
        return self._settle(outcome.Value(value))

    def fail(self, exc: BaseException) -> bool:
        """Answer a call with an exception: the caller's ``await sup.call(...)`` raises ``exc``.

        Returns and raises as `reply`; also raises TypeError if ``exc`` is not an exception.
        """
        if not isinstance(exc, BaseException):
            raise TypeError(f"fail() needs an exception instance, got {exc!r}")
        return self._settle(outcome.Error(exc))

    def _settle(self, result: outcome.Outcome[Any]) -> bool:
        status = self._status
        if status != _PENDING:
            if status == _ANSWERED:
                raise RuntimeError("this message was already answered")
            return False
        self._status = _ANSWERED
        session = self._session
        if session._pending is not None:
            session._pending.discard(self)
        self._deliver(result)
        _end_flight(session)
        return True

    def _deliver(self, result: outcome.Outcome[Any]) -> None:
        if self._waiter is not None:
            trio.lowlevel.reschedule(self._waiter, result)
            self._waiter = None
        else:
            self._outcome = result

    def _abandon(self) -> None:
        """The caller stops waiting (cancelled, timed out, or the message was never delivered)."""
        if self._status == _PENDING:
            self._status = _ABANDONED
            session = self._session
            if session._pending is not None:
                session._pending.discard(self)
            _end_flight(session)

    def _close(self, exc: BaseException) -> None:
        """The session ended before answering: the caller gets ``exc``."""
        if self._status == _PENDING:
            self._status = _ABANDONED
            self._deliver(outcome.Error(exc))

    async def _wait(self) -> Any:
        if self._outcome is not None:
            # Answered while the caller was still on its way here (it waited for room in a
            # full mailbox): `reply` has returned True, so the answer must not be lost to a
            # cancellation now.
            await trio.lowlevel.cancel_shielded_checkpoint()
            return self._outcome.unwrap()
        self._waiter = trio.lowlevel.current_task()

        def abort(_: trio.lowlevel.RaiseCancelT) -> trio.lowlevel.Abort:
            self._waiter = None
            self._abandon()
            return trio.lowlevel.Abort.SUCCEEDED

        return await trio.lowlevel.wait_task_rescheduled(abort)


# The session's end and its idle clock, shared by the supervisor, the context and messages. Kept
# as functions of the record so the hot paths (send, call, reply, touch) touch no other object.
#
# While a session serves (no close reason yet), its scope's deadline is min(_armed, _hard), and
# it fires when trio's clock reaches it. A trio deadline that fired cannot be undone, so nothing
# may move it afterwards either: the deadline that fired says which one it was (_expiry_reason).
# Every path that would move it first checks `now >= min(_armed, _hard)` (or asks the scope).


def _ending(session: Session) -> bool:
    """True once the session's end is decided; decides an expiry whose deadline has fired.

    A session is ending once it has a close reason (closed, shut down, its actor returned, an
    expiry already decided), a failure, or a cancelled scope: with neither a close reason nor
    an error, only its deadline can have cancelled it (`Supervisor` cancels the scope itself
    only after setting one of the two). Not for hot paths: ``cancel_called`` reads the clock.
    """
    if session._close_reason is not None or session._error is not None:
        return True
    if session._scope.cancel_called:
        session._close_reason = _expiry_reason(session)
        session._expired = True
        return True
    return False


def _expiry_reason(session: Session) -> str:
    """Which deadline fired: read from the scope's deadline, which nothing moved since."""
    fired = session._scope.deadline
    if fired >= session._lifetime_deadline:
        return "max-lifetime"
    if not session._initialized and fired >= session._hard:
        return "init-timeout"
    return "idle-timeout"


def _check_live(session: Session) -> None:
    if session._ended:
        raise SessionClosed(f"session {_short(session._id)} has ended")


def _short(session_id: object) -> str:
    """An id as messages show it: `short_id` and an ellipsis (full ids are credentials)."""
    text = str(session_id)
    short = short_id(text)
    return short + "…" if len(text) > len(short) else short


def _touch(session: Session, now: float) -> None:
    """Activity at ``now``: push the idle deadline if it passes the armed one (deadline_slack).

    No effect once a deadline has fired: the session is ending, and the deadline that fired
    stays as it is.
    """
    if session._close_reason is None:
        if now >= session._hard:
            return  # the init or lifetime deadline fired
        if session._in_flight == 0:
            target = now + session._idle_timeout
            if target > session._armed:
                if now >= session._armed:
                    return  # the idle deadline fired
                session._armed = armed = target + session._slack
                session._scope.deadline = armed if armed < session._hard else session._hard
    session._last_activity = now


def _begin_flight(session: Session) -> None:
    """Work begins (a call, a ``ctx.busy()`` block): the idle clock stops.

    The caller has made sure no deadline has fired yet (`Supervisor.call` compares the clock
    with it in the same step; ``ctx.busy()`` asks `_ending`), so pausing cannot move a deadline
    that fired.
    """
    session._in_flight += 1
    if session._in_flight == 1 and session._armed != math.inf and session._close_reason is None:
        # Pause the idle clock: only the init and lifetime deadlines stay armed.
        session._armed = math.inf
        session._scope.deadline = session._hard


def _end_flight(session: Session) -> None:
    if session._ended:
        return  # the count was reset when the session ended: never below zero
    session._in_flight -= 1
    now = trio.current_time()
    if session._close_reason is None:
        armed, hard = session._armed, session._hard
        if now >= (armed if armed < hard else hard):
            return  # a deadline fired while the work was in flight: it stays
        session._last_activity = now
        if session._in_flight == 0 and session._idle_timeout != math.inf:
            session._armed = armed = now + session._idle_timeout + session._slack
            session._scope.deadline = armed if armed < hard else hard
    else:
        session._last_activity = now


@final
class Mailbox(Generic[T]):
    """A session's incoming messages, in order. Iterate with ``async for``.

    Iteration ends when the session is asked to close (`Supervisor.close_session`, shutdown),
    after the messages already buffered have been delivered, so no message accepted into the
    mailbox is silently skipped, except calls whose caller already gave up.
    """

    __slots__ = ("_session",)

    def __init__(self, session: Session) -> None:
        self._session = session

    def __aiter__(self) -> Mailbox[T]:
        return self

    async def __anext__(self) -> Message[T]:
        # The loop of `receive`, inlined: an idle session waits here, and one coroutine frame
        # fewer per waiting session is ~5% of an idle session's memory.
        session = self._session
        recv = session._recv
        assert recv is not None
        while True:
            try:
                msg = await recv.receive()
            except (trio.EndOfChannel, trio.ClosedResourceError):
                raise StopAsyncIteration from None
            session._depth -= 1
            if msg._status != _ABANDONED:
                return msg

    async def receive(self) -> Message[T]:
        """Wait for the next message.

        Raises:
            trio.EndOfChannel: the session is closing and the mailbox is drained.
        """
        session = self._session
        recv = session._recv
        assert recv is not None
        while True:
            msg = await recv.receive()
            session._depth -= 1
            if msg._status != _ABANDONED:
                return msg

    def receive_nowait(self) -> Message[T]:
        """Take the next message if there is one.

        Raises:
            trio.WouldBlock: the mailbox is empty.
            trio.EndOfChannel: the session is closing and the mailbox is drained.
        """
        session = self._session
        recv = session._recv
        assert recv is not None
        while True:
            msg = recv.receive_nowait()
            session._depth -= 1
            if msg._status != _ABANDONED:
                return msg
