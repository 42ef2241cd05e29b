"""The supervisor and the actor's handle on it.

`Supervisor` owns one trio nursery, the registry, capacity, deadlines, routing and shutdown;
`SessionContext` is what each actor gets to act on its own session. Both build on the session
record, messages and mailbox of `supervisor._session` (which knows nothing of this module) and
on the event bus of `supervisor._events`.
"""

from __future__ import annotations

import heapq
import json
import logging
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Iterator, Mapping
from contextlib import (
    AbstractAsyncContextManager,
    asynccontextmanager,
    contextmanager,
    nullcontext,
    suppress,
)
from typing import TYPE_CHECKING, Any, Generic, TypeAlias, TypeVar, final

import trio

from ._config import SupervisorConfig
from ._durable import DurableRecord, SessionStore, StoreError, Superseded, json_metadata
from ._events import EventBus, EventKind, Subscription
from ._exceptions import (
    CapacityError,
    InvalidTransition,
    MailboxFull,
    PrincipalMismatch,
    SessionClosed,
    SessionNotFound,
    SupervisorClosed,
    SupervisorError,
)
from ._ids import new_session_id
from ._session import (
    _ONE_WAY,
    _PENDING,
    Mailbox,
    Message,
    Session,
    SessionSnapshot,
    _begin_flight,
    _check_live,
    _close_mailbox,
    _drop_mailbox,
    _due,
    _end_flight,
    _ending,
    _expire,
    _passivating,
    _put,
    _put_nowait,
    _short,
    _touch,
)
from ._state import LIVE_STATES, SessionState, Transport, check_transition
from ._stats import SessionMetrics, SessionStatistics
from ._timers import EXPIRY_COST, Timers

if TYPE_CHECKING:
    from ._cluster import ClusterHook

logger = logging.getLogger("supervisor")

#: How often (trio seconds) a supervisor with a store purges expired passivated records.
_PURGE_EVERY = 300.0

#: Beyond ``close_grace``, how long an admission waits for the slot of the session it
#: passivated to make room in a full cluster (the slot goes back through the cluster's store).
_EVICTION_SLACK = 1.0

__all__ = ["Actor", "SessionContext", "Supervisor", "open_supervisor"]

T = TypeVar("T")

_S = SessionState
_TRANSPORTS = ", ".join(repr(t.value) for t in Transport)


@final
class SessionContext(Generic[T]):
    """The actor's handle on its own session, passed as the actor's only argument.

    Created by the supervisor, never by users. Everything here acts on this session without a
    registry lookup. Once the session is closing (or a deadline has fired), state changes
    (`initialize`, `authenticate`, `set_state`) raise `SessionClosed`; an actor that lets that
    propagate ends cleanly (a ``CLOSED`` or ``EXPIRED`` event, not ``FAILED``), so actor code
    need not guard against a close that races with its start.
    """

    __slots__ = ("_session", "_supervisor")

    def __init__(self, session: Session, supervisor: Supervisor) -> None:
        self._session = session
        self._supervisor = supervisor

    def __repr__(self) -> str:
        return f"<SessionContext {self._session!r}>"

    @property
    def session(self) -> Session:
        return self._session

    @property
    def id(self) -> str:
        return self._session._id

    @property
    def supervisor(self) -> Supervisor:
        return self._supervisor

    @property
    def mailbox(self) -> Mailbox[T]:
        """This session's messages; iteration ends when the session is asked to close."""
        return Mailbox(self._session)

    @property
    def metadata(self) -> dict[str, Any]:
        """This session's metadata, as a mutable dict owned by the actor."""
        session = self._session
        if session._metadata is None:
            session._metadata = {}
        return session._metadata

    @property
    def closing(self) -> bool:
        """True once the session is ending: asked to close, shut down, or a deadline fired."""
        return _ending(self._session)

    @property
    def durable(self) -> bool:
        """True when this session is durable (``create_session(..., durable=True)``)."""
        return self._session._durable is not None

    @property
    def saved(self) -> Any:
        """The state this durable session saved last (confirmed by the store), or ``None``.

        An actor starts from it: after a passivation, a crash (restart), or on another node.
        A fresh copy: changing it changes nothing until `save` is called.
        """
        saved = self._session._saved
        return None if saved is None else json.loads(saved)

    async def save(self, state: Any) -> None:
        """Save ``state`` (a JSON-serializable value) as this durable session's snapshot.

        Write-through: returns once the store has confirmed it, so a reply sent after it
        never acknowledges a state that could be lost. Saves are written in order.

        Raises:
            TypeError: the session is not durable, or ``state`` is not JSON-serializable.
            Superseded: the session was activated again elsewhere (or ended there): this
                activation is stale, and the session now ends here (reason ``"superseded"``);
                the store keeps the newer activation's state.
            StoreError: the store failed; the state is not saved.
            SessionClosed: the session has ended.
        """
        await self._supervisor._save(self._session, state)

    def touch(self) -> None:
        """Record activity: the idle deadline restarts from now. O(1), never blocks.

        No effect once a deadline has fired (the session is ending).

        Raises:
            SessionClosed: the session has ended.
        """
        _check_live(self._session)
        _touch(self._session, trio.current_time())

    def set_state(self, state: SessionState) -> None:
        """Validated state change; see `Supervisor.set_state`."""
        self._supervisor._set_state(self._session, state)

    def initialize(
        self,
        *,
        client_info: Any = None,
        protocol_version: Any = None,
        capabilities: Any = None,
    ) -> None:
        """Record the client's handshake, move to ``READY``; see `Supervisor.initialize_session`."""
        self._supervisor._initialize(self._session, client_info, protocol_version, capabilities)

    def authenticate(self, principal: str) -> None:
        """Bind this session to ``principal``; see `Supervisor.authenticate_session`."""
        self._supervisor._authenticate(self._session, principal)

    def close(self, reason: str | None = None) -> bool:
        """Ask this session to close (the mailbox ends); see `Supervisor.close_session`."""
        return self._supervisor._close(self._session, _check_reason(reason))

    def start_soon(
        self, async_fn: Callable[..., Awaitable[object]], *args: object, name: object = None
    ) -> None:
        """Run ``async_fn(*args)`` as a background task of this session.

        The task is cancelled when the actor returns (or the session otherwise ends), and the
        session ends, and frees its slot, only when every such task has finished. An exception
        in the task (a stray `trio.Cancelled` included) fails the session like one raised by
        the actor (a ``FAILED`` event with reason ``"task-error"``); siblings are unaffected.

        Raises:
            SessionClosed: the actor has already returned.
        """
        self._supervisor._start_session_task(self._session, async_fn, args, name)

    @contextmanager
    def busy(self) -> Iterator[None]:
        """Mark work in flight: the idle clock stops inside the block and restarts when it ends.

        Nesting and overlapping with calls is fine: the clock restarts when the last ends. A
        block still open when the session ends leaves `Session.in_flight` at 0, never below.

        Raises:
            SessionClosed: the session has ended.
        """
        session = self._session
        _check_live(session)
        _ending(session)  # decide an expiry that fired, so the pause cannot move its deadline
        _begin_flight(session)
        try:
            yield
        finally:
            _end_flight(session)


#: What a session runs: ``async def actor(ctx: SessionContext) -> None``.
Actor: TypeAlias = Callable[[SessionContext[Any]], Awaitable[object]]


@final
class _Retained:
    """A passivated session this supervisor expires when its retention ends: what that takes
    (its record's epoch, and what its ``EXPIRED`` event's snapshot shows)."""

    __slots__ = (
        "created",
        "created_wall",
        "durable",
        "epoch",
        "id",
        "last_activity",
        "metadata",
        "principal",
        "transport",
    )

    def __init__(self, session: Session) -> None:
        self.id = session._id
        self.epoch = session._epoch
        self.durable = session._durable
        self.transport = session._transport
        self.principal = session._principal
        self.created = session._created
        self.created_wall = session._created_wall
        self.last_activity = session._last_activity
        self.metadata = session._metadata

    def ended(self) -> Session:
        """The ended session, as its ``EXPIRED`` event shows it."""
        session = Session(
            id=self.id,
            transport=self.transport,
            principal=self.principal,
            created=self.created,
            created_wall=self.created_wall,
            last_activity=self.last_activity,
            idle_timeout=math.inf,
            metadata=self.metadata,
        )
        session._state = _S.CLOSED
        session._authenticated = self.principal is not None
        session._durable = self.durable
        session._epoch = self.epoch
        session._close_reason = "retention"
        session._expired = True
        session._ended = True
        return session


def _store_lock(session: Session) -> trio.Lock:
    """The lock that orders a durable session's store writes (made on first use)."""
    lock = session._store_lock
    if lock is None:
        lock = session._store_lock = trio.Lock()
    return lock


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

    def __init__(
        self,
        config: SupervisorConfig,
        nursery: trio.Nursery,
        cluster: ClusterHook | None = None,
        store: SessionStore | None = None,
    ) -> None:
        self._config = config
        self._nursery = nursery
        self._cluster = cluster
        self._store = store
        self._durable_actors: dict[str, Actor] = {}
        self._activating: dict[str, trio.Event] = {}
        # Sessions with store writes still on their way, by id (an activation waits for them).
        self._flushing: dict[str, Session] = {}
        # Passivated sessions this supervisor remembers until their retention ends.
        self._retained: dict[str, _Retained] = {}
        self._retention: list[tuple[float, int, _Retained]] = []  # heap: (trio deadline, seq, _)
        self._retention_seq = 0
        self._retention_kick = trio.Event()
        self._writes = 0  # background store writes not yet done
        self._writes_done = trio.Event()
        self._passivated_total = 0
        self._activated_total = 0
        self._restarted_total = 0
        self._sessions: dict[str, Session] = {}
        self._used = 0  # sessions not yet ended + slots reserved for woken waiters
        self._by_principal: dict[str, int] = {}
        self._waiters: deque[_Waiter] = deque()
        self._bus = EventBus()
        if cluster is not None:
            self._bus.sink = cluster.event
        self._closing = False
        self._all_ended = trio.Event()
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
        self._mailbox_size = config.mailbox_size
        self._timers = Timers(float(config.deadline_slack))
        self._timers_scope = trio.CancelScope()
        self._retention_scope = trio.CancelScope()

    def __repr__(self) -> str:
        return f"<Supervisor {len(self._sessions)}/{self._config.max_sessions} sessions>"

    @property
    def config(self) -> SupervisorConfig:
        return self._config

    @property
    def cluster(self) -> ClusterHook | None:
        """The cluster this supervisor's node belongs to (``open_supervisor(cluster=...)``)."""
        return self._cluster

    @property
    def store(self) -> SessionStore | None:
        """Where durable sessions keep their state (``open_supervisor(store=...)``)."""
        return self._store

    @property
    def closing(self) -> bool:
        """True once shutdown has begun: no new session is admitted."""
        return self._closing

    def register_durable(self, name: str, actor: Actor) -> None:
        """Register ``actor`` under ``name``, so durable sessions running it can be activated
        again: by this supervisor after a passivation, by another process on the same store
        (a restart), by another node of the cluster. Register at startup, everywhere.

        The name is what the store keeps; ``create_session(actor, durable=True)`` finds it by
        comparing actors with ``==`` (so a bound method registered once matches).

        Raises:
            TypeError: ``name`` is not a str or ``actor`` is not callable.
            ValueError: ``name`` is empty, or already registered for another actor.
        """
        if not isinstance(name, str):
            raise TypeError(f"name must be a str, got {type(name).__name__}")
        if not name:
            raise ValueError("name must not be empty")
        if not callable(actor):
            raise TypeError(f"actor must be callable, got {actor!r}")
        known = self._durable_actors.get(name)
        if known is not None and known != actor:
            raise ValueError(f"a different actor is registered as {name!r} already")
        self._durable_actors[name] = actor

    def _durable_name(self, actor: Actor) -> str:
        if self._store is None:
            raise ValueError("durable sessions need a store: open_supervisor(store=...)")
        for name, known in self._durable_actors.items():
            if known == actor:
                return name
        raise ValueError(
            f"{actor!r} is not registered: call register_durable(name, actor) first, so the "
            "session can be activated again"
        )

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
        durable: bool = False,
    ) -> Session:
        """Create a session and start its actor task (it runs from the next scheduling point).

        A ``principal`` given here authenticates the session at birth and binds it for life.
        Never blocks. The arguments are checked before anything is reserved: a call that
        raises leaves no trace (no slot, no event, no count).

        ``durable=True`` (needs ``open_supervisor(store=...)`` and an actor registered with
        `register_durable`): the session's saved state (``ctx.save``) outlives its actor. Its
        idle timeout and a shutdown passivate it instead of ending it, an actor that raises is
        restarted (``max_restarts``), and `activate` brings it back, here or on another node.

        Raises:
            TypeError: ``actor`` is not callable, ``principal`` is not a str, or ``metadata``
                is not a mapping.
            ValueError: ``transport`` is not a `Transport` (or its value), or ``principal``
                is empty; ``durable`` without a store or a registered actor.
            CapacityError: `max_sessions` or the principal's limit is reached. A slot freed
                while callers wait in `create_session` goes to them, never to this call.
            SupervisorClosed: shutdown has begun.
        """
        transport, meta = _check_create(actor, transport, principal, metadata)
        name = self._durable_name(actor) if durable else None
        if self._closing:
            raise SupervisorClosed("the supervisor is shutting down")
        if not self._has_room(principal):
            self._rejected_total += 1
            raise CapacityError(self._capacity_message(principal))
        cluster = self._cluster
        if cluster is not None:
            refused = cluster.admit_nowait(principal)
            if refused is not None:
                self._rejected_total += 1
                raise CapacityError(refused)
        self._reserve(principal)
        return self._spawn(actor, transport, principal, meta, name)

    async def create_session(
        self,
        actor: Actor,
        *,
        transport: Transport = Transport.IN_PROCESS,
        principal: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        wait: bool = True,
        durable: bool = False,
    ) -> Session:
        """Like `create_session_nowait`, but wait for a slot instead of raising CapacityError.

        Waiters are admitted first come, first served (a waiter held back by its principal's
        limit does not hold up others). Invalid arguments raise at once, before waiting.
        Cancellation-safe: a cancelled waiter takes no slot.

        In cluster mode (``open_supervisor(cluster=...)``) the slot is also taken cluster-wide,
        which may take a round trip to the cluster's store; waiting then also waits for a slot
        freed on another node.

        With ``passivate_at_capacity``, a full supervisor passivates its least recently used
        idle durable session and this call waits for its slot (even with ``wait=False``).

        Args:
            wait: False: refuse with CapacityError when full instead of waiting (in cluster
                mode, unlike `create_session_nowait`, this may still take the round trip, so
                it is refused only when the cluster is full).
            durable: as `create_session_nowait`.

        Raises:
            TypeError, ValueError: as `create_session_nowait`.
            CapacityError: full and ``wait`` is False, or the cluster's store is unreachable.
            SupervisorClosed: shutdown began before a slot was found.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        transport, meta = _check_create(actor, transport, principal, metadata)
        name = self._durable_name(actor) if durable else None
        if self._closing:
            raise SupervisorClosed("the supervisor is shutting down")
        cluster = self._cluster
        if self._has_room(principal):
            self._reserve(principal)
            if cluster is None:
                session = self._spawn(actor, transport, principal, meta, name)
                await trio.lowlevel.cancel_shielded_checkpoint()
                return session
            return await self._admit_cluster(cluster, actor, transport, principal, meta, wait, name)
        if not self._evict_for(principal) and not wait:
            self._rejected_total += 1
            raise CapacityError(self._capacity_message(principal))
        await self._wait_for_slot(principal)
        if cluster is not None:
            return await self._admit_cluster(cluster, actor, transport, principal, meta, wait, name)
        return self._spawn(actor, transport, principal, meta, name)

    async def _wait_for_slot(self, principal: str | None) -> None:
        """Wait in line for a slot; it is reserved when this returns (nothing if it raises)."""
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

    async def _admit_cluster(
        self,
        cluster: ClusterHook,
        actor: Actor,
        transport: Transport,
        principal: str | None,
        meta: dict[str, Any] | None,
        wait: bool,
        durable: str | None = None,
        restored: DurableRecord | None = None,
    ) -> Session:
        """The local slot is reserved: take the cluster's, then spawn (or give both back)."""
        try:
            try:
                await cluster.admit(principal, wait=wait)
            except CapacityError:
                # Full cluster-wide: with passivate_at_capacity, passivate an idle durable
                # session of this node and wait (a grace period at most) for the slot it frees.
                if wait or not self._evict_for(principal, cluster_full=True):
                    raise
                admitted = False
                with trio.move_on_after(self._config.close_grace + _EVICTION_SLACK):
                    await cluster.admit(principal, wait=True)
                    admitted = True
                if not admitted:
                    raise
        except BaseException as exc:
            self._release(principal)
            if isinstance(exc, CapacityError):
                self._rejected_total += 1
            raise
        if self._closing:
            cluster.release(principal)
            self._release(principal)
            raise SupervisorClosed("the supervisor is shutting down")
        return self._spawn(actor, transport, principal, meta, durable, restored)

    def _evict_for(self, principal: str | None, cluster_full: bool = False) -> bool:
        """With ``passivate_at_capacity``: passivate the least recently used idle durable
        session, so a slot frees soon; False when that cannot help (a principal's limit is
        what is reached here, or no durable session is idle). ``cluster_full``: the cluster
        refused the slot (this node may have room of its own)."""
        if not self._config.passivate_at_capacity:
            return False
        if not cluster_full and self._used < self._config.max_sessions:
            return False
        limit = self._config.max_sessions_per_principal
        if (
            limit is not None
            and principal is not None
            and self._by_principal.get(principal, 0) >= limit
        ):
            return False
        now = trio.current_time()
        victim: Session | None = None
        for session in self._sessions.values():
            if (
                session._durable is not None
                and not session._in_flight
                and not _ending(session, now)
                and (victim is None or session._last_activity < victim._last_activity)
            ):
                victim = session
        if victim is None:
            return False
        victim._passivate = "capacity"
        self._close(victim, "capacity")
        return True

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
            self._ended_all()

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
        metadata: dict[str, Any] | None,
        durable: str | None = None,
        restored: DurableRecord | None = None,
    ) -> Session:
        """Make the record and start the actor in the slot just reserved (released on failure).

        ``restored``: a durable session activated again, from its record (same id; created
        when it was first created; ``READY`` already if it had been initialized).
        """
        try:
            config = self._config
            now = trio.current_time()
            wall = time.time()
            idle = self._idle
            created = now
            handshake = None
            if restored is not None:
                created = now - max(0.0, wall - restored.created)
                wall = restored.created
                handshake = restored.handshake
            hard = math.inf
            lifetime_deadline = math.inf
            if config.init_timeout is not None and handshake is None:
                hard = now + config.init_timeout
            if config.max_lifetime is not None:
                lifetime_deadline = created + config.max_lifetime
                hard = min(hard, lifetime_deadline)
            cluster = self._cluster
            if restored is not None:
                session_id = restored.id
            else:
                session_id = new_session_id() if cluster is None else cluster.new_session_id()
            session = Session(
                id=session_id,
                transport=transport,
                principal=principal,
                created=created,
                created_wall=wall,
                last_activity=now,
                idle_timeout=idle,
                hard=hard,
                lifetime_deadline=lifetime_deadline,
                metadata=metadata,
            )
            if durable is not None:
                assert self._store is not None
                session._durable = durable
                session._owner = self._store.node
                if restored is not None:
                    session._epoch = restored.epoch
                    if restored.state is not None:
                        session._saved = json.dumps(restored.state)
                    if handshake is not None:
                        session._state = _S.READY
                        session._initialized = True
                        session._client_info = handshake.get("client_info")
                        session._protocol_version = handshake.get("protocol_version")
                        session._capabilities = handshake.get("capabilities")
            # The task runs from the next scheduling point, after the registration below.
            self._nursery.start_soon(self._run_actor, session, actor, name=actor)
        except BaseException:
            if self._cluster is not None:
                self._cluster.release(principal)
            self._release(principal)
            raise
        if principal is not None:
            session._authenticated = True
            self._authenticated += 1
        self._sessions[session._id] = session
        idle_at = now + idle
        self._timers.arm(session, idle_at if idle_at < hard else hard)
        self._by_state[session._state] += 1
        self._by_transport[transport] += 1
        if self._bus:
            if restored is None:
                self._bus.publish(EventKind.CREATED, session, now)
            else:
                self._bus.publish(EventKind.ACTIVATED, session, now)
            if principal is not None and restored is None:
                self._bus.publish(EventKind.AUTHENTICATED, session, now)
        if restored is None:
            self._created_total += 1
        else:
            self._activated_total += 1
        return session

    # -- the actor task ------------------------------------------------------------------------

    async def _run_actor(self, session: Session, actor: Actor) -> None:
        try:
            while True:
                try:
                    with session._scope:
                        await actor(SessionContext(session, self))
                    return
                except BaseException as exc:
                    # Outside the session's scope: an effective deadline of -inf means a scope
                    # around the supervisor's nursery (or the nursery itself) really is
                    # cancelled.
                    if _only_cancelled(exc) and trio.current_effective_deadline() == -math.inf:
                        if not _ending(session):  # an expiry that fired first stays an expiry
                            session._close_reason = "cancelled"
                        raise
                    if (
                        isinstance(exc, SessionClosed | Superseded)
                        and _ending(session)
                        and session._error is None
                    ):
                        # The actor stopped because its own session is ending (say
                        # ctx.initialize() after shutdown began, or a save refused because
                        # the session is active elsewhere): a clean end, not a failure.
                        return
                    if self._may_restart(session, exc):
                        self._restart(session, exc)
                        continue
                    # Anything else fails this session alone, a stray Cancelled (one the actor
                    # kept from an inner scope) included: it must not cancel the siblings.
                    if session._error is None:
                        session._error = exc
                        session._error_reason = "actor-error"
                    if not _ours_to_swallow(exc):
                        raise  # KeyboardInterrupt and friends are not ours to swallow
                    return
        finally:
            self._actor_returned(session)

    def _may_restart(self, session: Session, exc: BaseException) -> bool:
        """A durable session's actor raised: restart it, within the restart intensity?"""
        if (
            session._durable is None
            or not isinstance(exc, Exception)
            or session._error is not None
            or session._superseded
            or self._closing
            or _ending(session)
        ):
            return False
        now = trio.current_time()
        restarts = session._restarts
        if restarts is None:
            restarts = session._restarts = deque()
        horizon = now - self._config.restart_window
        while restarts and restarts[0] <= horizon:
            restarts.popleft()
        if len(restarts) >= self._config.max_restarts:
            return False
        restarts.append(now)
        return True

    def _restart(self, session: Session, exc: BaseException) -> None:
        """Start the actor again in the same session: the calls it had taken get an error,
        its tasks are cancelled, buffered messages stay for the new actor."""
        session._restart_count += 1
        self._restarted_total += 1
        queued = set(session._queue or ())
        crashed = SessionClosed(
            f"session {_short(session._id)} restarted: its actor raised {type(exc).__name__}"
        )
        for msg in list(session._pending or ()):
            if msg not in queued:
                msg.fail(crashed)
        for scope in session._task_scopes or ():
            scope.cancel()
        session._scope = trio.CancelScope()
        if self._bus:
            self._bus.publish(
                EventKind.RESTARTED, session, trio.current_time(), reason="actor-error", error=exc
            )

    def _actor_returned(self, session: Session) -> None:
        session._actor_done = True
        if not _ending(session):
            session._close_reason = "actor-returned"  # decided now: a later close changes nothing
        # Messages still buffered are dropped (their callers get SessionClosed when the session
        # ends); senders waiting for room uncount themselves when they fail.
        _drop_mailbox(session)
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
        try:
            self._nursery.start_soon(
                self._run_session_task, session, async_fn, args, name=name or async_fn
            )
        except BaseException:
            session._tasks -= 1
            raise

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
        except BaseException as exc:
            if _only_cancelled(exc) and trio.current_effective_deadline() == -math.inf:
                raise  # the supervisor's own cancellation (see _run_actor)
            if session._error is None:
                session._error = exc
                session._error_reason = "task-error"
            session._scope.cancel()
            if not _ours_to_swallow(exc):
                raise
        finally:
            session._task_scopes.discard(scope)
            session._tasks -= 1
            if session._tasks == 0 and session._actor_done:
                self._end(session)

    def _end(self, session: Session) -> None:
        """The actor and its tasks are done: publish the terminal event and free the slot.

        The kind and reason were decided when the session began to end (`_ending`,
        `_actor_returned`, `_close`); only a failure, which always wins, is decided here.
        """
        now = trio.current_time()
        passivated = session._durable is not None and _passivating(session)
        if passivated:
            kind, reason = EventKind.PASSIVATED, session._close_reason
            self._passivated_total += 1
        elif session._error is not None:
            kind, reason = EventKind.FAILED, session._error_reason
            self._failed_total += 1
        elif session._expired:
            kind, reason = EventKind.EXPIRED, session._close_reason
            self._expired_total += 1
        else:
            kind, reason = EventKind.CLOSED, session._close_reason
            self._closed_total += 1
        # Set before the last transitions so their snapshots already say why the session ends.
        session._close_reason = reason
        session._in_flight = 0  # a busy() block still open, or calls still waiting, end here
        if kind is EventKind.FAILED:
            self._transition(session, _S.ERROR, now)
        else:
            if session._state is not _S.CLOSING:
                self._transition(session, _S.CLOSING, now)
            self._transition(session, _S.CLOSED, now)
        session._ended = True
        if session._gone is not None:
            session._gone.set()
        del self._sessions[session._id]
        self._by_state[session._state] -= 1  # an ended session is counted in no state
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
        if session._durable is not None and not session._superseded:
            if passivated:
                self._retain(session, now)
            elif reason != "cancelled":  # cancelled: nothing can be written; the record stays
                self._store_soon(session, self._store_delete)
        cluster = self._cluster
        if cluster is not None:
            cluster.release(session._principal)
        self._release(session._principal)

    # -- durable sessions ----------------------------------------------------------------------

    def _record(self, session: Session, state: str | None) -> DurableRecord:
        """What the store keeps of ``session``, with ``state`` (JSON text) as its snapshot."""
        assert session._durable is not None
        handshake = None
        if session._initialized:
            handshake = {
                "client_info": session._client_info,
                "protocol_version": session._protocol_version,
                "capabilities": session._capabilities,
            }
        return DurableRecord(
            id=session._id,
            actor=session._durable,
            epoch=session._epoch,
            owner=session._owner,
            state=None if state is None else json.loads(state),
            transport=session._transport.value,
            principal=session._principal,
            metadata=json_metadata(session._metadata),
            handshake=handshake,
            created=session._created_wall,
            # Should this node die without passivating it, the record goes a retention later.
            expires=time.time() + self._config.retention,
        )

    async def _save(self, session: Session, state: Any) -> None:
        if session._durable is None:
            raise TypeError(
                f"session {_short(session._id)} is not durable: create_session(durable=True)"
            )
        try:
            text = json.dumps(state)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"a durable session's state must be JSON-serializable: {exc}") from None
        _check_live(session)
        if session._superseded:
            raise Superseded(f"session {_short(session._id)} is active elsewhere")
        assert self._store is not None
        async with _store_lock(session):
            try:
                await self._store.save(self._record(session, text))
            except Superseded:
                self._superseded(session)
                raise
            session._saved = text

    def _superseded(self, session: Session) -> None:
        """A store refused this activation's write: another one holds the session now."""
        session._superseded = True
        if not session._ended:
            self._close(session, "superseded")
        kept = self._retained.get(session._id)
        if kept is not None and kept.epoch == session._epoch:
            del self._retained[session._id]  # its passivation was refused: nothing to expire

    def _store_soon(self, session: Session, write: Callable[[Session], Awaitable[object]]) -> None:
        """Write to the store in the background, in order with the session's other writes."""
        session._writes += 1
        self._flushing[session._id] = session
        self._background(self._store_write(session, write))

    async def _store_write(
        self, session: Session, write: Callable[[Session], Awaitable[object]]
    ) -> None:
        try:
            async with _store_lock(session):
                await write(session)
        except Superseded:
            self._superseded(session)
        except StoreError as exc:
            logger.warning("durable session %s: the store failed (%s)", _short(session._id), exc)
        finally:
            session._writes -= 1
            if not session._writes:
                if self._flushing.get(session._id) is session:
                    del self._flushing[session._id]
                if session._flushed is not None:
                    session._flushed.set()
                    session._flushed = None

    async def _store_handshake(self, session: Session) -> None:
        assert self._store is not None
        await self._store.save(self._record(session, session._saved))

    async def _store_delete(self, session: Session) -> None:
        assert self._store is not None
        await self._store.delete(session._id, session._epoch)

    async def _writes_flushed(self) -> None:
        while self._writes:
            await self._writes_done.wait()

    def _retain(self, session: Session, now: float) -> None:
        """A passivated session: the store keeps it without an owner until its retention ends
        (wall clock), and this supervisor expires it then (trio clock)."""
        retention = self._config.retention
        expires = time.time() + retention
        assert self._store is not None
        store = self._store

        async def passivate(session: Session) -> None:
            await store.passivate(self._record(session, session._saved), expires)

        self._store_soon(session, passivate)
        # What expiring it takes, not the whole record: a day of retention at a high rate of
        # passivations must not hold every session's record (and state) in memory.
        kept = _Retained(session)
        self._retained[session._id] = kept
        self._retention_seq += 1
        heapq.heappush(self._retention, (now + retention, self._retention_seq, kept))
        self._retention_kick.set()

    async def _run_retention(self) -> None:
        """Expire passivated sessions whose retention has run out (their records go), and
        purge now and then the expired records nobody here remembers (a dead node's, an
        earlier process's)."""
        heap = self._retention
        next_purge = trio.current_time()
        while True:
            now = trio.current_time()
            if now >= next_purge:
                next_purge = now + _PURGE_EVERY
                self._background(self._purge())
            while heap and heap[0][0] <= now:
                kept = heapq.heappop(heap)[2]
                session_id = kept.id
                if self._retained.get(session_id) is not kept or session_id in self._sessions:
                    continue  # activated again meanwhile (the entry is stale)
                del self._retained[session_id]
                self._background(self._expire_retained(kept))
            with trio.move_on_at(min(next_purge, heap[0][0] if heap else math.inf)):
                await self._retention_kick.wait()
                self._retention_kick = trio.Event()

    def _background(self, write: Awaitable[None]) -> None:
        """Run a store step in the background, counted as a write (the store stays open
        until it is done)."""
        self._writes += 1

        async def run() -> None:
            try:
                await write
            finally:
                self._writes -= 1
                if not self._writes:
                    self._writes_done.set()
                    self._writes_done = trio.Event()

        self._nursery.start_soon(run, name="supervisor store")

    async def _purge(self) -> None:
        assert self._store is not None
        try:
            await self._store.purge(time.time())
        except StoreError as exc:
            logger.warning("durable sessions: purging expired records failed (%s)", exc)

    async def _expire_retained(self, kept: _Retained) -> None:
        assert self._store is not None
        await self._flushed(kept.id)  # after the passivation's own write
        try:
            deleted = await self._store.delete(kept.id, kept.epoch)
        except StoreError as exc:
            logger.warning(
                "durable session %s: its retention ended but the store failed (%s)",
                _short(kept.id),
                exc,
            )
            return
        if deleted and kept.id not in self._sessions:
            self._expired_total += 1
            if self._bus:
                self._bus.publish(
                    EventKind.EXPIRED, kept.ended(), trio.current_time(), reason="retention"
                )

    async def _flushed(self, session_id: str) -> None:
        """Until the store writes of an activation of ``session_id`` that ended here are done."""
        ended = self._flushing.get(session_id)
        while ended is not None and ended._writes:
            if ended._flushed is None:
                ended._flushed = trio.Event()
            await ended._flushed.wait()

    async def activate(self, session_id: str) -> Session:
        """The session ``session_id``, activated here from its store record if need be.

        A live session here is returned as it is. Otherwise (passivated, its process
        restarted, its node died) the store moves the record to a new epoch owned by this
        supervisor and the registered actor starts with the same id from the last saved state
        (an ``ACTIVATED`` event; the session counts a slot again, and is ``READY`` with the
        saved handshake if it had been initialized). Concurrent calls for one id activate it
        once. A session still ending here (passivating) is waited for first.

        Raises:
            SessionNotFound: no store, no record (never durable, ended for good, expired), or
                no actor registered here under the record's name.
            ActiveElsewhere: another live node holds the session (in cluster mode: relay the
                request there).
            CapacityError: no slot (``passivate_at_capacity`` first passivates an idle one).
            SupervisorClosed: shutdown has begun.
            StoreError: the store failed.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        while True:
            session = self._sessions.get(session_id)
            if session is None:
                break
            if session._durable is None or not _ending(session) or session._superseded:
                return session
            # Ending here: wait until it has passivated (or ended), then activate it again.
            if session._gone is None:
                session._gone = trio.Event()
            await session._gone.wait()
        # An activation that ended here lately may still be writing its end (a passivation,
        # or a deletion): the store must have it before the record is activated again.
        await self._flushed(session_id)
        store = self._store
        if store is None or not isinstance(session_id, str):
            raise SessionNotFound(f"no session {_short(session_id)}")
        if self._closing:
            raise SupervisorClosed("the supervisor is shutting down")
        pending = self._activating.get(session_id)
        if pending is not None:
            await pending.wait()
            return await self.activate(session_id)
        done = self._activating[session_id] = trio.Event()
        try:
            return await self._activate(store, session_id)
        finally:
            del self._activating[session_id]
            done.set()

    async def _activate(self, store: SessionStore, session_id: str) -> Session:
        record = await store.activate(session_id, time.time())
        try:
            actor = self._durable_actors.get(record.actor)
            if actor is None:
                raise SessionNotFound(
                    f"session {_short(session_id)} runs actor {record.actor!r}, which is not "
                    "registered here (register_durable)"
                )
            transport = Transport(record.transport)
            principal = record.principal
            meta = dict(record.metadata) or None
            if self._has_room(principal):
                self._reserve(principal)
            elif self._evict_for(principal):
                await self._wait_for_slot(principal)
            else:
                self._rejected_total += 1
                raise CapacityError(self._capacity_message(principal))
            cluster = self._cluster
            self._retained.pop(session_id, None)
            if cluster is not None:
                return await self._admit_cluster(
                    cluster, actor, transport, principal, meta, False, record.actor, record
                )
            return self._spawn(actor, transport, principal, meta, record.actor, record)
        except BaseException:
            # Not running here after all: give the record back, passivated as it was.
            expires = record.expires or time.time() + self._config.retention
            with trio.CancelScope(shield=True), suppress(SupervisorError):
                await store.passivate(record, expires)
            raise

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
            # The init deadline no longer applies (the timer entry re-arms itself later).
            session._hard = session._lifetime_deadline
        if self._bus:
            self._bus.publish(EventKind.STATE_CHANGED, session, now, old_state=old, new_state=new)

    def _check_serving(self, session: Session) -> None:
        if _ending(session):
            raise SessionClosed(f"session {_short(session._id)} is closing")

    def _set_state(self, session: Session, state: SessionState) -> None:
        _check_live(session)
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
        _check_live(session)
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
        if session._durable is not None:
            self._store_soon(session, self._store_handshake)  # the record's handshake

    def _bindable(self, session: Session, principal: str) -> bool:
        """The checks of binding ``principal``; True when it would be a new binding (False:
        the session is bound to it already)."""
        _check_principal(principal)
        _check_live(session)
        self._check_serving(session)
        if session._principal is not None:
            if session._principal != principal:
                raise PrincipalMismatch(
                    f"session {_short(session._id)} is bound to another principal"
                )
            return False
        limit = self._config.max_sessions_per_principal
        if limit is not None and self._by_principal.get(principal, 0) >= limit:
            raise CapacityError(
                f"maximum sessions per principal ({limit}) reached for {principal!r}"
            )
        return True

    def _authenticate(self, session: Session, principal: str, bound: bool = False) -> None:
        """Bind (or check) the principal; ``bound``: the cluster's principal slot is taken."""
        if self._bindable(session, principal):
            cluster = self._cluster
            if cluster is not None and not bound:
                refused = cluster.bind_nowait(principal)
                if refused is not None:
                    raise CapacityError(refused)
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
        now = trio.current_time()
        if _ending(session, now):
            return False  # its end is decided already (an expiry that passed, actor-returned...)
        session._close_reason = reason
        if session._state is not _S.CLOSING:
            self._transition(session, _S.CLOSING, now)
        _close_mailbox(session)
        if grace is None:
            grace = self._config.close_grace
        self._cut_at(session, now + grace)
        return True

    def _cut_at(self, session: Session, cut: float) -> None:
        """An ending session's actor is cancelled at ``cut`` if it has not returned by then."""
        session._cut = cut
        if cut < session._armed:
            self._timers.arm(session, cut)

    def _on_due(self, session: Session, now: float) -> int:
        """The session's timer entry fired: expire it, cut it, or re-arm the entry (`Timers`)."""
        if session._ended:
            return 1
        if session._close_reason is None and session._error is None:
            due = _due(session)
            if due <= now:
                _expire(session, due)
                return EXPIRY_COST
            if session._in_flight:
                # Only the init and lifetime deadlines apply now; look again an idle period
                # later, so an entry always fires by the time the idle clock could run out.
                check = now + session._idle_timeout
                due = check if check < due else due
            self._timers.arm(session, due)
            return 1
        if session._cut <= now:
            session._scope.cancel()
            return EXPIRY_COST
        self._timers.arm(session, session._cut)
        return 1

    async def _run_timers(self) -> None:
        with self._timers_scope:
            await self._timers.run(self._on_due)

    async def _retention_task(self) -> None:
        with self._retention_scope:
            await self._run_retention()

    # -- the public operations on a session by id ----------------------------------------------

    def _live(self, session_id: str) -> Session:
        try:
            return self._sessions[session_id]
        except KeyError:
            raise SessionNotFound(f"no session {_short(session_id)}") from None

    def touch(self, session_id: str) -> None:
        """Record activity now: the idle deadline restarts. O(1); the seed's ``updateActivity``.

        No effect once a deadline has fired: the session is ending and that deadline stays.

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

    async def bind_principal(self, session_id: str, principal: str) -> Session:
        """`authenticate_session`, which in cluster mode may wait for a round trip.

        In cluster mode a principal's slot is counted cluster-wide; `authenticate_session`
        can only spend a slot this node already holds for the principal, this takes one from
        the cluster's store if need be. Without a cluster it is `authenticate_session`.

        Raises:
            As `authenticate_session`; CapacityError also when the cluster is unreachable.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        session = self._live(session_id)
        cluster = self._cluster
        if cluster is None or not self._bindable(session, principal):
            self._authenticate(session, principal)
            return session
        await cluster.bind(principal)
        fresh = session._principal is None  # else bound meanwhile, by a concurrent caller
        try:
            self._authenticate(session, principal, bound=True)
        except BaseException:
            cluster.unbind(principal)
            raise
        if not fresh:
            cluster.unbind(principal)
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
            session or its end is already decided: it is closing, a deadline has fired (it
            stays ``EXPIRED`` with that deadline's reason), or its actor has returned (it
            stays ``actor-returned``).

        Raises:
            TypeError: ``reason`` is not a str.
        """
        reason = _check_reason(reason)
        session = self._sessions.get(session_id)
        if session is None:
            return False
        return self._close(session, reason)

    def passivate_session(self, session_id: str, reason: str | None = None) -> bool:
        """Ask a durable session to passivate: it closes as with `close_session`, but its
        activation ends in a ``PASSIVATED`` event (reason ``reason``, default
        ``"passivated"``) and its record stays in the store, to be activated again.

        Returns:
            As `close_session`.

        Raises:
            TypeError: ``reason`` is not a str.
            ValueError: the session is not durable (`close_session` ends it).
        """
        reason = _check_reason(reason) if reason is not None else "passivated"
        session = self._sessions.get(session_id)
        if session is None:
            return False
        if session._durable is None:
            raise ValueError(f"session {_short(session_id)} is not durable: close_session ends it")
        if _ending(session):
            return False
        session._passivate = reason
        return self._close(session, reason)

    def close_all(self, reason: str | None = None) -> int:
        """`close_session` for every session; returns how many began closing. O(n)."""
        reason = _check_reason(reason)
        return sum(self._close(s, reason) for s in list(self._sessions.values()))

    # -- messages ------------------------------------------------------------------------------

    def _deliverable(self, session_id: str, now: float) -> Session:
        session = self._live(session_id)
        if _ending(session, now):
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
        A durable session that is passivated (or passivating) is activated first.

        Raises:
            SessionNotFound: no such session.
            SessionClosed: the session is ending (closing, or a deadline fired) or ended (also
                if it does while waiting).
            CapacityError, ActiveElsewhere, StoreError: as `activate`, for a passivated one.
        """
        try:
            session = self._deliverable(session_id, trio.current_time())
        except (SessionNotFound, SessionClosed):
            if not self._reactivates(session_id):
                raise
            session = await self._reactivated(session_id)
        self._queue(session)
        try:
            await _put(session, Message(payload, session, _ONE_WAY), self._mailbox_size)
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
            SessionClosed: the session is ending (closing, or a deadline fired) or ended.
            MailboxFull: the mailbox holds ``mailbox_size`` messages already.
        """
        now = trio.current_time()
        session = self._deliverable(session_id, now)
        self._queue(session)
        try:
            _put_nowait(session, Message(payload, session, _ONE_WAY), self._mailbox_size)
        except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError) as exc:
            raise self._undelivered(session, exc) from None
        self._delivered(session)
        _touch(session, now)

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
        cancelled call leaves nothing in flight, and a reply that comes later is dropped
        (``msg.reply`` returns False); once ``msg.reply`` has returned True the caller gets
        the answer, even if it is cancelled before it resumes.

        A durable session that is passivated (or passivating) is activated first (within
        ``timeout``).

        Args:
            timeout: seconds to wait for delivery and reply together; ``None``: no limit.

        Returns:
            What the actor passed to ``msg.reply``.

        Raises:
            SessionNotFound: no such session.
            SessionClosed: the session is ending (closing, or a deadline fired), or ended
                before replying.
            trio.TooSlowError: no reply within ``timeout``.
            CapacityError, ActiveElsewhere, StoreError: as `activate`, for a passivated one.
            Exception: what the actor passed to ``msg.fail``.
        """
        # Checked at this step's time, so the pause in _begin_flight (same step, no
        # checkpoint between) cannot move a deadline that fired.
        try:
            session = self._deliverable(session_id, trio.current_time())
        except (SessionNotFound, SessionClosed):
            if not self._reactivates(session_id):
                raise
            if timeout is None:
                return await self._call(await self._reactivated(session_id), payload)
            with trio.fail_after(timeout):
                return await self._call(await self._reactivated(session_id), payload)
        if timeout is None:
            return await self._call(session, payload)
        with trio.fail_after(timeout):
            return await self._call(session, payload)

    def _reactivates(self, session_id: str) -> bool:
        """Would a message for ``session_id``, not deliverable now, activate it? When a store
        may hold it: not live here, or passivating (not closing for good, nor shutting down)."""
        if self._store is None or self._closing:
            return False
        session = self._sessions.get(session_id)
        return session is None or (session._durable is not None and _passivating(session))

    async def _reactivated(self, session_id: str) -> Session:
        await self.activate(session_id)
        return self._deliverable(session_id, trio.current_time())

    async def _call(self, session: Session, payload: Any) -> Any:
        msg = Message(payload, session, _PENDING)
        _begin_flight(session)
        if session._pending is None:
            session._pending = set()
        session._pending.add(msg)
        self._calls_total += 1
        self._queue(session)
        try:
            try:
                _put_nowait(session, msg, self._mailbox_size)
            except trio.WouldBlock:
                await _put(session, msg, self._mailbox_size)
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
            passivated_total=self._passivated_total,
            activated_total=self._activated_total,
            restarted_total=self._restarted_total,
            retained=len(self._retained),
        )

    # -- shutdown ------------------------------------------------------------------------------

    async def shutdown(self, grace: float | None = None) -> None:
        """Stop admitting, close every session, wait up to ``grace``, then cancel what remains.

        Every session still gets its terminal event (reason ``"shutdown"`` for those it closes),
        and subscriptions end after delivering them. Leaving the `open_supervisor` block calls
        it.

        Idempotent and cancellation-safe: every call returns once the last session has ended
        (concurrent callers all return then), and a later call's ``grace`` can shorten the wait,
        never lengthen it. Cancelling a call cancels every session still running at once (they
        still get their terminal events); a later call, or leaving the block, then waits only
        for those actors to finish, not for another grace period.

        Args:
            grace: seconds actors get to return; default ``config.shutdown_grace``.

        Raises:
            ValueError: ``grace`` is not a number of seconds >= 0 (nothing was done).
        """
        if grace is None:
            grace = self._config.shutdown_grace
        elif not _is_seconds(grace):
            raise ValueError(f"grace must be a number of seconds >= 0, got {grace!r}")
        if not self._closing:
            self._begin_shutdown()
        now = trio.current_time()
        deadline = now + grace
        for session in list(self._sessions.values()):
            if not self._close(session, "shutdown", grace) and session._cut > deadline:
                # Already ending: keep its own cut unless ours is sooner. (A deadline that
                # fired is in the past, so it never moves.)
                self._cut_at(session, deadline)
        if not self._all_ended.is_set():
            try:
                await self._all_ended.wait()
            except BaseException:
                self._cancel_remaining()
                raise
        else:
            await trio.lowlevel.cancel_shielded_checkpoint()
        self._bus.close()

    def _begin_shutdown(self) -> None:
        self._closing = True
        while self._waiters:
            waiter = self._waiters.popleft()
            waiter.closed = True
            waiter.event.set()
        if self._used == 0:
            self._ended_all()

    def _ended_all(self) -> None:
        """Shutting down and the last session has ended: nothing will be published any more,
        so every subscription ends now (even if the shutdown that got here was cancelled)."""
        self._all_ended.set()
        self._bus.close()

    def _cancel_remaining(self) -> None:
        """A shutdown was cancelled: cancel every session still running, at once.

        Every one of them is ending already (closed by the shutdown, expired, or its actor
        returned), so the scope is never cancelled without a decided reason (see `_ending`).
        """
        for session in self._sessions.values():
            session._scope.cancel()


# -- argument checks: before anything is reserved or changed -------------------------------------


def _check_create(
    actor: object,
    transport: object,
    principal: object,
    metadata: object,
) -> tuple[Transport, dict[str, Any] | None]:
    if not callable(actor):
        raise TypeError(
            f"actor must be an async function taking the session's context, got {actor!r:.60}"
        )
    if transport.__class__ is not Transport:
        try:
            transport = Transport(transport)  # type: ignore[arg-type]  # checked here
        except (ValueError, TypeError):
            raise ValueError(
                f"transport must be a Transport or one of {_TRANSPORTS}, got {transport!r:.60}"
            ) from None
    assert isinstance(transport, Transport)
    if principal is not None:
        _check_principal(principal)
    if metadata is None:
        return transport, None
    if not isinstance(metadata, Mapping):
        raise TypeError(f"metadata must be a mapping or None, got {type(metadata).__name__}")
    return transport, dict(metadata) if metadata else None


def _check_principal(principal: object) -> None:
    # The value itself stays out of the message: a principal may be a credential's subject.
    if not isinstance(principal, str):
        raise TypeError(f"principal must be a str, got {type(principal).__name__}")
    if not principal:
        raise ValueError("principal must be a non-empty str")


def _check_reason(reason: object) -> str:
    if reason is None:
        return "closed"
    if not isinstance(reason, str):
        raise TypeError(f"reason must be a str or None, got {type(reason).__name__}")
    return reason or "closed"


def _is_seconds(value: object) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and not math.isnan(value)
        and value >= 0
    )


# -- how an actor or a background task ended -----------------------------------------------------


def _only_cancelled(exc: BaseException) -> bool:
    """A `trio.Cancelled`, or a group of nothing else (an inner nursery that was cancelled)."""
    if isinstance(exc, trio.Cancelled):
        return True
    return isinstance(exc, BaseExceptionGroup) and all(_only_cancelled(e) for e in exc.exceptions)


def _ours_to_swallow(exc: BaseException) -> bool:
    """What fails one session and stops there: an Exception, a stray Cancelled, groups of them.

    KeyboardInterrupt, SystemExit and the like (alone or in a group) are not: they propagate.
    """
    if isinstance(exc, Exception | trio.Cancelled):
        return True
    return isinstance(exc, BaseExceptionGroup) and all(_ours_to_swallow(e) for e in exc.exceptions)


@asynccontextmanager
async def open_supervisor(
    *, cluster: ClusterHook | None = None, store: SessionStore | None = None, **config: Any
) -> AsyncIterator[Supervisor]:
    """Open a supervisor: a nursery whose tasks are the session actors.

    Keywords are the fields of `SupervisorConfig`. Leaving the block normally shuts down
    gracefully (`Supervisor.shutdown`); an exception in the block (a cancellation included)
    cancels every session at once (each still gets its terminal event, reason
    ``"cancelled"``) and propagates. However the block is left, every subscription ends after
    the last terminal event.

    ``cluster``: a `supervisor.cluster.Cluster` (or anything implementing the core's small
    `ClusterHook` interface): the node joins the cluster before the block runs and leaves it
    after the last session has ended; capacity then holds cluster-wide.

    ``store``: where durable sessions keep their state (`supervisor.durable.SqliteStore`, or
    `supervisor.cluster.Cluster.store`); opened after joining the cluster, closed once the last
    session has ended and the last write has been confirmed. A graceful exit passivates the
    durable sessions (they are activated again by the next process on the same store).

    Raises:
        TypeError: an unknown keyword.
        ValueError: a value out of range.
    """
    cfg = SupervisorConfig(**config)
    supervisor: Supervisor | None = None
    try:
        async with trio.open_nursery() as nursery:
            supervisor = Supervisor(cfg, nursery, cluster, store)
            # Beside the sessions, until the last has ended.
            nursery.start_soon(supervisor._run_timers, name="supervisor timers")
            joined: AbstractAsyncContextManager[None] = (
                nullcontext() if cluster is None else cluster.attach(supervisor)
            )
            async with joined:
                opened: AbstractAsyncContextManager[None] = (
                    nullcontext() if store is None else store.open()
                )
                async with opened:
                    if store is not None:
                        nursery.start_soon(supervisor._retention_task, name="supervisor retention")
                    try:
                        yield supervisor
                    except BaseException:
                        supervisor._begin_shutdown()
                        nursery.cancel_scope.cancel()
                        raise
                    else:
                        await supervisor.shutdown()
                        supervisor._retention_scope.cancel()
                        await supervisor._writes_flushed()
            supervisor._timers_scope.cancel()
            supervisor._retention_scope.cancel()
    finally:
        if supervisor is not None:
            supervisor._bus.close()
