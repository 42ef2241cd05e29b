"""WebSocket transport: one supervised session per connection (subprotocol ``"mcp"``).

Each text (or binary) frame carries one JSON-RPC message in each direction. Served by
`McpHttpApp` on its path for ASGI ``websocket`` scopes, so hypercorn serves HTTP and WebSocket
on one port.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from contextlib import suppress
from typing import TYPE_CHECKING, Any, Protocol

import anyio
import trio
from mcp.shared.message import SessionMessage
from mcp_types import jsonrpc_message_adapter

from .. import CapacityError, SupervisorClosed, Transport
from ._asgi import ASGIMessage, Receive, Scope, Send
from ._auth import Principal
from ._session import (
    DISCONNECTED,
    ServerSource,
    _create_now,
    _guarded,
    _Handshake,
    _serve_session,
)

if TYPE_CHECKING:
    from .. import SessionContext, Supervisor

__all__ = ["SUBPROTOCOL", "serve_websocket_connection"]

logger = logging.getLogger("supervisor.mcp")

#: The WebSocket subprotocol MCP clients offer.
SUBPROTOCOL = "mcp"


class _Front(Protocol):
    """What a connection needs of the app that serves it (`McpHttpApp`, which imports this)."""

    supervisor: Supervisor
    server: ServerSource
    websocket: bool
    retry_after: int

    def _path_ok(self, scope: Scope) -> bool: ...

    def _origin_ok(self, scope: Scope) -> bool: ...

    async def _authenticate(self, scope: Scope) -> tuple[bool, Principal | None]: ...

    def _www_authenticate(self) -> tuple[str, str]: ...


async def _deny(
    scope: Scope, send: Send, status: int, headers: Sequence[tuple[str, str]] = ()
) -> None:
    """Refuse the handshake: an HTTP response where the server supports it, else a close."""
    if "websocket.http.response" in scope.get("extensions", {}):
        raw = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers]
        await send({"type": "websocket.http.response.start", "status": status, "headers": raw})
        await send({"type": "websocket.http.response.body", "body": b"", "more_body": False})
    else:
        await send({"type": "websocket.close", "code": 1008})


async def serve_websocket_connection(
    app: _Front, scope: Scope, receive: Receive, send: Send
) -> None:
    """Serve one WebSocket connection as one session of ``app.supervisor``.

    Refuses the handshake (403 for Host/Origin or a missing ``"mcp"`` subprotocol when others
    are offered, 401 for a refused token, 503 at capacity) before any session exists. Returns
    when the session has ended; a client disconnect closes the session with reason
    ``"client-disconnected"``. Ended by the supervisor (a deadline, ``close_session``,
    shutdown), the session closes gracefully (see `run_mcp_session`), then the socket gets a
    close frame with code 1000 and the close reason (``"idle-timeout"``, ``"shutdown"``, ...);
    a session that failed gets 1011.
    """
    first = await receive()
    if first["type"] != "websocket.connect":  # pragma: no cover - not in the ASGI spec
        return
    if not app.websocket or not app._path_ok(scope):
        await _deny(scope, send, 404)
        return
    if not app._origin_ok(scope):
        await _deny(scope, send, 403)
        return
    ok, principal = await app._authenticate(scope)
    if not ok:
        await _deny(scope, send, 401, [app._www_authenticate()])
        return
    offered = [str(p) for p in scope.get("subprotocols", ())]
    if offered and SUBPROTOCOL not in offered:
        await _deny(scope, send, 403)
        return

    done = trio.Event()

    async def actor(ctx: SessionContext[Any]) -> None:
        try:
            await _run_connection(ctx, app, receive, send)
        finally:
            done.set()

    try:
        session = await _create_now(
            app.supervisor, actor, transport=Transport.WEBSOCKET, principal=principal
        )
    except (CapacityError, SupervisorClosed):
        await _deny(scope, send, 503, [("Retry-After", str(app.retry_after))])
        return
    if principal is not None and not session.is_authenticated:
        app.supervisor.authenticate_session(session.id, principal)
    accept: ASGIMessage = {"type": "websocket.accept"}
    if offered:
        accept["subprotocol"] = SUBPROTOCOL
    try:
        await send(accept)
        await done.wait()
    finally:
        if not done.is_set():
            app.supervisor.close_session(session.id, reason=DISCONNECTED)


#: Close codes (RFC 6455): a session that ended cleanly (a deadline, ``close_session``,
#: shutdown), with the close reason in the frame; one whose actor failed.
NORMAL_CLOSURE = 1000
INTERNAL_ERROR = 1011

#: A close frame's reason is at most 123 bytes of UTF-8.
_MAX_REASON = 123


async def _run_connection(
    ctx: SessionContext[Any], app: _Front, receive: Receive, send: Send
) -> None:
    to_server, from_client = anyio.create_memory_object_stream[SessionMessage | Exception](16)
    to_client, from_server = anyio.create_memory_object_stream[SessionMessage](16)
    open_ = True

    async def pump_in() -> None:
        nonlocal open_
        async with to_server:
            while True:
                message = await receive()
                if message["type"] == "websocket.disconnect":
                    open_ = False
                    return
                if message["type"] != "websocket.receive":  # pragma: no cover
                    continue
                data = message.get("text")
                if data is None:
                    data = message.get("bytes") or b""
                try:
                    item: SessionMessage | Exception = SessionMessage(
                        jsonrpc_message_adapter.validate_json(data, by_name=False)
                    )
                except Exception as exc:
                    item = exc
                with suppress(anyio.BrokenResourceError):  # the session has stopped reading
                    await to_server.send(item)

    async def pump_out() -> None:
        async with from_server:
            async for item in from_server:
                text = item.message.model_dump_json(by_alias=True, exclude_unset=True)
                await send({"type": "websocket.send", "text": text})

    # Shielded from the supervisor's cancellation, so that a deadline, like a close, lets the
    # requests in flight finish, and the socket always gets its close frame.
    async with _guarded(ctx) as guard:
        failure: Exception | None = None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pump_in)
            writer = trio.Event()

            async def writer_task() -> None:
                try:
                    await pump_out()
                except Exception:  # the peer went away mid-write; the session ends anyway
                    logger.debug("websocket write failed", exc_info=True)
                finally:
                    writer.set()

            nursery.start_soon(writer_task)
            code, reason = INTERNAL_ERROR, "internal error"
            try:
                await _serve_session(
                    ctx,
                    app.server,
                    from_client,
                    to_client,
                    _Handshake(ctx=ctx, track_busy=True),
                    transport=Transport.WEBSOCKET,
                    handshake_only=False,
                    on_message=None,
                    guard=guard,
                )
                code, reason = NORMAL_CLOSURE, guard.reason
            except Exception as exc:  # raised below as it is, not in an exception group
                failure = exc
            finally:
                to_client.close()
                await writer.wait()
                if open_:
                    try:
                        await send(
                            {
                                "type": "websocket.close",
                                "code": code,
                                "reason": reason.encode()[:_MAX_REASON].decode(errors="ignore"),
                            }
                        )
                    except Exception:  # pragma: no cover - already closed underneath us
                        logger.debug("websocket close failed", exc_info=True)
                nursery.cancel_scope.cancel()
        if failure is not None:
            raise failure
