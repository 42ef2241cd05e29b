"""The HTTP session actor: one session's requests (exchanges), its drain, its event store view.

`McpHttpApp` creates one supervised session per ``initialize``, whose actor is
`_run_http_session`; each HTTP request of the session reaches the actor as an `_HttpExchange`
through `Supervisor.call` and runs in the SDK's `StreamableHTTPServerTransport` of the session.
"""

from __future__ import annotations

import contextvars
import logging
import math
import secrets
from collections.abc import Awaitable, Callable
from contextlib import suppress
from functools import partial
from typing import TYPE_CHECKING, Any, final

import anyio
import attrs
import trio
from mcp.server.streamable_http import (
    GET_STREAM_KEY,
    EventCallback,
    EventMessage,
    EventStore,
    StreamableHTTPServerTransport,
)
from mcp.shared.message import SessionMessage
from mcp_types import JSONRPCNotification

from .. import SessionClosed, Transport
from ._asgi import ASGIMessage, Receive, Scope, Send
from ._checks import _is_initialized_notification, _request_id
from ._session import ServerSource, _Handshake, _serve_session

if TYPE_CHECKING:
    from .. import Message, SessionContext

logger = logging.getLogger("supervisor.mcp")

#: Seconds to hand the server the cancellation of a request whose client disconnected.
_CANCEL_NOTICE_TIMEOUT = 1.0


async def _watch(
    receive: Receive, exchange: _HttpExchange, gone: trio.Event, cancel_scope: trio.CancelScope
) -> None:
    """Wait for the client to disconnect (the body has been read), then set ``gone`` and cancel.

    After the body, ``http.disconnect`` is the only message ASGI servers send; anything else
    ends the watch (a loop over a receive that answers at once would never yield). A server
    may report ``http.disconnect`` as soon as the response is complete (hypercorn does): that
    is the exchange's normal end, not a client that went away, so it cancels nothing.
    """
    message = await receive()
    if message["type"] == "http.disconnect" and not exchange.complete:
        gone.set()
        cancel_scope.cancel()


@final
@attrs.define(slots=True, eq=False)
class _HttpExchange:
    """One HTTP request handed to a session actor through `Supervisor.call`.

    The call is answered when the request's response is complete, except for a GET stream of
    server-to-client messages (``standalone``, or a resumed one): that is not a request, so
    the actor answers the call as soon as the stream starts (the session's idle clock runs on)
    and the app waits for ``done``.
    """

    scope: Scope
    receive: Receive
    send: Send
    cancel_scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    status: int | None = None
    #: Set by the actor: the session's server has accepted ``initialize`` (or more).
    initialize_accepted: bool = False
    #: The POST body, when the app has read it.
    body: bytes | None = None
    #: A GET without ``Last-Event-ID``: the session's stream of server-to-client messages.
    standalone: bool = False
    #: Set by the actor when it has finished with this request (whatever the outcome).
    done: trio.Event = attrs.field(factory=trio.Event)
    #: What the transport raised after the call was answered early.
    error: Exception | None = None
    #: JSON responses only: set when the client disconnects before its response.
    gone: trio.Event | None = None
    #: The whole response has been handed to the server.
    complete: bool = False

    async def tracking_send(self, message: ASGIMessage) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            self.status = int(message["status"])
        elif kind == "http.response.body" and not message.get("more_body", False):
            self.complete = True
        await self.send(message)


#: While an exchange runs in its session: answers its call early (see `_HttpExchange`).
_RELEASE: contextvars.ContextVar[Callable[[], None] | None] = contextvars.ContextVar(
    "supervisor_mcp_http_release", default=None
)


@final
class _SessionEventStore(EventStore):
    """One session's view of the app's (shared) event store: resumable streams stay private.

    The SDK transport names streams by JSON-RPC request id (``"2"``) or ``"_GET_stream"``, the
    same in every session, and replays whatever the store returns for a ``Last-Event-ID``. So
    each session gets a random namespace of its own (not derived from the session id, which
    must not reach the store or the wire): stream ids and event ids are stored and handed out
    prefixed with it, and an event id without this session's prefix (another session's, or
    another principal's, or a made-up one) is refused exactly like an unknown id: nothing is
    replayed. The store must replay only events of the given event's stream (the SDK's
    contract, and what its example store does); a replay it reports for another stream is
    dropped whole.
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
    *,
    event_store: EventStore | None,
    json_response: bool,
    retry_interval: int | None,
) -> None:
    """The actor of one HTTP session: serves its exchanges until the session ends, then drains."""
    store = None if event_store is None else _SessionEventStore(event_store)
    transport = StreamableHTTPServerTransport(
        mcp_session_id=ctx.id,
        is_json_response_enabled=json_response,
        event_store=store,
        retry_interval=retry_interval,
    )
    guard = _Guard(ctx)
    flights = _Flights()
    handshake = _Handshake(ctx=ctx, track_busy=False)
    serving = trio.CancelScope()
    expiring: list[trio.Event] = []  # set when the drain after a deadline is over
    error: BaseException | None = None
    async with trio.open_nursery() as watcher:
        watcher.start_soon(guard.watch)
        try:
            with guard.scope:
                async with (
                    transport.connect() as (read_stream, write_stream),
                    trio.open_nursery() as requests,
                ):

                    def on_message(message: Message[Any]) -> None:
                        if guard.expired.is_set():
                            # A deadline fired: the session drains; no new requests.
                            message.fail(SessionClosed("the session is ending"))
                            return
                        requests.start_soon(
                            flights.run, _serve_exchange, transport, handshake, message
                        )

                    async def drain(cut: Callable[[], None]) -> None:
                        # Asked to close (DELETE, close_session, shutdown).
                        await _drain(transport, flights, cut, guard.begin_close())

                    async def expire(drained: trio.Event) -> None:
                        # A deadline fired (idle, init, lifetime): the same drain. Its cut
                        # ends the protocol loop (and `_serve_session`) at once.
                        try:
                            await _drain(transport, flights, serving.cancel, guard.deadline)
                        finally:
                            serving.cancel()
                            drained.set()

                    def on_expiry() -> None:
                        expiring.append(trio.Event())
                        requests.start_soon(expire, expiring[0])

                    guard.on_expiry = on_expiry
                    try:
                        with serving:
                            await _serve_session(
                                ctx,
                                server,
                                read_stream,
                                write_stream,
                                handshake,
                                transport=Transport.HTTP,
                                handshake_only=True,
                                on_message=on_message,
                                drain=drain,
                            )
                    finally:
                        guard.on_expiry = None
                        try:
                            if expiring:
                                # Requests cut by the drain are still being answered.
                                await expiring[0].wait()
                        finally:
                            # Leaving transport.connect() closes the session's streams.
                            # (Not terminate(): it logs the full session id at INFO.)
                            requests.cancel_scope.cancel()
        except BaseException as exc:
            error = exc
        finally:
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
    transport: StreamableHTTPServerTransport,
    flights: _Flights,
    cut: Callable[[], None],
    deadline: float,
) -> None:
    """Drain a closing session's requests by ``deadline``.

    Nothing more will be pushed on the GET stream, which ends at a message boundary; requests in
    flight get until shortly before the deadline, then ``cut()`` ends the protocol loop: the SDK
    answers each request still running with a JSON-RPC error while its response stream is open.
    """
    margin = min(_CUT_MARGIN, max(0.0, deadline - trio.current_time()) / 4)
    with trio.move_on_at(deadline - margin):
        while flights.count:
            # Again and again: a GET that was on its way in registers its stream only once its
            # response has started.
            transport.close_standalone_sse_stream()
            with trio.move_on_after(_GET_RECHECK):
                await flights.idle()
    if flights.count:
        cut()
        with trio.move_on_at(deadline):
            await flights.idle()


@final
class _Flights:
    """Counts a session's HTTP requests in flight; `idle` waits until there are none."""

    __slots__ = ("_idle", "count")

    def __init__(self) -> None:
        self.count = 0
        self._idle = trio.Event()
        self._idle.set()

    async def run(self, fn: Callable[..., Awaitable[None]], *args: Any) -> None:
        if self.count == 0:
            self._idle = trio.Event()
        self.count += 1
        try:
            await fn(*args)
        finally:
            self.count -= 1
            if self.count == 0:
                self._idle.set()

    async def idle(self) -> None:
        await self._idle.wait()


def _answer(message: Message[Any], value: Any) -> None:
    if message.expects_reply:
        message.reply(value)


async def _handle_json_request(
    transport: StreamableHTTPServerTransport, exchange: _HttpExchange, gone: trio.Event
) -> None:
    """``handle_request`` for a JSON response; a client that disconnects cancels its request.

    With a JSON response nothing can reach the client once it has gone (there is no stream to
    resume), so the handler's work is for nobody: the server is told the request is cancelled
    (``notifications/cancelled``, as if the client had sent it), which cancels the handler.
    The app cancels this exchange as soon as it sees the disconnect, so the notice is sent on
    the way out, shielded and bounded; for a request already answered the server ignores it.
    """
    try:
        await transport.handle_request(exchange.scope, exchange.receive, exchange.tracking_send)
    finally:
        if gone.is_set() and not exchange.complete and exchange.body is not None:
            request_id = _request_id(exchange.body)
            writer = transport._read_stream_writer
            if request_id is not None and writer is not None:
                params = {"requestId": request_id, "reason": "the client disconnected"}
                notice = JSONRPCNotification(
                    jsonrpc="2.0", method="notifications/cancelled", params=params
                )
                with (
                    trio.move_on_after(_CANCEL_NOTICE_TIMEOUT, shield=True),
                    suppress(anyio.ClosedResourceError, anyio.BrokenResourceError),
                ):
                    await writer.send(SessionMessage(notice))


async def _serve_exchange(
    transport: StreamableHTTPServerTransport, handshake: _Handshake, message: Message[Any]
) -> None:
    exchange = message.payload
    if not isinstance(exchange, _HttpExchange):
        message.fail(TypeError(f"an MCP HTTP session takes HTTP exchanges, not {exchange!r}"))
        return
    try:
        if exchange.standalone:
            # The stream of server-to-client messages is not a request: answered now, so
            # the session's idle clock runs on while it is open.
            _answer(message, None)
        else:
            _RELEASE.set(partial(_answer, message, None))
        if (
            exchange.body is not None
            and handshake.accepted is not None
            and _is_initialized_notification(exchange.body)
        ):
            # Recorded before the transport answers 202 (it dispatches the notification only
            # after sending the response), so a client that sees 202 sees a READY session.
            handshake.client_initialized()
        try:
            with exchange.cancel_scope:
                if exchange.gone is None:
                    await transport.handle_request(
                        exchange.scope, exchange.receive, exchange.tracking_send
                    )
                else:
                    await _handle_json_request(transport, exchange, exchange.gone)
        except Exception as exc:
            logger.exception("MCP HTTP request failed")
            if message.expects_reply:
                message.fail(exc)
            else:
                exchange.error = exc
            return
        exchange.initialize_accepted = handshake.done or handshake.accepted is not None
        _answer(message, exchange.status)
    finally:
        exchange.done.set()
