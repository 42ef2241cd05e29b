"""The session record (a read-only `Session` view for users), its messages and its mailbox.

The bottom of the core: everything here is a function of one session record, and it imports
only the leaves (`supervisor._state`, `supervisor._ids`, `supervisor._exceptions`). The
supervisor (`supervisor._supervisor`) and the actor's handle on it (`SessionContext`, defined
there) build on it; nothing here calls up.
"""

from __future__ import annotations

import math
from collections import deque
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
    # Owned by the supervisor: the actor's scope, its mailbox (see `Mailbox`) and its deadlines.
    # The scope has no trio deadline while the session serves: the supervisor's timers
    # (`supervisor._timers`) hold one entry per session, at `_armed`, and cancel it when due.
    _scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    _queue: deque[Message[Any]] | None = None  # buffered messages, oldest first
    _receiver: trio.lowlevel.Task | None = None  # the task waiting in the mailbox, if any
    _senders: deque[tuple[trio.lowlevel.Task, Message[Any]]] | None = None  # waiting for room
    _mail_closed: bool = False  # asked to close: the mailbox ends once drained
    _armed: float = math.inf  # when this session's timer entry fires; inf: none
    _hard: float = math.inf  # min(init deadline while not READY, lifetime deadline)
    _lifetime_deadline: float = math.inf
    _cut: float = math.inf  # once ending: when the actor is cancelled (a fired deadline: now)
    _close_reason: str | None = None  # decided once: see _ending
    _expired: bool = False  # the close reason is the deadline that fired
    _error: BaseException | None = None
    _error_reason: str | None = None
    _pending: set[Message[Any]] | None = None
    _tasks: int = 0
    _task_scopes: set[trio.CancelScope] | None = None
    _actor_done: bool = False
    _ended: bool = False
    # Durable sessions only (see supervisor._durable): the registered actor's name, the
    # activation's epoch and owner token, the last confirmed save, why the activation ends in
    # a passivation (None: it does not, unless a shutdown or the idle deadline ends it), recent
    # restart times, the lock that orders the session's store writes.
    _durable: str | None = None
    _epoch: int = 1
    _owner: str | None = None
    _saved: Any = None
    _passivate: str | None = None
    _superseded: bool = False
    _restarts: deque[float] | None = None
    _restart_count: int = 0
    _store_lock: trio.Lock | None = None
    _gone: trio.Event | None = None  # set when the session ends (made by whoever waits for it)
    _writes: int = 0  # background store writes not yet done
    _flushed: trio.Event | None = None  # set when _writes drops to 0 (made by whoever waits)

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
    def durable(self) -> bool:
        """True for a durable session: its saved state outlives its actor (see `Supervisor`)."""
        return self._durable is not None

    @property
    def epoch(self) -> int:
        """Which activation of a durable session this is: 1 at creation, one more each time
        it is activated again (0 for a session that is not durable)."""
        return self._epoch if self._durable is not None else 0

    @property
    def passivating(self) -> bool:
        """True once a durable session's activation is ending (or has ended) in a passivation:
        its idle timeout, a shutdown, eviction at capacity, `Supervisor.passivate_session`. It
        will be activated again; it has not ended for good."""
        _ending(self)
        return _passivating(self)

    @property
    def restarts(self) -> int:
        """How many times this activation's actor was restarted after raising."""
        return self._restart_count

    @property
    def deadline(self) -> float:
        """When the session ends unless something changes, on trio's clock (``inf``: never).

        While serving: the earliest of the idle deadline (``last_activity + idle_timeout``; none
        while a call is in flight), the init deadline (until ``READY``) and the lifetime deadline.
        While closing: when the actor is cancelled if it has not returned. Once a deadline has
        fired: that deadline; nothing moves it any more.
        """
        if _ending(self):
            return self._cut
        return _due(self)

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
# While a session serves (no close reason yet), it is due at `_due`: the earliest of its idle
# deadline (none while work is in flight) and its init and lifetime deadlines (`_hard`). Nothing
# on the hot paths arms a timer: activity only moves `_last_activity` (the due time only ever
# moves later), and the supervisor's timer entry for the session, at or before the due time,
# re-arms itself at the new one when it fires (`supervisor._timers`). A session is expired the
# first time anything sees it due (its timer, a send or call, `closing`, `close_reason`...):
# `_expire` decides the reason and cancels the actor, and nothing moves that deadline afterwards.


def _due(session: Session) -> float:
    """When a serving session expires unless something changes (trio clock; inf: never)."""
    hard = session._hard
    if session._in_flight:
        return hard
    idle = session._last_activity + session._idle_timeout
    return idle if idle < hard else hard


def _expire(session: Session, fired: float) -> None:
    """The deadline ``fired`` has passed: decide the reason once and cancel the actor."""
    if fired >= session._lifetime_deadline:
        reason = "max-lifetime"
    elif not session._initialized and fired >= session._hard:
        reason = "init-timeout"
    else:
        reason = "idle-timeout"
    session._close_reason = reason
    session._expired = True
    session._cut = fired
    session._scope.cancel()


def _ending(session: Session, now: float | None = None) -> bool:
    """True once the session's end is decided; decides an expiry whose deadline has passed.

    A session is ending once it has a close reason (closed, shut down, its actor returned, an
    expiry already decided) or a failure, or once it is due at ``now`` (default: the clock);
    `_expire` then decides it.
    """
    if session._close_reason is not None or session._error is not None:
        return True
    due = _due(session)
    if due <= (trio.current_time() if now is None else now):
        _expire(session, due)
        return True
    return False


def _passivating(session: Session) -> bool:
    """Does this durable session's activation end in a passivation (not for good)? Decided by
    the end already decided (see `_ending`): a failure or a refused write never passivates."""
    if session._durable is None or session._superseded or session._error is not None:
        return False
    reason = session._close_reason
    if session._passivate is not None:
        return reason == session._passivate  # not if another end was decided first
    return reason == "shutdown" or (session._expired and reason == "idle-timeout")


def _check_live(session: Session) -> None:
    if session._ended:
        raise SessionClosed(f"session {_short(session._id)} has ended")


def _short(session_id: object) -> str:
    """An id as messages show it: `short_id` and an ellipsis (full ids are credentials)."""
    text = str(session_id)
    short = short_id(text)
    return short + "…" if len(text) > len(short) else short


def _touch(session: Session, now: float) -> None:
    """Activity at ``now``: the idle deadline restarts from now. O(1), arms nothing.

    No effect once a deadline has passed: the session is ending (or about to be found so), and
    the deadline that passed stays as it is.
    """
    if session._close_reason is None and now >= _due(session):
        return  # a deadline passed
    session._last_activity = now


def _begin_flight(session: Session) -> None:
    """Work begins (a call, a ``ctx.busy()`` block): the idle clock stops.

    The caller has made sure no deadline has passed yet (`Supervisor.call` compares the clock
    with it in the same step; ``ctx.busy()`` asks `_ending`), so pausing cannot revive one.
    """
    session._in_flight += 1


def _end_flight(session: Session) -> None:
    if session._ended:
        return  # the count was reset when the session ended: never below zero
    session._in_flight -= 1
    now = trio.current_time()
    if session._close_reason is None and now >= session._hard:
        return  # the init or lifetime deadline passed while the work was in flight: it stays
    session._last_activity = now


# The mailbox: a single-consumer queue parked on trio.lowlevel (a memory channel's semantics
# for one receiver, in a few slots of the record). Messages are handed straight to a waiting
# receiver; otherwise buffered up to mailbox_size; beyond that, senders wait in line (`_put`).
# Closing (`_close_mailbox`) lets the receiver drain what is buffered, then ends it; senders
# still waiting get ClosedResourceError. When the actor is done (`_drop_mailbox`) whatever is
# buffered is dropped and waiting senders get BrokenResourceError.


def _put_nowait(session: Session, msg: Message[Any], capacity: int) -> None:
    """Deliver or buffer ``msg``; raises WouldBlock when full (or others already wait)."""
    if session._mail_closed:
        raise trio.ClosedResourceError
    if session._actor_done:
        raise trio.BrokenResourceError
    receiver = session._receiver
    if receiver is not None:
        session._receiver = None
        trio.lowlevel.reschedule(receiver, outcome.Value(msg))
        return
    queue = session._queue
    if queue is None:
        if capacity == 0:
            raise trio.WouldBlock
        queue = session._queue = deque()
    if len(queue) < capacity and not session._senders:
        queue.append(msg)
        return
    raise trio.WouldBlock


async def _put(session: Session, msg: Message[Any], capacity: int) -> None:
    """`_put_nowait`, waiting in line while the mailbox is full. A checkpoint; if cancelled,
    ``msg`` was not delivered."""
    await trio.lowlevel.checkpoint_if_cancelled()
    try:
        _put_nowait(session, msg, capacity)
    except trio.WouldBlock:
        pass
    else:
        await trio.lowlevel.cancel_shielded_checkpoint()
        return
    senders = session._senders
    if senders is None:
        senders = session._senders = deque()
    entry = (trio.lowlevel.current_task(), msg)
    senders.append(entry)

    def abort(_: trio.lowlevel.RaiseCancelT) -> trio.lowlevel.Abort:
        senders.remove(entry)
        return trio.lowlevel.Abort.SUCCEEDED

    await trio.lowlevel.wait_task_rescheduled(abort)


def _take_nowait(session: Session) -> Message[Any]:
    """The next message; raises WouldBlock (empty) or EndOfChannel (closed and drained)."""
    queue = session._queue
    senders = session._senders
    if queue:
        msg = queue.popleft()
        if senders:
            task, waiting = senders.popleft()
            queue.append(waiting)
            trio.lowlevel.reschedule(task)
        return msg
    if senders:  # mailbox_size 0: straight from a waiting sender
        task, msg = senders.popleft()
        trio.lowlevel.reschedule(task)
        return msg
    if session._mail_closed or session._actor_done:
        raise trio.EndOfChannel
    raise trio.WouldBlock


def _close_mailbox(session: Session) -> None:
    """Asked to close: the receiver drains what is buffered, then the mailbox ends."""
    session._mail_closed = True
    _end_waiters(session, trio.ClosedResourceError)


def _drop_mailbox(session: Session) -> None:
    """The actor is done: buffered messages are dropped, waiting senders fail."""
    queue = session._queue
    if queue:
        session._depth -= len(queue)
        queue.clear()
    _end_waiters(session, trio.BrokenResourceError)


def _end_waiters(session: Session, error: type[Exception]) -> None:
    """The mailbox ends for its waiters: the receiver (the actor, or a background task of the
    session) with a value meaning the end (see `Mailbox.__anext__`), senders with ``error``."""
    receiver = session._receiver
    if receiver is not None:
        session._receiver = None
        trio.lowlevel.reschedule(receiver, outcome.Value(None))
    senders = session._senders
    while senders:
        task, _ = senders.popleft()
        trio.lowlevel.reschedule(task, outcome.Error(error()))


@final
class Mailbox(Generic[T]):
    """A session's incoming messages, in order. Iterate with ``async for``.

    Iteration ends when the session is asked to close (`Supervisor.close_session`, shutdown),
    after the messages already buffered have been delivered, so no message accepted into the
    mailbox is silently skipped, except calls whose caller already gave up. One task at a time
    receives: a second that waits while another does raises `trio.BusyResourceError`.
    """

    __slots__ = ("_session",)

    def __init__(self, session: Session) -> None:
        self._session = session

    def __aiter__(self) -> Mailbox[T]:
        return self

    async def __anext__(self) -> Message[T]:
        # `receive`, inlined: an idle session waits here, and a coroutine frame fewer per
        # waiting session is a few percent of an idle session's memory.
        try:
            session = self._session
            while True:
                if (
                    session._queue
                    or session._senders
                    or session._mail_closed
                    or session._actor_done
                ):
                    await trio.lowlevel.checkpoint_if_cancelled()
                    msg = _take_nowait(session)
                    await trio.lowlevel.cancel_shielded_checkpoint()
                else:
                    if session._receiver is not None:
                        raise trio.BusyResourceError(
                            "another task is already waiting for this mailbox's next message"
                        )
                    session._receiver = trio.lowlevel.current_task()
                    msg = await trio.lowlevel.wait_task_rescheduled(self._abort)
                    if msg is None:  # the mailbox ended (cheaper than an exception thrown in)
                        raise StopAsyncIteration
                session._depth -= 1
                if msg._status != _ABANDONED:
                    return msg
        except trio.EndOfChannel:
            raise StopAsyncIteration from None

    async def receive(self) -> Message[T]:
        """Wait for the next message.

        Raises:
            trio.EndOfChannel: the session is closing and the mailbox is drained.
            trio.BusyResourceError: another task is waiting for this mailbox's next message.
        """
        session = self._session
        while True:
            if session._queue or session._senders or session._mail_closed or session._actor_done:
                await trio.lowlevel.checkpoint_if_cancelled()
                msg = _take_nowait(session)  # nothing runs in between: it cannot block
                await trio.lowlevel.cancel_shielded_checkpoint()
            else:
                if session._receiver is not None:
                    raise trio.BusyResourceError(
                        "another task is already waiting for this mailbox's next message"
                    )
                session._receiver = trio.lowlevel.current_task()
                msg = await trio.lowlevel.wait_task_rescheduled(self._abort)
                if msg is None:  # the mailbox ended
                    raise trio.EndOfChannel
            session._depth -= 1
            if msg._status != _ABANDONED:
                return msg

    def _abort(self, _: trio.lowlevel.RaiseCancelT) -> trio.lowlevel.Abort:
        self._session._receiver = None
        return trio.lowlevel.Abort.SUCCEEDED

    def receive_nowait(self) -> Message[T]:
        """Take the next message if there is one.

        Raises:
            trio.WouldBlock: the mailbox is empty.
            trio.EndOfChannel: the session is closing and the mailbox is drained.
        """
        session = self._session
        while True:
            msg = _take_nowait(session)
            session._depth -= 1
            if msg._status != _ABANDONED:
                return msg
