"""Run the SDK's per-session protocol loop inside a session actor.

Every transport ends up here: `run_mcp_session` takes a stream pair (anyio memory streams, never
raw trio channels: the SDK expects anyio's exceptions), wraps it to observe the handshake and to
make the session visible to handlers (`current_session`), and drives ``serve_loop`` (handshake era
only, Streamable HTTP) or ``serve_dual_era_loop`` (duplex transports, both eras) until the client
goes away or the supervisor ends the session. Ended by the supervisor (a deadline, a close, a
shutdown), a session closes gracefully: `_Guard` shields it from the actor's cancellation and
`_Closer` gives the requests in flight the close grace, answering the rest with a JSON-RPC error.
"""

from __future__ import annotations

import contextvars
import json
import logging
import math
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AbstractContextManager, asynccontextmanager, suppress
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self, TypeAlias, final

import anyio
import attrs
import trio
from mcp.server.lowlevel.server import Server
from mcp.server.mcpserver import MCPServer
from mcp.server.models import InitializationOptions
from mcp.server.runner import serve_dual_era_loop, serve_loop
from mcp.shared._stream_protocols import ReadStream, WriteStream
from mcp.shared.jsonrpc_dispatcher import cancelled_request_id_from_params
from mcp.shared.message import SessionMessage
from mcp_types import (
    CLIENT_CAPABILITIES_META_KEY,
    CLIENT_INFO_META_KEY,
    INTERNAL_ERROR,
    PROTOCOL_VERSION_META_KEY,
    ErrorData,
    JSONRPCError,
    JSONRPCNotification,
    JSONRPCRequest,
    JSONRPCResponse,
)
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS

from .. import SessionState, SupervisorError, Transport
from .._durable import StoreError, Superseded
from .._ids import short_id

if TYPE_CHECKING:
    from .. import Actor, Message, Session, SessionContext, Supervisor, SupervisorConfig

__all__ = [
    "McpSession",
    "ServerLike",
    "ServerSource",
    "current_session",
    "resolve_server",
    "run_mcp_session",
]

logger = logging.getLogger("supervisor.mcp")

#: A server object the SDK can serve: the low-level ``Server`` or the high-level ``MCPServer``.
ServerLike: TypeAlias = "Server[Any] | MCPServer[Any]"

#: What the entry points accept: a server, or a zero-argument factory called once per session.
ServerSource: TypeAlias = (
    "Server[Any] | MCPServer[Any] | Callable[[], Server[Any] | MCPServer[Any]]"
)

_CURRENT: contextvars.ContextVar[McpSession] = contextvars.ContextVar("supervisor_mcp_session")

#: Reason given to the supervisor when the client ends the connection (EOF, disconnect).
DISCONNECTED = "client-disconnected"


@final
@attrs.define(slots=True, eq=False)
class McpSession:
    """The per-session handle a tool handler sees through `current_session`.

    Created by the session actor when it starts (a protocol session's or a state handle's);
    not for users to construct. ``state`` is a plain
    dict owned by the session actor: it lives exactly as long as the session and no other session
    can see it, so it is the place for per-session tool state (the demo's ``counter``).

    In a durable session (Streamable HTTP sessions and state handles of a supervisor with a
    store, see `McpHttpApp`) ``state`` outlives the actor: it is restored from the last save
    when the actor starts (after a passivation, a crash, a restart of the process, on another
    node), and saved write-through: when a request changed it (its JSON text differs from the
    last save), the save is confirmed by the store before the request's response leaves. A
    state that is not JSON-serializable is not saved (a warning, once per session); the
    session goes on serving, without durability for that state.

    Attributes:
        context: The supervisor's `supervisor.SessionContext` of this session (``touch``,
            ``metadata``, ``close``, ``start_soon``, ...).
        transport: How the client is connected.
        state: Per-session scratch space for handlers.
    """

    context: SessionContext[Any]
    transport: Transport
    state: dict[str, Any] = attrs.field(factory=dict)

    @classmethod
    def _restored(cls, ctx: SessionContext[Any], transport: Transport) -> McpSession:
        """The session's handle, its ``state`` restored from the last save (durable sessions)."""
        saved = ctx.saved if ctx.durable else None
        if saved is not None and not isinstance(saved, dict):
            logger.warning(
                "session %s...: the saved state is not an object; starting empty",
                short_id(ctx.id),
            )
            saved = None
        return cls(context=ctx, transport=transport, state=saved or {})

    @property
    def id(self) -> str:
        """The supervisor's session id (also the ``Mcp-Session-Id`` on Streamable HTTP)."""
        return self.context.id


def current_session() -> McpSession:
    """Return the `McpSession` serving the current MCP request.

    Call it from a tool, resource or prompt handler (or anything they call in the same task).
    In a session tool called with a state handle (``session`` argument; see
    `supervisor.mcp.session_tool`) it is the handle's session, in either era; otherwise the
    protocol session's.

    Raises:
        LookupError: Not inside a supervised MCP session, e.g. a request of the stateless
            2026-07-28 era over HTTP without a handle (it belongs to no session).
    """
    try:
        return _CURRENT.get()
    except LookupError:
        raise LookupError(
            "no supervised MCP session here: current_session() works inside handlers of a "
            "session served by supervisor.mcp (stateless 2026-07-28 requests have none)"
        ) from None


def _lowlevel(server: object) -> Server[Any]:
    if isinstance(server, MCPServer):
        # The SDK itself unwraps MCPServer this way (mcp.client._memory); there is no public name.
        lowlevel: Server[Any] = server._lowlevel_server
        return lowlevel
    if isinstance(server, Server):
        return server
    raise TypeError(
        f"expected an mcp Server or MCPServer (or a factory returning one), got {type(server)!r}"
    )


def resolve_server(source: ServerSource) -> Server[Any]:
    """Return the low-level ``Server`` for ``source``, calling it first if it is a factory."""
    if isinstance(source, Server | MCPServer):
        return _lowlevel(source)
    if callable(source):
        return _lowlevel(source())
    raise TypeError(
        f"expected an mcp Server or MCPServer (or a factory returning one), got {type(source)!r}"
    )


@attrs.define(slots=True, eq=False)
class _Handshake:
    """Watches the messages of one session and reports the handshake to the supervisor.

    The ``initialize`` era: the ``initialize`` request moves the session to INITIALIZING; the
    successful response to it (seen on the way out) is remembered, and the client's
    ``notifications/initialized``, which ends the initialization phase, records the client
    info, the negotiated protocol version and the capabilities with ``ctx.initialize``, moving
    the session to READY. A client that never completes the handshake stays INITIALIZING, so
    the supervisor's init deadline ends it. The 2026-07-28 era over a duplex stream has no
    handshake: the first successful response to an enveloped request initializes the session
    with the envelope's values. Watching the wire, not SDK internals, keeps this independent of
    the SDK's hooks.
    """

    ctx: SessionContext[Any]
    track_busy: bool
    pending_id: Any = None
    pending: dict[str, Any] | None = None
    pending_modern: bool = False
    #: The server accepted ``initialize`` (its info, waiting for ``notifications/initialized``).
    accepted: dict[str, Any] | None = None
    #: The client sent ``notifications/initialized`` before the response was seen.
    notified: bool = False
    #: The server refused ``initialize`` (an error response).
    refused: bool = False
    done: bool = False
    busy: dict[Any, AbstractContextManager[Any]] = attrs.field(factory=dict)

    def inbound(self, item: SessionMessage | Exception) -> None:
        if not isinstance(item, SessionMessage):
            return
        message = item.message
        if isinstance(message, JSONRPCRequest):
            if not self.done and self.pending is None and self.accepted is None:
                self._maybe_start(message)
            if self.track_busy and message.id not in self.busy:
                cm = self.ctx.busy()
                try:
                    cm.__enter__()
                except SupervisorError:  # the session is ending; nothing to hold open
                    return
                self.busy[message.id] = cm
            return
        if self.track_busy:
            with suppress(SupervisorError):
                self.ctx.touch()
        if not isinstance(message, JSONRPCNotification):
            return
        if message.method == "notifications/initialized":
            self.client_initialized()
        elif message.method == "notifications/cancelled" and self.track_busy:
            self._release((message.params or {}).get("requestId"))

    def client_initialized(self) -> None:
        """The client sent ``notifications/initialized``: the handshake is complete."""
        if self.done:
            return
        if self.accepted is not None:
            self._finish(self.accepted)
        else:
            self.notified = True

    def _maybe_start(self, message: JSONRPCRequest) -> None:
        params = message.params or {}
        if message.method == "initialize":
            self.pending_id = message.id
            self.pending_modern = False
            self.pending = {
                "client_info": _as_dict(params.get("clientInfo")),
                "capabilities": _as_dict(params.get("capabilities")),
                "protocol_version": params.get("protocolVersion"),
            }
            if self.ctx.session.state is SessionState.CREATED:
                with suppress(SupervisorError):  # a close may have raced us
                    self.ctx.set_state(SessionState.INITIALIZING)
            return
        meta = params.get("_meta")
        if isinstance(meta, Mapping) and PROTOCOL_VERSION_META_KEY in meta:
            self.pending_id = message.id
            self.pending_modern = True
            self.pending = {
                "client_info": _as_dict(meta.get(CLIENT_INFO_META_KEY)),
                "capabilities": _as_dict(meta.get(CLIENT_CAPABILITIES_META_KEY)),
                "protocol_version": meta.get(PROTOCOL_VERSION_META_KEY),
            }

    def outbound(self, item: SessionMessage) -> None:
        message = item.message
        if not isinstance(message, JSONRPCResponse | JSONRPCError):
            return
        if self.track_busy:
            self._release(message.id)
        if self.pending is None or message.id != self.pending_id:
            return
        pending, self.pending, self.pending_id = self.pending, None, None
        if isinstance(message, JSONRPCError):
            # A refused handshake leaves the session uninitialized; the init deadline ends it
            # (Streamable HTTP closes it at once: see McpHttpApp).
            self.refused = not self.pending_modern
            return
        negotiated = message.result.get("protocolVersion", pending["protocol_version"])
        if isinstance(negotiated, str):
            pending["protocol_version"] = negotiated
        if self.pending_modern or self.notified:
            self._finish(pending)
        else:
            self.refused = False
            self.accepted = pending

    def _finish(self, info: dict[str, Any]) -> None:
        self.done = True
        self.accepted = None
        protocol_version = info["protocol_version"]
        with suppress(SupervisorError):  # the session may already be closing
            self.ctx.initialize(
                client_info=info["client_info"],
                protocol_version=protocol_version if isinstance(protocol_version, str) else None,
                capabilities=info["capabilities"],
            )

    def _release(self, request_id: Any) -> None:
        cm = self.busy.pop(request_id, None)
        if cm is not None:
            cm.__exit__(None, None, None)

    def release_all(self) -> None:
        for request_id in list(self.busy):
            self._release(request_id)


def _as_dict(value: Any) -> dict[str, Any] | None:
    return dict(value) if isinstance(value, Mapping) else None


#: The JSON-RPC error code of a response replaced because the state it follows was not saved.
STATE_NOT_SAVED_CODE = INTERNAL_ERROR


def _state_text(state: Any) -> str:
    """The JSON text a state is compared and saved as.

    Raises:
        TypeError, ValueError: not JSON-serializable (NaN and infinities included).
    """
    try:
        return json.dumps(state, allow_nan=False, separators=(",", ":"))
    except RecursionError as exc:  # a cycle json did not see as one
        raise ValueError("the state is too deeply nested") from exc


@final
class _Durability:
    """Write-through of one durable session's `McpSession.state`.

    `settle` saves the state when it differs (as JSON text) from the last confirmed save;
    callers run it after a request's handling and before its response leaves, so a response
    never acknowledges a state change the store has not confirmed. A state that cannot be
    serialized is skipped with one warning per session (later changes are tried again). A
    failed save is not rolled back: the change stays in memory and the next confirmed save
    includes it (an error response does not tell the client the change was not made, only
    that it is not known to be durable).
    """

    __slots__ = ("_ctx", "_saved", "_session", "_warned")

    def __init__(self, ctx: SessionContext[Any], session: McpSession) -> None:
        self._ctx = ctx
        self._session = session
        self._warned = False
        try:
            self._saved: str | None = _state_text(session.state)
        except (TypeError, ValueError):  # pragma: no cover - restored from JSON
            self._saved = None

    @classmethod
    def of(cls, ctx: SessionContext[Any], session: McpSession) -> _Durability | None:
        """The session's write-through, or None for a session that is not durable."""
        return cls(ctx, session) if ctx.durable else None

    async def settle(self) -> None:
        """Save the state if it changed since the last confirmed save.

        Raises:
            Superseded: this activation is stale (the session ends here).
            StoreError: the store did not confirm the save.
        """
        try:
            text = _state_text(self._session.state)
        except (TypeError, ValueError) as exc:
            self._unsaved(exc)
            return
        if text == self._saved:
            return
        try:
            # A copy: the store serializes it in another thread while handlers go on.
            await self._ctx.save(json.loads(text))
        except TypeError as exc:  # the store's own check refused it
            self._unsaved(exc)
            return
        self._saved = text

    def _unsaved(self, exc: BaseException) -> None:
        if not self._warned:
            self._warned = True
            logger.warning(
                "session %s...: its state is not JSON-serializable (%s); it is not saved, the "
                "session goes on without durability for it (warned once per session)",
                short_id(self._ctx.id),
                exc,
            )

    async def reply(self, item: SessionMessage) -> SessionMessage:
        """``item`` (a response) once the state it follows is saved, or the error to send.

        Superseded: the session moved (activated again elsewhere); it ends here. StoreError
        (or a session that ended meanwhile): the state change is not acknowledged.
        """
        message = item.message
        if not isinstance(message, JSONRPCResponse | JSONRPCError) or message.id is None:
            return item
        try:
            await self.settle()
        except Superseded:
            logger.warning("session %s... moved: its save was refused", short_id(self._ctx.id))
            reason = "superseded"
            why = "the session moved (it was activated again elsewhere)"
        except (StoreError, SupervisorError) as exc:
            logger.warning("session %s...: state not saved: %s", short_id(self._ctx.id), exc)
            reason = "store-error"
            why = "the session's state could not be saved; the change is not durable"
        else:
            return item
        error = JSONRPCError(
            jsonrpc="2.0",
            id=message.id,
            error=ErrorData(
                code=STATE_NOT_SAVED_CODE,
                message=f"state not saved: {why}",
                data={"reason": reason},
            ),
        )
        return SessionMessage(error, metadata=item.metadata)


def _replayed_handshake(ctx: SessionContext[Any]) -> tuple[Any, list[SessionMessage]] | None:
    """The synthetic ``initialize`` exchange a restored handshake-era session replays.

    A durable session activated again (or restarted) starts READY with its saved handshake,
    but the SDK's protocol session in the new actor is fresh and would refuse requests before
    ``initialize``. So the actor feeds it the client's saved ``initialize`` and
    ``notifications/initialized`` first, swallowing the response (`_ObservedWriteStream`),
    without reporting either to the supervisor (the session is READY already). Returns (the
    request id to swallow, the messages), or None when there is nothing to replay.
    """
    session = ctx.session
    if not session.is_initialized:
        return None
    version = session.protocol_version
    if not isinstance(version, str) or version not in HANDSHAKE_PROTOCOL_VERSIONS:
        return None  # the 2026-07-28 era over a duplex stream has no handshake
    client_info = session.client_info
    if not (isinstance(client_info, Mapping) and isinstance(client_info.get("name"), str)):
        client_info = {"name": "restored-session", "version": "0"}
    capabilities = session.capabilities
    request_id = f"supervisor-replay-{secrets.token_hex(4)}"
    initialize = JSONRPCRequest(
        jsonrpc="2.0",
        id=request_id,
        method="initialize",
        params={
            "protocolVersion": version,
            "capabilities": dict(capabilities) if isinstance(capabilities, Mapping) else {},
            "clientInfo": dict(client_info),
        },
    )
    initialized = JSONRPCNotification(jsonrpc="2.0", method="notifications/initialized")
    return request_id, [SessionMessage(initialize), SessionMessage(initialized)]


class _ClosesOnExit:
    """``async with`` closes the stream (what the SDK expects of its streams)."""

    __slots__ = ()

    async def aclose(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        await self.aclose()


class _ReadsUntilEnd(_ClosesOnExit):
    """A read stream handed to the SDK: ``async for`` over `receive` until ``EndOfStream``."""

    __slots__ = ()

    async def receive(self) -> SessionMessage | Exception:
        raise NotImplementedError

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> SessionMessage | Exception:
        try:
            return await self.receive()
        except anyio.EndOfStream:
            raise StopAsyncIteration from None


@final
class _ObservedReadStream(_ReadsUntilEnd):
    """Read side handed to the SDK: reports each message, and runs handlers in this session.

    The SDK's dispatcher starts each handler in the *sender's* context (``last_context``), which
    for Streamable HTTP is the task that called ``handle_request`` and for in-process streams is
    the client's task. Replacing it with a copy that has `current_session` set makes the session
    visible to handlers whatever task delivered the message.
    """

    __slots__ = ("_closer", "_handshake", "_inner", "_session", "last_context")

    def __init__(
        self,
        inner: ReadStream[SessionMessage | Exception],
        handshake: _Handshake,
        session: McpSession,
        closer: _Closer | None = None,
    ) -> None:
        self._inner = inner
        self._handshake = handshake
        self._session = session
        self._closer = closer
        self.last_context: contextvars.Context | None = None

    async def receive(self) -> SessionMessage | Exception:
        item = await self._inner.receive()
        closer = self._closer
        while closer is not None and not closer.inbound(item):
            # A request that arrived after the close began: answered with an error, not served.
            assert isinstance(item, SessionMessage)
            await closer.refuse(item.message)
            item = await self._inner.receive()
        sender: contextvars.Context | None = getattr(self._inner, "last_context", None)
        context = sender.copy() if sender is not None else contextvars.copy_context()
        context.run(_CURRENT.set, self._session)
        self.last_context = context
        self._handshake.inbound(item)
        return item

    async def aclose(self) -> None:
        await self._inner.aclose()


@final
class _ObservedWriteStream(_ClosesOnExit):
    """Write side handed to the SDK: reports each outgoing message before it leaves.

    In a durable session a response leaves only once the state it follows is saved (see
    `_Durability.reply`); the response to a replayed handshake (``swallow``) never leaves.
    """

    __slots__ = ("_closer", "_durability", "_handshake", "_inner", "swallow")

    def __init__(
        self,
        inner: WriteStream[SessionMessage],
        handshake: _Handshake,
        closer: _Closer | None = None,
        durability: _Durability | None = None,
        swallow: Any = None,
    ) -> None:
        self._inner = inner
        self._handshake = handshake
        self._closer = closer
        self._durability = durability
        #: The id of the replayed ``initialize`` whose response is dropped (None: none).
        self.swallow = swallow

    def _swallowed(self, item: SessionMessage) -> bool:
        message = item.message
        if (
            self.swallow is None
            or not isinstance(message, JSONRPCResponse | JSONRPCError)
            or message.id != self.swallow
        ):
            return False
        self.swallow = None
        if isinstance(message, JSONRPCError):
            logger.warning(
                "the server refused the replayed handshake of a restored session: %s",
                message.error.message,
            )
        return True

    async def send(self, item: SessionMessage, /) -> None:
        if self.swallow is not None and self._swallowed(item):
            return
        closer = self._closer
        if closer is None:
            if self._durability is not None:
                item = await self._durability.reply(item)
            self._handshake.outbound(item)
            await self._inner.send(item)
            return
        key = closer.sending(item.message)
        if key is _ANSWERED:
            return  # the closing session has already answered this request with an error
        if self._durability is not None:
            try:
                item = await self._durability.reply(item)
            except BaseException:
                closer.sent(key)
                raise
        self._handshake.outbound(item)
        try:
            await self._inner.send(item)
        finally:
            closer.sent(key)

    async def aclose(self) -> None:
        await self._inner.aclose()


def _replaying(
    ctx: SessionContext[Any], handshake: _Handshake, reader: _ObservedReadStream
) -> tuple[ReadStream[SessionMessage | Exception], Any]:
    """The read stream for the SDK and the request id whose response to swallow (or None).

    A session that starts READY (a durable one restored) replays its handshake first; the
    observer is told the handshake is done, so the client's own messages do not redo it.
    """
    replay = _replayed_handshake(ctx)
    if replay is None:
        return reader, None
    handshake.done = True
    request_id, messages = replay
    return _Replaying(reader, messages), request_id


@final
class _Replaying(_ReadsUntilEnd):
    """Read side handed to the SDK: the synthetic handshake first, then the session's messages.

    Outside the observing stream, so neither the supervisor's handshake observer nor the
    close bookkeeping sees the synthetic messages.
    """

    __slots__ = ("_context", "_inner", "_pending", "last_context")

    def __init__(self, inner: _ObservedReadStream, pending: list[SessionMessage]) -> None:
        self._inner = inner
        self._pending = pending
        self._context = contextvars.copy_context()
        self.last_context: contextvars.Context | None = None

    async def receive(self) -> SessionMessage | Exception:
        if self._pending:
            self.last_context = self._context
            return self._pending.pop(0)
        item = await self._inner.receive()
        self.last_context = self._inner.last_context
        return item

    async def aclose(self) -> None:
        await self._inner.aclose()


#: The JSON-RPC error code of a request a closing duplex session answers without serving it:
#: one that arrived after the close began, or one still running when the close grace ran out.
SESSION_CLOSING_CODE = INTERNAL_ERROR

#: Close reasons of the core's deadlines.
_EXPIRY_REASONS = frozenset({"idle-timeout", "init-timeout", "max-lifetime"})

#: Before a close deadline, requests still in flight are cut this much earlier (at most a quarter
#: of the grace), so their errors and the transport's clean close go out before it.
_CUT_MARGIN = 0.5

#: Once the supervisor has cancelled the actor, how long the transport may still take to write
#: what it has and close cleanly before it is cut off.
_FLUSH_TIMEOUT = 1.0

# The guard's states: serving; asked to close (the mailbox ended); a deadline fired and the
# close grace runs; cut (the grace is over or the supervisor is cancelling: end now).
_SERVING, _CLOSING, _EXPIRING, _CUT = range(4)


@final
class _Guard:
    """Shields a duplex session's work from the supervisor's cancellation, so it can end cleanly.

    The core cancels the actor when a deadline fires (idle, init, max lifetime) and when a close
    grace runs out. Work run inside `scope` (a shielded scope) does not see that cancellation; a
    watcher task outside it does (see `_guarded`) and turns it into an orderly close: after a
    deadline the session gets ``close_grace`` to finish what is in flight, exactly as after
    ``close_session``; otherwise whatever is left is cut at once. Either way the transport then
    gets `_FLUSH_TIMEOUT` at most to write what it has and close, after which `scope` cancels.
    """

    __slots__ = ("_ctx", "_done", "_fired", "_state", "_wake", "deadline", "scope")

    def __init__(self, ctx: SessionContext[Any]) -> None:
        self._ctx = ctx
        self.scope = trio.CancelScope(shield=True)
        self._wake: trio.CancelScope | None = None
        self._state = _SERVING
        self._fired: str | None = None
        self._done = False
        #: When work in flight must be done (trio clock); ``inf`` while serving.
        self.deadline = math.inf

    def waiting(self, deadline: float = math.inf) -> trio.CancelScope:
        """A scope for one wait that the supervisor's cancellation must end (one at a time)."""
        scope = trio.CancelScope(deadline=deadline)
        if self._state == _CUT:
            scope.cancel()
        self._wake = scope
        return scope

    def wake(self) -> None:
        """End the current `waiting` scope."""
        if self._wake is not None:
            self._wake.cancel()

    def begin_close(self) -> float:
        """The session was asked to close (its mailbox ended); return the drain's deadline."""
        if self._state == _SERVING:
            now = trio.current_time()
            if self._expired(now):
                self._expire(now)
            else:
                self._state = _CLOSING
                self.deadline = self._ctx.session.deadline
        return self.deadline

    def _expired(self, now: float) -> bool:
        # A deadline fired (whether or not the core has recorded its reason yet).
        session = self._ctx.session
        reason = session.close_reason
        return reason in _EXPIRY_REASONS or (reason is None and session.deadline <= now)

    def _expire(self, now: float) -> None:
        config = self._ctx.supervisor.config
        self._state = _EXPIRING
        self._fired = self._ctx.session.close_reason or _expiry_reason(
            self._ctx.session, config, now
        )
        self.deadline = now + config.close_grace
        self.scope.deadline = min(self.scope.deadline, self.deadline + _FLUSH_TIMEOUT)

    @property
    def reason(self) -> str:
        """Why the session is ending, for the transport's goodbye (a deadline's, once it fired)."""
        return self._fired or self._ctx.session.close_reason or "closed"

    def _cancelled(self) -> None:
        now = trio.current_time()
        if self._state == _SERVING and self._expired(now):
            # A deadline fired while serving: the same grace as a close.
            self._expire(now)
        else:
            if self._state == _SERVING and self._ctx.session.close_reason is None:
                self._fired = "cancelled"  # the supervisor itself is being cancelled
            self._state = _CUT
            self.deadline = now
            self.scope.deadline = min(self.scope.deadline, now + _FLUSH_TIMEOUT)
        self.wake()

    async def _watch(self) -> None:
        try:
            await trio.sleep_forever()
        except trio.Cancelled:
            if not self._done:
                self._cancelled()
            raise


def _expiry_reason(session: Session, config: SupervisorConfig, now: float) -> str:
    if config.max_lifetime is not None and now >= session.created + config.max_lifetime:
        return "max-lifetime"
    if (
        not session.is_initialized
        and config.init_timeout is not None
        and now >= session.created + config.init_timeout
    ):
        return "init-timeout"
    return "idle-timeout"


@asynccontextmanager
async def _guarded(ctx: SessionContext[Any]) -> AsyncIterator[_Guard]:
    """Run the block shielded by a `_Guard`; the actor's cancellation still propagates after it.

    An exception of the block is re-raised as it is (not in an exception group).
    """
    guard = _Guard(ctx)
    error: BaseException | None = None
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(guard._watch)
            try:
                with guard.scope:
                    yield guard
            except BaseException as exc:
                error = exc
            finally:
                guard._done = True
                nursery.cancel_scope.cancel()
    finally:
        if error is not None:
            raise error


def _key(request_id: Any) -> Any:
    # "7" and 7 are one id for correlation, as in the SDK's dispatcher.
    if isinstance(request_id, str):
        with suppress(ValueError):
            return int(request_id)
    return request_id


#: `_Closer.sending` for a response the closing session has answered already.
_ANSWERED: Any = object()


@final
class _Closer:
    """A duplex session's requests in flight, and how it answers them while it closes.

    Every request from the client is in flight until its response has been written (or the
    client cancels it: the SDK never answers those). Once the close begins, a new request is
    answered at once with a JSON-RPC error (`SESSION_CLOSING_CODE`); `drain` lets the requests
    in flight finish until shortly before the deadline, then answers each one still running
    with that error itself, so the client gets an answer, never a dropped request, and drops
    whatever the SDK writes for it afterwards (its own ``Connection closed``).
    """

    __slots__ = ("_answered", "_guard", "_idle", "_open", "_write", "_writing", "closing")

    def __init__(self, write: WriteStream[SessionMessage], guard: _Guard) -> None:
        self._write = write
        self._guard = guard
        self._open: dict[Any, Any] = {}  # key -> the request's id as the client sent it
        self._writing: set[Any] = set()  # keys whose response is being written
        self._answered: set[Any] = set()
        self._idle = trio.Event()
        self._idle.set()
        self.closing = False

    def inbound(self, item: SessionMessage | Exception) -> bool:
        """Note a message from the client; False for a request to refuse instead of serving."""
        if not isinstance(item, SessionMessage):
            return True
        message = item.message
        if isinstance(message, JSONRPCRequest):
            if self.closing:
                return False
            if not self._open:
                self._idle = trio.Event()
            self._open[_key(message.id)] = message.id
        elif (
            isinstance(message, JSONRPCNotification) and message.method == "notifications/cancelled"
        ):
            request_id = cancelled_request_id_from_params(message.params)
            if request_id is not None:
                self._settle(_key(request_id))
        return True

    def sending(self, message: Any) -> Any:
        """A message to the client is about to be written: the key to pass to `sent`."""
        if not isinstance(message, JSONRPCResponse | JSONRPCError) or message.id is None:
            return None
        key = _key(message.id)
        if key in self._answered:
            return _ANSWERED
        if key in self._open:
            self._writing.add(key)
        return key

    def sent(self, key: Any) -> None:
        if key is not None:
            self._writing.discard(key)
            self._settle(key)

    def _settle(self, key: Any) -> None:
        if self._open.pop(key, _ANSWERED) is not _ANSWERED and not self._open:
            self._idle.set()

    async def refuse(self, request: Any) -> None:
        """Answer a request that arrived after the close began."""
        await self._answer(request.id, "no new requests are accepted")

    async def drain(self, deadline: float) -> None:
        """Let requests in flight finish until shortly before ``deadline``; answer the rest.

        Returns when none is in flight (or at ``deadline`` if a response is still being
        written); the protocol loop may then be cancelled.
        """
        self.closing = True
        margin = min(_CUT_MARGIN, max(0.0, deadline - trio.current_time()) / 4)
        with self._guard.waiting(deadline - margin):
            await self._idle.wait()
        cut = list(self._open.items())
        for key, _request_id in cut:
            if key not in self._writing:
                self._answered.add(key)
                self._settle(key)
        for key, request_id in cut:
            if key in self._answered:
                await self._answer(
                    request_id, "the request did not finish within the close grace period"
                )
        with self._guard.waiting(deadline):
            await self._idle.wait()

    async def _answer(self, request_id: Any, why: str) -> None:
        reason = self._guard.reason
        error = JSONRPCError(
            jsonrpc="2.0",
            id=request_id,
            error=ErrorData(
                code=SESSION_CLOSING_CODE,
                message=f"session closing ({reason}): {why}",
                data={"reason": reason},
            ),
        )
        with suppress(anyio.ClosedResourceError, anyio.BrokenResourceError):
            await self._write.send(SessionMessage(error))


async def run_mcp_session(
    ctx: SessionContext[Any],
    server: ServerSource,
    read_stream: ReadStream[SessionMessage | Exception],
    write_stream: WriteStream[SessionMessage],
    *,
    transport: Transport | None = None,
    handshake_only: bool = False,
    on_message: Callable[[Message[Any]], None] | None = None,
    init_options: InitializationOptions | None = None,
    raise_exceptions: bool = False,
) -> None:
    """Serve one MCP session over ``read_stream``/``write_stream`` inside a session actor.

    Call it from the actor body (``async def actor(ctx): await run_mcp_session(ctx, ...)``). It
    resolves ``server`` (calling a factory once), enters the server's lifespan, and runs the SDK's
    protocol loop while it reads the session's mailbox. Returns when:

    * the client ends the stream (EOF): the session is then asked to close with reason
      ``"client-disconnected"``;
    * the supervisor ends the session (an idle, init or lifetime deadline, ``close_session``,
      shutdown), once it has closed gracefully: from then on a new request gets a JSON-RPC
      error (code -32603) at once; requests in flight may finish within the
      grace period (``close_grace``, ``shutdown_grace`` for a shutdown; after a deadline
      ``close_grace`` from the moment it fired), and those still running shortly before it
      ends get that error too. Then the protocol loop ends and ``write_stream`` is closed.

    The handshake is reported to the supervisor: INITIALIZING on ``initialize``; READY, with the
    client info, negotiated version and capabilities, once the server has accepted it and the
    client has sent ``notifications/initialized`` (a half-open client is ended by the init
    deadline). On duplex transports (``handshake_only=False``) each request in flight also counts
    as busy, so a long tool call does not idle out.

    Args:
        ctx: The actor's session context.
        server: A server or a zero-argument factory (called here, once).
        read_stream: Messages from the client (anyio memory stream or SDK context stream).
        write_stream: Messages to the client; closed when the loop ends.
        transport: How the client is connected (defaults to ``ctx.session.transport``).
        handshake_only: Serve only the ``initialize`` era (``serve_loop``), as Streamable HTTP
            does; otherwise the client's first request picks the era (``serve_dual_era_loop``).
        on_message: Called with every mailbox message (the HTTP transport delivers requests this
            way). Without it, messages that expect a reply are failed with `TypeError`.
        init_options: ``InitializationOptions`` for the ``initialize`` result (the server's own
            by default).
        raise_exceptions: Let handler exceptions propagate (fails the session); for debugging.

    Raises:
        TypeError: ``server`` is not a server or a factory of one.
    """
    await _serve_session(
        ctx,
        server,
        read_stream,
        write_stream,
        _Handshake(ctx=ctx, track_busy=not handshake_only),
        transport=transport,
        handshake_only=handshake_only,
        on_message=on_message,
        init_options=init_options,
        raise_exceptions=raise_exceptions,
    )


async def _create_now(
    supervisor: Supervisor,
    actor: Actor,
    *,
    transport: Transport,
    principal: str | None,
    metadata: Mapping[str, Any] | None = None,
    durable: bool = False,
) -> Session:
    """A client's new session, never waiting for a slot (``durable``: see `McpHttpApp`).

    `Supervisor.create_session_nowait`; in cluster mode ``create_session(wait=False)``, since
    the slot is the cluster's (a round trip unless this node holds a spare one). Either way the
    actor has not run yet when this returns (no checkpoint since it was spawned), so the caller
    can register what the actor needs first.

    With ``passivate_at_capacity`` and a full supervisor, ``create_session(wait=False)``
    too: it passivates the least recently used idle durable session and waits for its slot
    (the actor has not run when it returns either).

    Raises:
        CapacityError, SupervisorClosed: as `Supervisor.create_session_nowait`.
    """
    config = supervisor.config
    full = config.passivate_at_capacity and len(supervisor) >= config.max_sessions
    if supervisor.cluster is None and not full:
        return supervisor.create_session_nowait(
            actor, transport=transport, principal=principal, metadata=metadata, durable=durable
        )
    return await supervisor.create_session(
        actor,
        transport=transport,
        principal=principal,
        metadata=metadata,
        wait=False,
        durable=durable,
    )


async def _serve_session(
    ctx: SessionContext[Any],
    server: ServerSource,
    read_stream: ReadStream[SessionMessage | Exception],
    write_stream: WriteStream[SessionMessage],
    handshake: _Handshake,
    *,
    transport: Transport | None,
    handshake_only: bool,
    on_message: Callable[[Message[Any]], None] | None,
    init_options: InitializationOptions | None = None,
    raise_exceptions: bool = False,
    drain: Callable[[Callable[[], None]], Awaitable[None]] | None = None,
    guard: _Guard | None = None,
) -> None:
    """`run_mcp_session` with the handshake observer supplied by the caller (HTTP reads it).

    ``drain(cut)``, when given, runs once the session is asked to close, before the protocol
    loop is cancelled; ``cut()`` ends the protocol loop early (see McpHttpApp). Without it the
    session closes gracefully on its own (see `_Closer`), shielded by ``guard`` (a transport
    whose own tasks must outlive the actor's cancellation opens it around them with
    `_guarded`), or by a guard of its own.
    """
    if drain is None:
        if guard is None:
            async with _guarded(ctx) as own:
                await _serve_gracefully(
                    ctx,
                    server,
                    read_stream,
                    write_stream,
                    handshake,
                    own,
                    transport=transport,
                    handshake_only=handshake_only,
                    on_message=on_message,
                    init_options=init_options,
                    raise_exceptions=raise_exceptions,
                )
            return
        await _serve_gracefully(
            ctx,
            server,
            read_stream,
            write_stream,
            handshake,
            guard,
            transport=transport,
            handshake_only=handshake_only,
            on_message=on_message,
            init_options=init_options,
            raise_exceptions=raise_exceptions,
        )
        return
    session = McpSession._restored(ctx, transport or ctx.session.transport)
    _CURRENT.set(session)
    lowlevel = resolve_server(server)
    observed = _ObservedReadStream(read_stream, handshake, session)
    reader, swallow = _replaying(ctx, handshake, observed)
    writer = _ObservedWriteStream(
        write_stream, handshake, durability=_Durability.of(ctx, session), swallow=swallow
    )
    eof = False
    protocol_scope = trio.CancelScope()
    loop = serve_loop if handshake_only else serve_dual_era_loop
    try:
        async with lowlevel.lifespan(lowlevel) as lifespan_state, trio.open_nursery() as nursery:

            async def protocol() -> None:
                nonlocal eof
                with protocol_scope:
                    await loop(
                        lowlevel,
                        reader,
                        writer,
                        lifespan_state=lifespan_state,
                        session_id=ctx.id,
                        init_options=init_options,
                        raise_exceptions=raise_exceptions,
                    )
                    # The client went away (EOF): the session is over.
                    eof = True
                    nursery.cancel_scope.cancel()

            nursery.start_soon(protocol)
            async for message in ctx.mailbox:
                if on_message is not None:
                    on_message(message)
                elif message.expects_reply:
                    message.fail(TypeError("this MCP session takes no mailbox requests"))
            # Asked to close. With a drain hook, in-flight work gets the grace period first; the
            # hook may end the protocol loop early (handlers cancelled by the SDK get a JSON-RPC
            # error) while the transport still delivers.
            if drain is not None:
                await drain(protocol_scope.cancel)
            nursery.cancel_scope.cancel()
    finally:
        handshake.release_all()
    if eof:
        ctx.close(reason=DISCONNECTED)


async def _serve_gracefully(
    ctx: SessionContext[Any],
    server: ServerSource,
    read_stream: ReadStream[SessionMessage | Exception],
    write_stream: WriteStream[SessionMessage],
    handshake: _Handshake,
    guard: _Guard,
    *,
    transport: Transport | None,
    handshake_only: bool,
    on_message: Callable[[Message[Any]], None] | None,
    init_options: InitializationOptions | None,
    raise_exceptions: bool,
) -> None:
    session = McpSession._restored(ctx, transport or ctx.session.transport)
    _CURRENT.set(session)
    lowlevel = resolve_server(server)
    closer = _Closer(write_stream, guard)
    observed = _ObservedReadStream(read_stream, handshake, session, closer)
    reader, swallow = _replaying(ctx, handshake, observed)
    writer = _ObservedWriteStream(
        write_stream, handshake, closer, durability=_Durability.of(ctx, session), swallow=swallow
    )
    eof = False
    protocol_scope = trio.CancelScope()
    loop = serve_loop if handshake_only else serve_dual_era_loop
    try:
        async with lowlevel.lifespan(lowlevel) as lifespan_state, trio.open_nursery() as nursery:
            serving = guard.waiting()

            async def protocol() -> None:
                nonlocal eof
                with protocol_scope:
                    await loop(
                        lowlevel,
                        reader,
                        writer,
                        lifespan_state=lifespan_state,
                        session_id=ctx.id,
                        init_options=init_options,
                        raise_exceptions=raise_exceptions,
                    )
                    # The client went away (EOF): the session is over.
                    eof = True
                    guard.wake()

            nursery.start_soon(protocol)
            with serving:
                async for message in ctx.mailbox:
                    if on_message is not None:
                        on_message(message)
                    elif message.expects_reply:
                        message.fail(TypeError("this MCP session takes no mailbox requests"))
            if not eof:
                # Asked to close, or a deadline fired: the grace period for what is in flight.
                await closer.drain(guard.begin_close())
            protocol_scope.cancel()
    finally:
        handshake.release_all()
    if eof:
        ctx.close(reason=DISCONNECTED)
