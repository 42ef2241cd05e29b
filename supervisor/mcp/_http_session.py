"""The HTTP session actor: one session's requests, its drain, its event store view.

`McpHttpApp` creates one supervised session per ``initialize``, with an `_HttpSession` that it
and the session's actor (`_run_http_session`) share: the session's lean wire (`_transport._Wire`)
and the count of its requests in flight. The actor runs the SDK's protocol loop over the wire;
each HTTP request of the session runs in its own task (the ASGI server's), counted in by
`_HttpSession.enter` (the idle clock paused, as for a `Supervisor.call`), and does its wire work
there (`_run_request`).
"""

from __future__ import annotations

import logging
import math
import secrets
from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, final

import trio
from mcp.server.streamable_http import (
    GET_STREAM_KEY,
    EventCallback,
    EventMessage,
    EventStore,
)

from .. import SessionClosed, Transport
from ._session import ServerSource, _Handshake, _serve_session
from ._transport import _RELEASE as _RELEASE
from ._transport import _Wire

if TYPE_CHECKING:
    from .. import Message, SessionContext

logger = logging.getLogger("supervisor.mcp")


@final
class _HttpSession:
    """What the app and the actor of one HTTP session share.

    The app creates it with the session and finds it by session id; the actor calls `started`
    when it starts and sets ``draining`` when it stops taking requests. `enter`/`leave` count a
    request in and out: in flight for the drain, and (``pinned``) busy for the idle clock.
    """

    __slots__ = (
        "_idle",
        "count",
        "ctx",
        "draining",
        "handshake",
        "opening",
        "opening_busy",
        "wire",
    )

    def __init__(self, wire: _Wire) -> None:
        self.wire = wire
        self.ctx: SessionContext[Any] | None = None
        self.handshake: _Handshake | None = None
        #: A deadline fired or a close began: no new requests (404).
        self.draining = False
        self.count = 0
        self._idle: trio.Event | None = None
        #: The opening request is in flight, queued before the actor started.
        self.opening = False
        #: The actor's busy block for it, once the actor has started.
        self.opening_busy: AbstractContextManager[None] | None = None

    def enter_opening(self) -> None:
        """Count the opening request in before the actor has started (it pins it then)."""
        self.count += 1
        self.opening = True

    def started(self, ctx: SessionContext[Any]) -> None:
        """The actor has started: it pins the opening request still in flight."""
        self.ctx = ctx
        if self.opening:
            busy = ctx.busy()
            try:
                busy.__enter__()
            except SessionClosed:
                return
            self.opening_busy = busy

    def leave_opening(self) -> None:
        busy, self.opening_busy, self.opening = self.opening_busy, None, False
        self.leave(busy)

    def enter(self, pinned: bool) -> AbstractContextManager[None] | None:
        """Count a request in; returns the busy block to hand back to `leave` (None: unpinned).

        Raises:
            SessionClosed: the session takes no more requests.
        """
        ctx = self.ctx
        if ctx is None or self.draining or self.wire.inbox.closed:
            raise SessionClosed("the session takes no more requests")
        busy: AbstractContextManager[None] | None = None
        if pinned:
            busy = ctx.busy()
            busy.__enter__()
        self.count += 1
        return busy

    def release(self, busy: AbstractContextManager[None] | None) -> None:
        """The request no longer pauses the idle clock (a stream, not a request)."""
        if busy is not None:
            busy.__exit__(None, None, None)

    def leave(self, busy: AbstractContextManager[None] | None) -> None:
        self.release(busy)
        self.count -= 1
        if self.count == 0 and self._idle is not None:
            self._idle.set()
            self._idle = None

    async def idle(self) -> None:
        """Wait until no request is in flight."""
        if self.count:
            if self._idle is None:
                self._idle = trio.Event()
            await self._idle.wait()


@final
class _SessionEventStore(EventStore):
    """One session's view of the app's (shared) event store: resumable streams stay private.

    The wire, as the SDK's transport, names streams by JSON-RPC request id (``"2"``) or
    ``"_GET_stream"``, the same in every session, and replays whatever the store returns for a
    ``Last-Event-ID``. So each session gets a random namespace of its own (not derived from the
    session id, which must not reach the store or the wire): stream ids and event ids are
    stored and handed out prefixed with it, and an event id without this session's prefix
    (another session's, or another principal's, or a made-up one) is refused exactly like an
    unknown id: nothing is replayed. The store must replay only events of the given event's
    stream (the SDK's contract, and what its example store does); a replay it reports for
    another stream is dropped whole.
    """

    __slots__ = ("_inner", "_prefix")

    def __init__(self, inner: EventStore) -> None:
        self._inner = inner
        self._prefix = secrets.token_hex(8) + "."

    async def store_event(self, stream_id: str, message: Any) -> str:
        event_id = await self._inner.store_event(self._prefix + stream_id, message)
        return self._prefix + str(event_id)

    async def replay_events_after(
        self, last_event_id: str, send_callback: EventCallback
    ) -> str | None:
        prefix = self._prefix
        if not last_event_id.startswith(prefix):
            return None
        replayed: list[EventMessage] = []

        async def collect(event: EventMessage) -> None:
            replayed.append(event)

        stream_id = await self._inner.replay_events_after(last_event_id[len(prefix) :], collect)
        if stream_id is None or not stream_id.startswith(prefix):
            if stream_id is not None:
                logger.error("the event store replayed another session's stream: dropped")
            return None
        stream_id = stream_id[len(prefix) :]
        if stream_id == GET_STREAM_KEY:
            # The resumed stream of server-to-client messages: not a request in flight.
            release = _RELEASE.get()
            if release is not None:
                release()
        for event in replayed:
            event_id = None if event.event_id is None else prefix + event.event_id
            await send_callback(EventMessage(event.message, event_id))
        return stream_id


async def _run_http_session(
    ctx: SessionContext[Any],
    server: ServerSource,
    session: _HttpSession,
) -> None:
    """The actor of one HTTP session: serves the protocol loop until the session ends, then drains.

    The opening request is queued on the wire before the actor starts; the actor pins it (the
    idle clock paused) when it starts. Its mailbox carries no requests: only its end (a close)
    matters.
    """
    wire = session.wire
    guard = _Guard(ctx)
    handshake = _Handshake(ctx=ctx, track_busy=False)
    session.handshake = wire.handshake = handshake
    session.started(ctx)
    serving = trio.CancelScope()
    expiring: list[trio.Event] = []  # set when the drain after a deadline is over
    error: BaseException | None = None
    async with trio.open_nursery() as watcher:
        watcher.start_soon(guard.watch)
        try:
            with guard.scope:
                async with trio.open_nursery() as tasks:

                    def on_message(message: Message[Any]) -> None:
                        if guard.expired.is_set():
                            message.fail(SessionClosed("the session is ending"))
                        elif message.expects_reply:
                            message.reply(None)

                    async def drain(cut: Callable[[], None]) -> None:
                        # Asked to close (DELETE, close_session, shutdown).
                        session.draining = True
                        await _drain(wire, session, cut, guard.begin_close())

                    async def expire(drained: trio.Event) -> None:
                        # A deadline fired (idle, init, lifetime): the same drain. Its cut
                        # ends the protocol loop (and `_serve_session`) at once.
                        try:
                            await _drain(wire, session, serving.cancel, guard.deadline)
                        finally:
                            serving.cancel()
                            drained.set()

                    def on_expiry() -> None:
                        session.draining = True
                        expiring.append(trio.Event())
                        tasks.start_soon(expire, expiring[0])

                    guard.on_expiry = on_expiry
                    try:
                        with serving:
                            await _serve_session(
                                ctx,
                                server,
                                wire.inbox,
                                wire.outbox,
                                handshake,
                                transport=Transport.HTTP,
                                handshake_only=True,
                                on_message=on_message,
                                drain=drain,
                            )
                    except Exception:
                        # The actor crashed: the requests it had taken are answered with an
                        # error (a durable session's actor then restarts and serves the next).
                        wire.fail_requests("the session's actor failed while serving this request")
                        raise
                    finally:
                        guard.on_expiry = None
                        session.draining = True
                        try:
                            if expiring:
                                # Requests cut by the drain are still being answered.
                                await expiring[0].wait()
                        finally:
                            # Every stream still open ends (a JSON request still waiting is
                            # answered as the SDK answers it); the protocol loop reads EOF.
                            wire.close()
                            tasks.cancel_scope.cancel()
        except BaseException as exc:
            error = exc
        finally:
            wire.close()
            guard.finished = True
            watcher.cancel_scope.cancel()
    if error is not None:
        raise error


#: Before the close grace runs out, requests still in flight are cut this much earlier (at most a
#: quarter of the grace), so their clients get a JSON-RPC error rather than a dropped stream.
_CUT_MARGIN = 0.5

#: While draining, how often the GET stream is closed again (one may register late).
_GET_RECHECK = 0.05

#: After the drain's deadline, how long the transport may still take to finish what it writes.
_FLUSH_TIMEOUT = 1.0


@final
class _Guard:
    """Shields an HTTP session's work from the supervisor's cancellation, so it ends cleanly.

    The core cancels the actor when a deadline fires (idle, init, max lifetime) and when a
    close grace runs out. The work runs inside `scope` (shielded); `watch`, a task outside
    it, sees the cancellation: after a deadline the session drains within ``close_grace``,
    exactly as after `Supervisor.close_session` (``expired`` is set); otherwise (the grace of
    a close is over, or the supervisor itself is being cancelled) the work is cancelled at once.
    """

    __slots__ = ("_ctx", "closing", "deadline", "expired", "finished", "on_expiry", "scope")

    def __init__(self, ctx: SessionContext[Any]) -> None:
        self._ctx = ctx
        self.scope = trio.CancelScope(shield=True)
        self.expired = trio.Event()
        self.closing = False
        self.finished = False
        #: When the drain must be over (trio clock).
        self.deadline = math.inf
        #: Called once when a deadline fired while serving: starts the drain.
        self.on_expiry: Callable[[], None] | None = None

    def begin_close(self) -> float:
        """The mailbox ended (the session was asked to close): the drain's deadline."""
        if not self.closing and not self.expired.is_set():
            self.closing = True
            self.deadline = self._ctx.session.deadline
        return self.deadline

    async def watch(self) -> None:
        try:
            await trio.sleep_forever()
        except trio.Cancelled:
            if not self.finished:
                self._cancelled()
            raise

    def _cancelled(self) -> None:
        now = trio.current_time()
        if not self.closing and not self.expired.is_set() and self._ctx.session.deadline <= now:
            self.deadline = now + self._ctx.supervisor.config.close_grace
            self.scope.deadline = self.deadline + _FLUSH_TIMEOUT
            self.expired.set()
            if self.on_expiry is not None:
                self.on_expiry()
        else:
            self.scope.cancel()


async def _drain(
    wire: _Wire, session: _HttpSession, cut: Callable[[], None], deadline: float
) -> None:
    """Drain a closing session's requests by ``deadline``.

    Nothing more will be pushed on the GET stream, which ends at a message boundary; requests in
    flight get until shortly before the deadline, then ``cut()`` ends the protocol loop: the SDK
    answers each request still running with a JSON-RPC error while its response stream is open.
    """
    margin = min(_CUT_MARGIN, max(0.0, deadline - trio.current_time()) / 4)
    with trio.move_on_at(deadline - margin):
        while session.count:
            # Again and again: a GET that was on its way in registers its stream only once its
            # response has started.
            wire.close_standalone_sse_stream()
            with trio.move_on_after(_GET_RECHECK):
                await session.idle()
    if session.count:
        cut()
        with trio.move_on_at(deadline):
            await session.idle()


def _nothing() -> None:
    pass


async def _run_request(
    session: _HttpSession,
    work: Callable[[Callable[[], None]], Awaitable[None]],
    *,
    pinned: bool,
) -> bool:
    """Run one HTTP request of ``session`` in the calling task, counted in flight.

    ``work(release)`` does the wire work; ``release()`` ends its pause of the idle clock early
    (a resumed GET that turns out to be the stream of server-to-client messages). The opening
    request comes before the actor has started: it is queued at once, and the actor pins it
    when it starts. Returns False, with nothing sent, when the session takes no more requests
    (the app answers 404).
    """
    if session.ctx is None:
        # The opening request: the actor has not started yet and pins it when it does.
        session.enter_opening()
        try:
            await work(_nothing)
        finally:
            session.leave_opening()
        return True
    try:
        busy = session.enter(pinned)
    except SessionClosed:
        return False
    held: list[AbstractContextManager[None] | None] = [busy]

    def release() -> None:
        busy, held[0] = held[0], None
        session.release(busy)

    try:
        await work(release)
    finally:
        session.leave(held[0])
    return True
