"""The 2026-07-28 single exchange over HTTP: one POST in, one JSON-RPC reply out, no session.

`serve_modern` answers a request of the sessionless era (``MCP-Protocol-Version: 2026-07-28``)
the way the SDK's ``handle_modern_request`` answers it, byte for byte (status codes, headers, the
JSON or SSE choice, the deferral window and its pings), with less work per request:

* the app (`McpHttpApp`) has already checked the path, Host/Origin, the token, the method, the
  Content-Type and the Accept header: no second security pass;
* the body comes in read once; no starlette ``Response``; the reply is encoded from the result
  dict in one ``json.dumps`` (pydantic only for errors and for a result plain JSON cannot
  carry);
* in SSE mode the handler runs in the request's own task, beside a single watcher task (no
  memory stream, no second handler task): the watcher waits for the client's disconnect (which
  cancels the handler, as in the SDK) and for the end of the deferral window (after which it
  commits ``text/event-stream`` and pings); a notification the handler emits is written by the
  handler's task itself. In JSON mode the handler runs in the request's task with no watcher,
  as in the SDK.

The protocol stays the SDK's: its ``serve_one`` runs the request under its single-exchange
dispatch context, and its ladder (``classify_inbound_request``, duplicated routing headers,
``Mcp-Param-*`` checks through the server's ``get_tool_input_schema`` or ``tools/list``)
decides the refusals.
"""

from __future__ import annotations

import contextvars
import json
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final, cast, final

import anyio
import trio
from mcp.server import _streamable_http_modern as _sdk
from mcp.server.connection import Connection
from mcp.server.runner import modern_error_data, serve_one
from mcp.shared import inbound as _inbound
from mcp.shared.inbound import (
    ERROR_CODE_HTTP_STATUS,
    InboundLadderRejection,
    classify_inbound_request,
    find_duplicated_routing_header,
    unsupported_protocol_version_rejection,
    validate_mcp_param_headers,
)
from mcp.shared.jsonrpc_dispatcher import progress_token_from_params
from mcp.shared.message import ServerMessageMetadata
from mcp.shared.transport_context import TransportContext
from mcp_types import (
    HEADER_MISMATCH,
    PARSE_ERROR,
    ErrorData,
    JSONRPCError,
    JSONRPCNotification,
    JSONRPCRequest,
    JSONRPCResponse,
    RequestId,
)
from pydantic import ValidationError
from starlette.requests import Request

from ._asgi import ASGIMessage, Receive, Scope, Send

if TYPE_CHECKING:
    from mcp.server.lowlevel.server import Server

__all__ = ["serve_modern"]

logger = logging.getLogger("supervisor.mcp")

_JSON_HEADERS_TAIL: Final = (b"content-type", b"application/json")
_PING: Final = b": ping\r\n\r\n"
_SUBSCRIBE: Final = "subscriptions/listen"
#: ``json.dumps(x, separators=(",", ":"))``, the SDK's encoding, without a new encoder per call.
_COMPACT: Final = json.JSONEncoder(separators=(",", ":")).encode
#: The same, refusing what strict JSON cannot carry (NaN, infinities).
_STRICT: Final = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode
_MCP_PARAM_PREFIX: Final = _sdk._MCP_PARAM_PREFIX_LOWER
#: Input schemas seen, by identity, and whether any of their properties names an Mcp-Param
#: header (``x-mcp-header``): one without any never has a header to check. A schema is kept
#: alive while cached (its id cannot be reused) and treated as immutable, as the SDK's
#: listing treats it; the cache is bounded.
_ANNOTATED: dict[int, tuple[object, bool]] = {}
_ANNOTATED_MAX: Final = 1024


# -- writing ---------------------------------------------------------------------------------


async def _write_json(send: Send, status: int, body: dict[str, Any]) -> None:
    """``body`` as one ``application/json`` response (what starlette's ``Response`` sends)."""
    payload = _COMPACT(body).encode()
    await _write_payload(send, status, payload)


async def _write_payload(send: Send, status: int, payload: bytes) -> None:
    headers = [(b"content-length", str(len(payload)).encode()), _JSON_HEADERS_TAIL]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


async def _write_empty(send: Send, status: int) -> None:
    """A response without a body (202, 406), as starlette's ``Response(status_code=...)``."""
    headers = [(b"content-length", b"0")]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b""})


async def _write_error(send: Send, error: JSONRPCError) -> None:
    """A JSON-RPC error with the table-mapped HTTP status (``id: null`` kept on the wire)."""
    body = error.model_dump(mode="json", by_alias=True, exclude_none=True)
    if error.id is None:
        body["id"] = None
    await _write_json(send, ERROR_CODE_HTTP_STATUS.get(error.error.code, 200), body)


async def _write_rejection(
    send: Send, rejection: InboundLadderRejection, request_id: RequestId | None
) -> None:
    data = ErrorData(code=rejection.code, message=rejection.message, data=rejection.data)
    await _write_error(send, JSONRPCError(jsonrpc="2.0", id=request_id, error=data))


# -- the reply -------------------------------------------------------------------------------


@final
class _Reply:
    """The handler's outcome: a result dict or the mapped error, encoded on demand."""

    __slots__ = ("error", "request_id", "result")

    def __init__(
        self,
        request_id: RequestId,
        result: dict[str, Any] | None,
        error: ErrorData | None,
    ) -> None:
        self.request_id = request_id
        self.result = result
        self.error = error

    def status(self) -> int:
        if self.error is None:
            return 200
        return ERROR_CODE_HTTP_STATUS.get(self.error.code, 200)

    def data(self) -> str:
        """The compact JSON text the SDK's ``model_dump`` + ``json.dumps`` gives."""
        if self.error is None:
            assert self.result is not None
            envelope = {"jsonrpc": "2.0", "id": self.request_id, "result": self.result}
            try:
                # Strict JSON only; anything else (NaN, a value plain JSON cannot carry)
                # takes the SDK's own pydantic path below.
                return _STRICT(envelope)
            except (TypeError, ValueError):
                message: JSONRPCResponse | JSONRPCError = JSONRPCResponse(
                    jsonrpc="2.0", id=self.request_id, result=self.result
                )
        else:
            message = JSONRPCError(jsonrpc="2.0", id=self.request_id, error=self.error)
        body = message.model_dump(mode="json", by_alias=True, exclude_none=True)
        return _COMPACT(body)


async def _answer(
    server: Server[Any],
    dctx: _sdk._SingleExchangeDispatchContext,
    req: JSONRPCRequest,
    connection: Connection,
    lifespan_state: Any,
) -> _Reply:
    """Run the request through the SDK's ``serve_one``; map a failure as the SDK maps it."""
    try:
        result = await serve_one(
            server,
            dctx,
            req.method,
            req.params,
            connection=connection,
            lifespan_state=lifespan_state,
        )
    except Exception as exc:
        return _Reply(req.id, None, modern_error_data(exc))
    return _Reply(req.id, result, None)


# -- SSE mode --------------------------------------------------------------------------------


@final
class _Stream:
    """The response of one SSE-mode exchange, shared by the handler's task and the watcher.

    Used as the dispatch context's sink: ``send(event)`` is how the SDK's ``notify`` emits a
    notification. The first write commits ``text/event-stream``; a lock keeps the handler's
    writes and the watcher's pings whole and in order.
    """

    __slots__ = ("_send", "closed", "interval", "lock", "ping_at", "started", "timer")

    def __init__(self, send: Send, interval: float) -> None:
        self._send = send
        self.interval = interval
        self.ping_at = trio.current_time() + interval
        self.started = False
        self.closed = False
        self.lock = trio.Lock()
        self.timer: trio.CancelScope | None = None

    async def send(self, event: bytes) -> None:
        """Write one notification event (the sink side of the SDK's ``notify``).

        Raises:
            anyio.ClosedResourceError: the handler has finished (the SDK drops it then too).
        """
        if self.closed:
            raise anyio.ClosedResourceError
        await self.write(event)

    async def write(self, event: bytes | None) -> None:
        """Write ``event`` (None: a keepalive ping), committing SSE first if needed."""
        async with self.lock:
            if event is None and self.closed:
                return  # the handler has finished: its reply is being written
            if not self.started:
                self.started = True
                await self._send(
                    {"type": "http.response.start", "status": 200, "headers": _sdk._SSE_HEADERS}
                )
            message: ASGIMessage = {
                "type": "http.response.body",
                "body": event or _PING,
                "more_body": True,
            }
            await self._send(message)
            self.ping_at = trio.current_time() + self.interval
            if self.timer is not None:
                self.timer.deadline = self.ping_at


async def _watch(
    stream: _Stream, receive: Receive, handler: trio.CancelScope, watching: trio.CancelScope
) -> None:
    """Cancel ``handler`` when the client leaves; ping after each silent interval.

    A system task (see `_serve_sse`), so it raises nothing: ``watching`` ends it. Cancelled
    before it first runs, it takes nothing from ``receive`` (a trio checkpoint comes first).
    """
    try:
        with watching:
            while True:
                with trio.CancelScope(deadline=stream.ping_at) as timer:
                    stream.timer = timer
                    while (await receive()).get("type") != "http.disconnect":
                        pass  # pragma: no cover - nothing but a disconnect follows the body
                    handler.cancel()
                    return
                stream.timer = None
                await stream.write(None)
    except Exception:
        # The response stream broke under a ping: nobody left to answer.
        logger.debug("2026-07-28 SSE stream failed", exc_info=True)
        handler.cancel()


async def _serve_sse(
    server: Server[Any],
    dctx: _sdk._SingleExchangeDispatchContext,
    req: JSONRPCRequest,
    connection: Connection,
    lifespan_state: Any,
    receive: Receive,
    send: Send,
) -> None:
    # Read at call time: the SDK's deferral window and ping interval, one figure.
    stream = _Stream(send, _sdk._SSE_PING_INTERVAL)
    dctx.sink = cast("Any", stream)
    reply: _Reply | None = None
    handler = trio.CancelScope()
    watching = trio.CancelScope()
    # The handler runs here, in the request's task; the watcher is a system task, not a child
    # in a nursery of this request: no nursery to open and wait out, and ending it is a
    # cancel. The ping and disconnect semantics are the SDK's task group's. It runs in a copy
    # of the request's context, as the SDK's pings do: a middleware's ``send`` may read it.
    trio.lowlevel.spawn_system_task(
        _watch, stream, receive, handler, watching, context=contextvars.copy_context()
    )
    try:
        with handler:
            reply = await _answer(server, dctx, req, connection, lifespan_state)
        if stream.lock.locked():  # a ping being written: let it finish whole
            async with stream.lock:
                stream.closed = True
        stream.closed = True
    finally:
        watching.cancel()
    if reply is None:
        return  # the client left: the handler was cancelled, nobody to answer
    if not stream.started:
        # Finished within the deferral window without emitting: plain JSON, mapped status.
        await _write_payload(send, reply.status(), reply.data().encode())
        return
    final = f"event: message\r\ndata: {reply.data()}\r\n\r\n".encode()
    await send({"type": "http.response.body", "body": final, "more_body": False})


# -- Mcp-Param headers -----------------------------------------------------------------------


def _has_annotations(schema: Any) -> bool:
    """Whether ``schema`` names any Mcp-Param header (cached by identity, see `_ANNOTATED`)."""
    key = id(schema)
    entry = _ANNOTATED.get(key)
    if entry is not None and entry[0] is schema:
        return entry[1]
    annotated = any(True for _ in _inbound._annotated_positions(schema))
    if len(_ANNOTATED) >= _ANNOTATED_MAX:
        _ANNOTATED.clear()
    _ANNOTATED[key] = (schema, annotated)
    return annotated


async def _mcp_param_rejection(
    server: Server[Any],
    request: Request,
    req: JSONRPCRequest,
    verdict: Any,
    lifespan_state: Any,
) -> InboundLadderRejection | None:
    """The SDK's ``_mcp_param_rejection``, skipping the check for a schema with no header."""
    lookup = server.get_tool_input_schema
    if lookup is None or req.method != "tools/call":
        return await _sdk._mcp_param_rejection(server, request, req, verdict, lifespan_state)
    params = req.params or {}
    name = params.get("name")
    if not isinstance(name, str):
        return None
    raw_arguments = params.get("arguments")
    if raw_arguments is not None and not isinstance(raw_arguments, Mapping):
        return None
    arguments: Mapping[str, Any] = raw_arguments if raw_arguments is not None else {}
    headers = request.headers
    if not arguments and not any(header.startswith(_MCP_PARAM_PREFIX) for header in headers):
        return None
    try:
        input_schema = lookup(name)
    except Exception:
        logger.exception("Mcp-Param header validation skipped: get_tool_input_schema raised")
        return None
    if input_schema is None or not _has_annotations(input_schema):
        # No annotated property: the SDK's validation finds nothing to compare.
        return None
    return validate_mcp_param_headers(input_schema, arguments, headers)


# -- the exchange ----------------------------------------------------------------------------


async def serve_modern(
    server: Server[Any],
    *,
    json_response: bool,
    lifespan_state: Any,
    scope: Scope,
    body: bytes,
    receive: Receive,
    send: Send,
) -> None:
    """Answer one 2026-07-28 POST whose ``body`` has been read, as the SDK's entry answers it.

    The caller has checked everything before the body (path, Host/Origin, token, POST, a JSON
    Content-Type, an Accept the response mode can serve). ``receive`` then gives only the
    client's disconnect: in SSE mode it cancels the handler. Never sets ``Mcp-Session-Id``.
    """
    try:
        decoded = json.loads(body)
    except (ValueError, RecursionError):
        # Oversized integer literals raise a bare ValueError, deep nesting RecursionError.
        error = ErrorData(code=PARSE_ERROR, message="Parse error")
        await _write_error(send, JSONRPCError(jsonrpc="2.0", id=None, error=error))
        return
    raw: list[tuple[bytes, bytes]] = scope.get("headers", [])
    if isinstance(decoded, dict) and "id" not in decoded:
        await _acknowledge(decoded, raw, send)
        return
    try:
        req = JSONRPCRequest.model_validate(decoded)
    except ValidationError:
        await _write_error(send, _sdk._INVALID_BODY)
        return

    if req.method == _SUBSCRIBE and not _accepts_sse(raw):
        await _write_empty(send, 406)  # a listen response is a notification stream, never JSON
        return

    pairs = [(bytes(k).decode("latin-1"), bytes(v).decode("latin-1")) for k, v in raw]
    duplicated = find_duplicated_routing_header(pairs)
    if duplicated is not None:
        rejection = InboundLadderRejection(
            code=HEADER_MISMATCH, message=f"{duplicated} header appears more than once"
        )
        await _write_rejection(send, rejection, req.id)
        return

    folded: dict[str, str] = {}
    for key, value in pairs:
        folded.setdefault(key, value)  # the first copy, as a folded starlette mapping reads
    verdict = classify_inbound_request(decoded, headers=folded)
    if isinstance(verdict, InboundLadderRejection):
        await _write_rejection(send, verdict, req.id)
        return

    request = Request(scope, receive)
    request._body = body  # what `Request.body()` caches: a handler reading it gets the body
    param_rejection = await _mcp_param_rejection(server, request, req, verdict, lifespan_state)
    if param_rejection is not None:
        await _write_rejection(send, param_rejection, req.id)
        return

    connection = Connection.from_envelope(
        verdict.protocol_version, verdict.client_info, verdict.client_capabilities
    )
    dctx = _sdk._SingleExchangeDispatchContext(
        transport=TransportContext(
            kind="streamable-http", can_send_request=False, headers=request.headers
        ),
        request_id=req.id,
        message_metadata=ServerMessageMetadata(request_context=request),
        progress_token=progress_token_from_params(req.params),
    )
    if json_response and req.method != _SUBSCRIBE:
        reply = await _answer(server, dctx, req, connection, lifespan_state)
        await _write_payload(send, reply.status(), reply.data().encode())
        return
    await _serve_sse(server, dctx, req, connection, lifespan_state, receive, send)


def _accepts_sse(raw: list[tuple[bytes, bytes]]) -> bool:
    """Whether the first Accept header lists SSE (the SDK's ``check_accept_headers``)."""
    accept = ""
    for key, value in raw:
        if key == b"accept":
            accept = bytes(value).decode("latin-1")
            break
    types = [part.strip().split(";")[0].strip().lower() for part in accept.split(",")]
    return "*/*" in types or "text/event-stream" in types or "text/*" in types


async def _acknowledge(decoded: dict[str, Any], raw: list[tuple[bytes, bytes]], send: Send) -> None:
    """An id-less body: ``202`` for a notification at a served version, a rejection otherwise.

    Acknowledged and dropped, as the SDK does (see its ``_acknowledge_notification``).
    """
    try:
        notification = JSONRPCNotification.model_validate(decoded)
    except ValidationError:
        await _write_error(send, _sdk._INVALID_BODY)
        return
    requested = ""
    for key, value in raw:
        if key == b"mcp-protocol-version":
            requested = bytes(value).decode("latin-1")
            break
    unsupported = unsupported_protocol_version_rejection(requested)
    if unsupported is not None:  # pragma: no cover - the app routes only served versions here
        await _write_rejection(send, unsupported, None)
        return
    logger.debug("acknowledged and dropped client notification %s", notification.method)
    await _write_empty(send, 202)
