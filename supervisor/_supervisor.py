"""The supervisor: one trio nursery, a registry, capacity, deadlines, routing and shutdown."""

from __future__ import annotations

import math
import secrets
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping
from contextlib import asynccontextmanager
from typing import Any, TypeAlias, final

import trio

from ._config import SupervisorConfig
from ._events import EventBus, EventKind, Subscription
from ._exceptions import (
    CapacityError,
    InvalidTransition,
    MailboxFull,
    PrincipalMismatch,
    SessionClosed,
    SessionNotFound,
    SupervisorClosed,
)
from ._session import (
    _ONE_WAY,
    _PENDING,
    Message,
    Session,
    SessionContext,
    SessionSnapshot,
    _begin_flight,
    _touch,
)
from ._state import LIVE_STATES, SessionState, Transport, check_transition
from ._stats import SessionMetrics, SessionStatistics

__all__ = ["Actor", "Supervisor", "open_supervisor"]

#: What a session runs: ``async def actor(ctx: SessionContext) -> None``.
Actor: TypeAlias = Callable[[SessionContext[Any]], Awaitable[object]]

_S = SessionState
_ID_BYTES = 24  # 192 bits; token_urlsafe gives 32 visible ASCII characters


class _Waiter:
    """A task waiting in `Supervisor.create_session` for a slot."""

    __slots__ = ("closed", "event", "principal", "reserved")

    def __init__(self, principal: str | None) -> None:
        self.principal = principal
        self.event = trio.Event()
        self.reserved = False
        self.closed = False


@final
class Supervisor:
    """Owns sessions: each is an actor task in this supervisor's nursery.

    Get one from `open_supervisor`; never construct it. Every method is synchronous and O(1)
    unless its docstring says otherwise; ``async`` methods are trio checkpoints.
    """

    def __init__(self, config: SupervisorConfig, nursery: trio.Nursery) -> None:
        self._config = config
        self._nursery = nursery
        self._sessions: dict[str, Session] = {}
        self._used = 0  # sessions not yet ended + slots reserved for woken waiters
        self._by_principal: dict[str, int] = {}
        self._waiters: deque[_Waiter] = deque()
        self._bus = EventBus()
        self._closing = False
        self._all_ended = trio.Event()
        self._shutdown_done = trio.Event()
        self._by_state = dict.fromkeys(SessionState, 0)
        self._by_transport = dict.fromkeys(Transport, 0)
        self._authenticated = 0
        self._created_total = 0
        self._closed_total = 0
        self._expired_total = 0
        self._failed_total = 0
        self._rejected_total = 0
        self._messages_total = 0
        self._calls_total = 0
        self._high_water = 0
        # Hot-path constants.
        idle = config.idle_timeout
        self._idle = math.inf if idle is None else float(idle)
        self._slack = float(config.deadline_slack)
        self._mailbox_size = config.mailbox_size

    def __repr__(self) -> str:
        return f"<Supervisor {len(self._sessions)}/{self._config.max_sessions} sessions>"

    @property
    def config(self) -> SupervisorConfig:
        return self._config

    @property
    def closing(self) -> bool:
        """True once shutdown has begun: no new session is admitted."""
        return self._closing

    # -- registry ------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._sessions)

    def __contains__(self, session_id: object) -> bool:
        return session_id in self._sessions

    def has_session(self, session_id: str) -> bool:
        """True while the session exists (created, not yet ended). O(1)."""
        return session_id in self._sessions

    def get_session(self, session_id: str) -> Session:
        """The live view of a session.

        Raises:
            SessionNotFound: no such session, or it has ended.
        """
        try:
            return self._sessions[session_id]
        except KeyError:
            raise SessionNotFound(f"no session {_short(session_id)}") from None

    def sessions(self) -> list[Session]:
        """Every session not yet ended, oldest first. O(n)."""
        return list(self._sessions.values())

    def active_sessions(self) -> list[Session]:
        """Sessions that are serving (created, initializing, ready), oldest first. O(n)."""
        return [s for s in self._sessions.values() if s._state in LIVE_STATES]

    # -- creating sessions ---------------------------------------------------------------------

    def create_session_nowait(
        self,
        actor: Actor,
        *,
        transport: Transport = Transport.IN_PROCESS,
        principal: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> Session:
        """Create a session and start its actor task (it runs from the next scheduling point).

        A ``principal`` given here authenticates the session at birth and binds it for life.
        Never blocks.

        Raises:
            CapacityError: `max_sessions` or the principal's limit is reached. A slot freed
                while callers wait in `create_session` goes to them, never to this call.
            SupervisorClosed: shutdown has begun.
        """
        if self._closing:
            raise SupervisorClosed("the supervisor is shutting down")
        if not self._has_room(principal):
            self._rejected_total += 1
            raise CapacityError(self._capacity_message(principal))
        self._reserve(principal)
        return self._spawn(actor, transport, principal, metadata)

    async def create_session(
        self,
        actor: Actor,
        *,
        transport: Transport = Transport.IN_PROCESS,
        principal: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> Session:
        """Like `create_session_nowait`, but wait for a slot instead of raising CapacityError.

        Waiters are admitted first come, first served (a waiter held back by its principal's
        limit does not hold up others). Cancellation-safe: a cancelled waiter takes no slot.

        Raises:
            SupervisorClosed: shutdown began before a slot was found.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        if self._closing:
            raise SupervisorClosed("the supervisor is shutting down")
        if self._has_room(principal):
            self._reserve(principal)
            session = self._spawn(actor, transport, principal, metadata)
            await trio.lowlevel.cancel_shielded_checkpoint()
            return session
        waiter = _Waiter(principal)
        self._waiters.append(waiter)
        try:
            await waiter.event.wait()
        except BaseException:
            if waiter.reserved:
                self._release(principal)
            else:
                self._waiters.remove(waiter)
            raise
        if waiter.closed or self._closing:
            if waiter.reserved:
                self._release(principal)
            raise SupervisorClosed("the supervisor is shutting down")
        return self._spawn(actor, transport, principal, metadata)

    def _has_room(self, principal: str | None) -> bool:
        if self._used >= self._config.max_sessions:
            return False
        limit = self._config.max_sessions_per_principal
        return limit is None or principal is None or self._by_principal.get(principal, 0) < limit

    def _capacity_message(self, principal: str | None) -> str:
        if self._used >= self._config.max_sessions:
            return f"maximum sessions ({self._config.max_sessions}) reached"
        return (
            f"maximum sessions per principal ({self._config.max_sessions_per_principal}) "
            f"reached for {principal!r}"
        )

    def _reserve(self, principal: str | None) -> None:
        self._used += 1
        if principal is not None:
            self._by_principal[principal] = self._by_principal.get(principal, 0) + 1

    def _release(self, principal: str | None) -> None:
        self._used -= 1
        if principal is not None:
            left = self._by_principal[principal] - 1
            if left:
                self._by_principal[principal] = left
            else:
                del self._by_principal[principal]
        if self._waiters:
            self._admit_waiters()
        elif self._used == 0 and self._closing:
            self._all_ended.set()

    def _admit_waiters(self) -> None:
        while self._waiters and self._used < self._config.max_sessions:
            waiter = next((w for w in self._waiters if self._has_room(w.principal)), None)
            if waiter is None:
                return
            self._waiters.remove(waiter)
            self._reserve(waiter.principal)
            waiter.reserved = True
            waiter.event.set()

    def _spawn(
        self,
        actor: Actor,
        transport: Transport,
        principal: str | None,
        metadata: Mapping[str, Any] | None,
    ) -> Session:
        if transport.__class__ is not Transport:
            transport = Transport(transport)
        config = self._config
        now = trio.current_time()
        idle = self._idle
        armed = now + idle + self._slack
        hard = math.inf
        lifetime_deadline = math.inf
        if config.init_timeout is not None:
            hard = now + config.init_timeout
        if config.max_lifetime is not None:
            lifetime_deadline = now + config.max_lifetime
            hard = min(hard, lifetime_deadline)
        send, recv = trio.open_memory_channel[Message[Any]](self._mailbox_size)
        session_id = secrets.token_urlsafe(_ID_BYTES)
        session = Session(
            id=session_id,
            transport=transport,
            principal=principal,
            created=now,
            created_wall=time.time(),
            last_activity=now,
            idle_timeout=idle,
            slack=self._slack,
            scope=trio.CancelScope(deadline=armed if armed < hard else hard),
            send=send,
            recv=recv,
            armed=armed,
            hard=hard,
            lifetime_deadline=lifetime_deadline,
        )
        if principal is not None:
            session._authenticated = True
            self._authenticated += 1
        if metadata:
            session._metadata = dict(metadata)
        self._sessions[session_id] = session
        self._by_state[_S.CREATED] += 1
        self._by_transport[transport] += 1
        self._created_total += 1
        if self._bus:
            self._bus.publish(EventKind.CREATED, session, now)
            if principal is not None:
                self._bus.publish(EventKind.AUTHENTICATED, session, now)
        self._nursery.start_soon(self._run_actor, session, actor, name=actor)
        return session

    # -- the actor task ------------------------------------------------------------------------

    async def _run_actor(self, session: Session, actor: Actor) -> None:
        try:
            with session._scope:
                await actor(SessionContext(session, self))
        except trio.Cancelled:
            # Not our scope's cancellation (that one is caught above): the supervisor's nursery
            # is being cancelled.
            if session._close_reason is None:
                session._close_reason = "cancelled"
            raise
        except BaseException as exc:
            if isinstance(exc, SessionClosed) and session._close_reason is not None:
                # The actor stopped because its own session is closing (say ctx.initialize()
                # after shutdown began): a clean close, not a failure.
                return
            if session._error is None:
                session._error = exc
                session._error_reason = "actor-error"
            if not isinstance(exc, Exception):
                raise  # KeyboardInterrupt and friends are not ours to swallow
        finally:
            self._actor_returned(session)

    def _actor_returned(self, session: Session) -> None:
        session._actor_done = True
        assert session._send is not None and session._recv is not None
        session._send.close()
        session._recv.close()
        if session._tasks:
            assert session._task_scopes is not None
            for scope in session._task_scopes:
                scope.cancel()
        else:
            self._end(session)

    def _start_session_task(
        self,
        session: Session,
        async_fn: Callable[..., Awaitable[object]],
        args: tuple[object, ...],
        name: object,
    ) -> None:
        if session._actor_done:
            raise SessionClosed(f"session {_short(session._id)} has ended")
        session._tasks += 1
        if session._task_scopes is None:
            session._task_scopes = set()
        self._nursery.start_soon(
            self._run_session_task, session, async_fn, args, name=name or async_fn
        )

    async def _run_session_task(
        self,
        session: Session,
        async_fn: Callable[..., Awaitable[object]],
        args: tuple[object, ...],
    ) -> None:
        scope = trio.CancelScope()
        assert session._task_scopes is not None
        session._task_scopes.add(scope)
        if session._actor_done:
            scope.cancel()
        try:
            with scope:
                await async_fn(*args)
        except trio.Cancelled:
            raise
        except BaseException as exc:
            if session._error is None:
                session._error = exc
                session._error_reason = "task-error"
            session._scope.cancel()
            if not isinstance(exc, Exception):
                raise
        finally:
            session._task_scopes.discard(scope)
            session._tasks -= 1
            if session._tasks == 0 and session._actor_done:
                self._end(session)

    def _end(self, session: Session) -> None:
        """The actor and its tasks are done: publish the terminal event and free the slot."""
        now = trio.current_time()
        if session._error is not None:
            kind, reason = EventKind.FAILED, session._error_reason
            self._failed_total += 1
        elif session._close_reason is not None:
            kind, reason = EventKind.CLOSED, session._close_reason
            self._closed_total += 1
        elif session._scope.cancel_called:
            kind, reason = EventKind.EXPIRED, self._expiry_reason(session, now)
            self._expired_total += 1
        else:
            kind, reason = EventKind.CLOSED, "actor-returned"
            self._closed_total += 1
        # Set before the last transitions so their snapshots already say why the session ends.
        session._close_reason = reason
        if kind is EventKind.FAILED:
            self._transition(session, _S.ERROR, now)
        else:
            if session._state is not _S.CLOSING:
                self._transition(session, _S.CLOSING, now)
            self._transition(session, _S.CLOSED, now)
        session._ended = True
        del self._sessions[session._id]
        self._by_state[session._state] -= 1
        self._by_transport[session._transport] -= 1
        if session._authenticated:
            self._authenticated -= 1
        if self._bus:
            self._bus.publish(kind, session, now, reason=reason, error=session._error)
        if session._pending:
            closed = SessionClosed(
                f"session {_short(session._id)} ended ({reason}) before replying"
            )
            for msg in session._pending:
                msg._close(closed)
            session._pending = None
        session._in_flight = 0
        self._release(session._principal)

    @staticmethod
    def _expiry_reason(session: Session, now: float) -> str:
        if now >= session._lifetime_deadline:
            return "max-lifetime"
        if not session._initialized and now >= session._hard:
            return "init-timeout"
        return "idle-timeout"

    # -- state ---------------------------------------------------------------------------------

    def _transition(self, session: Session, new: SessionState, now: float) -> None:
        old = session._state
        check_transition(old, new)
        session._state = new
        by_state = self._by_state
        by_state[old] -= 1
        by_state[new] += 1
        if new is _S.READY:
            session._initialized = True
            if session._hard != session._lifetime_deadline:
                # The init deadline no longer applies.
                session._hard = session._lifetime_deadline
                if session._close_reason is None:
                    armed = session._armed
                    session._scope.deadline = armed if armed < session._hard else session._hard
        if self._bus:
            self._bus.publish(EventKind.STATE_CHANGED, session, now, old_state=old, new_state=new)

    def _check_live(self, session: Session) -> None:
        if session._ended:
            raise SessionClosed(f"session {_short(session._id)} has ended")

    def _check_serving(self, session: Session) -> None:
        if session._close_reason is not None:
            raise SessionClosed(f"session {_short(session._id)} is closing")

    def _set_state(self, session: Session, state: SessionState) -> None:
        self._check_live(session)
        state = SessionState(state)
        if state is _S.CLOSING:
            self._close(session, "closed")  # no-op when already closing
            return
        if state in (_S.CLOSED, _S.ERROR):
            raise InvalidTransition(
                f"a session reaches {state.value!r} when its actor ends; "
                "use close_session() to end it"
            )
        self._check_serving(session)
        now = trio.current_time()
        self._transition(session, state, now)
        _touch(session, now)

    def _initialize(
        self,
        session: Session,
        client_info: Any,
        protocol_version: Any,
        capabilities: Any,
    ) -> None:
        self._check_live(session)
        self._check_serving(session)
        if session._state not in (_S.CREATED, _S.INITIALIZING):
            raise InvalidTransition(
                f"cannot initialize a session in state {session._state.value!r}"
            )
        now = trio.current_time()
        if session._state is _S.CREATED:
            self._transition(session, _S.INITIALIZING, now)
        session._client_info = client_info
        session._protocol_version = protocol_version
        session._capabilities = capabilities
        self._transition(session, _S.READY, now)
        _touch(session, now)
        if self._bus:
            self._bus.publish(EventKind.INITIALIZED, session, now)

    def _authenticate(self, session: Session, principal: str) -> None:
        self._check_live(session)
        self._check_serving(session)
        if principal is None:
            raise TypeError("principal must not be None")
        if session._principal is not None:
            if session._principal != principal:
                raise PrincipalMismatch(
                    f"session {_short(session._id)} is bound to another principal"
                )
        else:
            limit = self._config.max_sessions_per_principal
            if limit is not None and self._by_principal.get(principal, 0) >= limit:
                raise CapacityError(
                    f"maximum sessions per principal ({limit}) reached for {principal!r}"
                )
            session._principal = principal
            self._by_principal[principal] = self._by_principal.get(principal, 0) + 1
            # The slot was counted without a principal; it now belongs to this one.
        now = trio.current_time()
        _touch(session, now)
        if not session._authenticated:
            session._authenticated = True
            self._authenticated += 1
            if self._bus:
                self._bus.publish(EventKind.AUTHENTICATED, session, now)

    def _close(self, session: Session, reason: str, grace: float | None = None) -> bool:
        if session._close_reason is not None or session._ended:
            return False
        session._close_reason = reason
        now = trio.current_time()
        if session._state is not _S.CLOSING:
            self._transition(session, _S.CLOSING, now)
        assert session._send is not None
        session._send.close()
        if grace is None:
            grace = self._config.close_grace
        session._armed = math.inf
        session._scope.deadline = now + grace
        return True

    # -- the public operations on a session by id ----------------------------------------------

    def _live(self, session_id: str) -> Session:
        try:
            return self._sessions[session_id]
        except KeyError:
            raise SessionNotFound(f"no session {_short(session_id)}") from None

    def touch(self, session_id: str) -> None:
        """Record activity now: the idle deadline restarts. O(1); the seed's ``updateActivity``.

        Raises:
            SessionNotFound: no such session.
        """
        _touch(self._live(session_id), trio.current_time())

    def set_state(self, session_id: str, state: SessionState) -> None:
        """Move a session to ``state`` if `supervisor.TRANSITIONS` allows it.

        ``CLOSING`` is the same as `close_session`. ``CLOSED`` and ``ERROR`` are reached only
        when the actor ends. Emits ``STATE_CHANGED``; counts as activity.

        Raises:
            SessionNotFound: no such session.
            SessionClosed: the session is closing.
            InvalidTransition: the table does not allow it.
        """
        self._set_state(self._live(session_id), state)

    def initialize_session(
        self,
        session_id: str,
        *,
        client_info: Any = None,
        protocol_version: Any = None,
        capabilities: Any = None,
    ) -> Session:
        """Record the client's handshake and move the session to ``READY`` (via INITIALIZING).

        Emits ``STATE_CHANGED`` for each step, then ``INITIALIZED``. The init deadline stops.

        Raises:
            SessionNotFound: no such session.
            SessionClosed: the session is closing.
            InvalidTransition: the session is already initialized.
        """
        session = self._live(session_id)
        self._initialize(session, client_info, protocol_version, capabilities)
        return session

    def authenticate_session(self, session_id: str, principal: str) -> Session:
        """Bind the session to ``principal`` (once: a session never changes owner).

        Emits ``AUTHENTICATED`` the first time. Counts as activity.

        Raises:
            SessionNotFound: no such session.
            SessionClosed: the session is closing.
            PrincipalMismatch: the session is bound to a different principal.
            CapacityError: the principal already holds `max_sessions_per_principal` sessions.
        """
        session = self._live(session_id)
        self._authenticate(session, principal)
        return session

    def set_metadata(self, session_id: str, key: str, value: Any) -> None:
        """Set one metadata entry; counts as activity (as in the seed).

        Raises:
            SessionNotFound: no such session.
        """
        session = self._live(session_id)
        if session._metadata is None:
            session._metadata = {}
        session._metadata[key] = value
        _touch(session, trio.current_time())

    def get_metadata(self, session_id: str, key: str, default: Any = None) -> Any:
        """One metadata entry, or ``default``.

        Raises:
            SessionNotFound: no such session.
        """
        metadata = self._live(session_id)._metadata
        return default if metadata is None else metadata.get(key, default)

    def close_session(self, session_id: str, reason: str | None = None) -> bool:
        """Ask a session to close: it moves to ``CLOSING`` and its mailbox ends.

        Messages already in the mailbox are still delivered. An actor that has not returned
        within ``close_grace`` is cancelled. The session ends with a ``CLOSED`` event whose
        reason is ``reason`` (default ``"closed"``). Never blocks.

        Returns:
            True if the session was serving and is now closing; False if there is no such
            session or it was already closing.
        """
        session = self._sessions.get(session_id)
        if session is None:
            return False
        return self._close(session, reason or "closed")

    def close_all(self, reason: str | None = None) -> int:
        """`close_session` for every session; returns how many began closing. O(n)."""
        reason = reason or "closed"
        return sum(self._close(s, reason) for s in list(self._sessions.values()))

    # -- messages ------------------------------------------------------------------------------

    def _deliverable(self, session_id: str) -> Session:
        session = self._live(session_id)
        if session._close_reason is not None:
            raise SessionClosed(f"session {_short(session_id)} is closing")
        return session

    def _queue(self, session: Session) -> None:
        # Counted before the message enters the channel (and uncounted if it never does), so
        # the depth never lags behind what the actor can see. A sender waiting for room counts:
        # a high-water mark above mailbox_size means senders met backpressure.
        depth = session._depth = session._depth + 1
        if depth > session._high_water:
            session._high_water = depth
            if depth > self._high_water:
                self._high_water = depth

    def _undelivered(self, session: Session, exc: BaseException) -> BaseException:
        session._depth -= 1
        if isinstance(exc, trio.ClosedResourceError | trio.BrokenResourceError):
            return SessionClosed(f"session {_short(session._id)} closed")
        if isinstance(exc, trio.WouldBlock):
            return MailboxFull(
                f"mailbox of session {_short(session._id)} is full ({self._mailbox_size})"
            )
        return exc

    def _delivered(self, session: Session) -> None:
        session._messages += 1
        self._messages_total += 1

    async def send(self, session_id: str, payload: Any) -> None:
        """Put a message in the session's mailbox, waiting while it is full (backpressure).

        Counts as activity. Cancellation-safe: if cancelled, the message was not delivered.

        Raises:
            SessionNotFound: no such session.
            SessionClosed: the session is closing or ended (also if it does while waiting).
        """
        session = self._deliverable(session_id)
        assert session._send is not None
        self._queue(session)
        try:
            await session._send.send(Message(payload, session, _ONE_WAY))
        except BaseException as exc:
            error = self._undelivered(session, exc)
            if error is exc:
                raise
            raise error from None
        self._delivered(session)
        _touch(session, trio.current_time())

    def send_nowait(self, session_id: str, payload: Any) -> None:
        """Put a message in the session's mailbox, or raise if it is full. Never blocks.

        Raises:
            SessionNotFound: no such session.
            SessionClosed: the session is closing or ended.
            MailboxFull: the mailbox holds ``mailbox_size`` messages already.
        """
        session = self._deliverable(session_id)
        assert session._send is not None
        self._queue(session)
        try:
            session._send.send_nowait(Message(payload, session, _ONE_WAY))
        except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError) as exc:
            raise self._undelivered(session, exc) from None
        self._delivered(session)
        _touch(session, trio.current_time())

    async def call(
        self,
        session_id: str,
        payload: Any,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - the contract names it
    ) -> Any:
        """Send a message that expects a reply, and wait for the reply.

        The session is not idle while the call is in flight: its idle clock restarts when the
        last call in flight ends. Waits while the mailbox is full. Cancellation-safe: a
        cancelled call leaves nothing in flight, and a reply that comes later is dropped.

        Args:
            timeout: seconds to wait for delivery and reply together; ``None``: no limit.

        Returns:
            What the actor passed to ``msg.reply``.

        Raises:
            SessionNotFound: no such session.
            SessionClosed: the session is closing, or ended before replying.
            trio.TooSlowError: no reply within ``timeout``.
            Exception: what the actor passed to ``msg.fail``.
        """
        session = self._deliverable(session_id)
        if timeout is None:
            return await self._call(session, payload)
        with trio.fail_after(timeout):
            return await self._call(session, payload)

    async def _call(self, session: Session, payload: Any) -> Any:
        msg = Message(payload, session, _PENDING)
        send = session._send
        assert send is not None
        _begin_flight(session)
        if session._pending is None:
            session._pending = set()
        session._pending.add(msg)
        self._calls_total += 1
        self._queue(session)
        try:
            try:
                send.send_nowait(msg)
            except trio.WouldBlock:
                await send.send(msg)
        except BaseException as exc:
            msg._abandon()
            error = self._undelivered(session, exc)
            if error is exc:
                raise
            raise error from None
        self._delivered(session)
        return await msg._wait()

    # -- events --------------------------------------------------------------------------------

    def subscribe(
        self,
        kinds: Collection[EventKind] | None = None,
        session_id: str | None = None,
        buffer: int = 256,
        *,
        snapshot: bool = False,
    ) -> Subscription:
        """Receive lifecycle events published from now on.

        Use as ``async with sup.subscribe(...) as events: async for item in events: ...``; items
        are `Event` and, where this subscriber fell behind by more than ``buffer`` events,
        `Lagged`. Publishing never waits for a subscriber.

        Args:
            kinds: only these kinds (default: all).
            session_id: only this session's events.
            buffer: events held for this subscriber before the oldest are dropped.
            snapshot: fill ``subscription.sessions`` with snapshots of the sessions live now.
        """
        sessions: tuple[SessionSnapshot, ...] = ()
        if snapshot:
            sessions = tuple(s.snapshot() for s in self._sessions.values())
        return self._bus.subscribe(kinds, session_id, buffer, sessions)

    # -- figures -------------------------------------------------------------------------------

    def metrics(self) -> SessionMetrics:
        """The seed's four session metrics. O(1)."""
        return SessionMetrics(
            total=len(self._sessions),
            active=self._by_state[_S.READY],
            authenticated=self._authenticated,
            expired=self._expired_total,
        )

    def statistics(self) -> SessionStatistics:
        """Everything the supervisor counts, as a frozen snapshot. O(1)."""
        sessions = self._sessions
        oldest = newest = None
        if sessions:
            oldest = next(iter(sessions.values())).created_at
            newest = next(reversed(sessions.values())).created_at
        return SessionStatistics(
            total=len(sessions),
            by_state=dict(self._by_state),
            by_transport=dict(self._by_transport),
            created_total=self._created_total,
            closed_total=self._closed_total,
            expired_total=self._expired_total,
            failed_total=self._failed_total,
            rejected_total=self._rejected_total,
            oldest=oldest,
            newest=newest,
            active=self._by_state[_S.READY],
            authenticated=self._authenticated,
            max_sessions=self._config.max_sessions,
            waiting=len(self._waiters),
            messages_total=self._messages_total,
            calls_total=self._calls_total,
            mailbox_high_water=self._high_water,
            subscribers=len(self._bus),
            events_dropped_total=self._bus.dropped_total,
        )

    # -- shutdown ------------------------------------------------------------------------------

    async def shutdown(self, grace: float | None = None) -> None:
        """Stop admitting, close every session, wait up to ``grace``, then cancel what remains.

        Every session still gets its terminal event (reason ``"shutdown"`` for those it closes),
        and subscriptions end after delivering them. Idempotent: a second call waits for the
        first to finish. Leaving the `open_supervisor` block calls it.

        Args:
            grace: seconds actors get to return; default ``config.shutdown_grace``.
        """
        if self._closing:
            await self._shutdown_done.wait()
            return
        self._begin_shutdown()
        if grace is None:
            grace = self._config.shutdown_grace
        now = trio.current_time()
        for session in list(self._sessions.values()):
            if not self._close(session, "shutdown", grace):
                # Already closing: keep its own close deadline unless ours is sooner.
                session._scope.deadline = min(session._scope.deadline, now + grace)
        await self._all_ended.wait()
        self._bus.close()
        self._shutdown_done.set()

    def _begin_shutdown(self) -> None:
        self._closing = True
        while self._waiters:
            waiter = self._waiters.popleft()
            waiter.closed = True
            waiter.event.set()
        if self._used == 0:
            self._all_ended.set()


def _short(session_id: object) -> str:
    """An id prefix for messages and logs: full ids are credentials and stay out of both."""
    text = str(session_id)
    return text[:8] + "…" if len(text) > 8 else text


@asynccontextmanager
async def open_supervisor(**config: Any) -> AsyncIterator[Supervisor]:
    """Open a supervisor: a nursery whose tasks are the session actors.

    Keywords are the fields of `SupervisorConfig`. Leaving the block normally shuts down
    gracefully (`Supervisor.shutdown`); an exception in the block cancels every session at once
    (each still gets its terminal event, reason ``"cancelled"``) and propagates.

    Raises:
        TypeError: an unknown keyword.
        ValueError: a value out of range.
    """
    cfg = SupervisorConfig(**config)
    async with trio.open_nursery() as nursery:
        supervisor = Supervisor(cfg, nursery)
        try:
            yield supervisor
        except BaseException:
            supervisor._begin_shutdown()
            nursery.cancel_scope.cancel()
            raise
        else:
            await supervisor.shutdown()
    supervisor._bus.close()
