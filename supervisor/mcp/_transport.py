"""A lean Streamable HTTP wire for one session: the SDK's transport, without its machinery.

`_Wire` speaks what the SDK's ``StreamableHTTPServerTransport`` speaks, byte for byte where a
client can see it (status codes, headers, error bodies, SSE frames, event ids, priming events,
the order of events), and hands the SDK's protocol loop the same stream pair (`_Inbox` to read,
`_Outbox` to write). What it leaves out is what cost the time: no starlette request parsing or
responses, no sse-starlette, no message-router task, no memory streams or task groups per
request. A request's own task (the ASGI server's) does its wire work: it queues the message for
the protocol loop, parks on its response `_Stream`, and writes each event with ASGI ``send``
itself; the protocol loop's writes are routed straight into the waiting stream.

Everything here is synchronous between checkpoints where state is shared (trio is single
threaded), and every park is a `trio.lowlevel` park that a cancellation aborts cleanly.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from typing import TYPE_CHECKING, Any, Final, final

import anyio
import outcome
import pydantic_core
import trio
from mcp.server.streamable_http import (
    GET_STREAM_KEY,
    REQUEST_CANCELLED,
    EventMessage,
    EventStore,
)
from mcp.shared.inbound import MCP_PROTOCOL_VERSION_HEADER
from mcp.shared.message import ServerMessageMetadata, SessionMessage
from mcp_types import (
    DEFAULT_NEGOTIATED_VERSION,
    INTERNAL_ERROR,
    INVALID_PARAMS,
    INVALID_REQUEST,
    PARSE_ERROR,
    ErrorData,
    JSONRPCError,
    JSONRPCNotification,
    JSONRPCRequest,
    JSONRPCResponse,
    jsonrpc_message_adapter,
)
from mcp_types.version import is_version_at_least
from pydantic import ValidationError
from starlette.requests import Request

from ._asgi import Receive, Scope, Send, _header
from ._session import _ClosesOnExit, _ReadsUntilEnd

if TYPE_CHECKING:
    from mcp_types import JSONRPCMessage

    from ._session import _Handshake

logger = logging.getLogger("supervisor.mcp")

#: Messages queued for the protocol loop before a sender waits (the SDK hands them over one by one).
_INBOX_LIMIT: Final = 16
#: Events queued on one response stream before the protocol loop's writer waits (the SDK's
#: ``REQUEST_STREAM_BUFFER_SIZE``).
_STREAM_LIMIT: Final = 16
#: Seconds between keep-alive comments on an open SSE stream (sse-starlette's default).
_PING_INTERVAL: Final = 15.0
#: A response that takes longer than this starts watching for the client's disconnect.
_WATCH_AFTER: Final = 0.02

_SSE_HEADERS_HEAD: Final = (
    (b"cache-control", b"no-cache, no-transform"),
    (b"connection", b"keep-alive"),
    (b"content-type", b"text/event-stream"),
)
_CONTENT_JSON: Final = (b"content-type", b"application/json")
_END: Final = {"type": "http.response.body", "body": b"", "more_body": False}


def _clean(value: str) -> str:
    return value.replace("\r", "").replace("\n", "") if "\r" in value or "\n" in value else value


def _frame(
    data: str, event_id: str | None, *, event: bool = True, retry: int | None = None
) -> bytes:
    """One SSE event as sse-starlette encodes it (``\\r\\n`` lines: id, event, data, retry)."""
    head = "" if not event_id else f"id: {_clean(event_id)}\r\n"
    if event:
        head += "event: message\r\n"
    if "\r" in data or "\n" in data:  # pragma: no cover - compact JSON has no raw newline
        body = "".join(
            f"data: {line}\r\n"
            for line in data.replace("\r\n", "\n").replace("\r", "\n").split("\n")
        )
    else:
        body = f"data: {data}\r\n"
    tail = "" if retry is None else f"retry: {retry}\r\n"
    return (head + body + tail + "\r\n").encode("utf-8")


def _event_frame(event: EventMessage) -> bytes:
    return _frame(event.message.model_dump_json(by_alias=True, exclude_unset=True), event.event_id)


def _ping_frame() -> bytes:
    return f": ping - {datetime.now(UTC)}\r\n\r\n".encode()


def _body(data: bytes) -> dict[str, Any]:
    return {"type": "http.response.body", "body": data, "more_body": True}


def _error_body(code: int, message: str) -> bytes:
    error = JSONRPCError(jsonrpc="2.0", id=None, error=ErrorData(code=code, message=message))
    return error.model_dump_json(by_alias=True, exclude_unset=True).encode()


@final
class _Inbox(_ReadsUntilEnd):
    """The protocol loop's read stream: messages from the session's requests, in order.

    A single consumer parks in `receive` (a `trio.lowlevel` park); a sender hands its message
    over without a context switch of its own. Senders wait only when `_INBOX_LIMIT` messages
    are queued. `close` ends it: the reader gets ``anyio.EndOfStream`` (the SDK's EOF), senders
    ``anyio.ClosedResourceError``.
    """

    __slots__ = ("_items", "_reader", "_room", "closed")

    def __init__(self) -> None:
        self._items: deque[SessionMessage | Exception] = deque()
        self._reader: trio.lowlevel.Task | None = None
        self._room: trio.Event | None = None
        self.closed = False

    def put_nowait(self, item: SessionMessage | Exception) -> None:
        """Queue ``item`` whatever the queue's length (notices that must not wait)."""
        if self.closed:
            raise anyio.ClosedResourceError
        reader = self._reader
        if reader is not None:
            self._reader = None
            trio.lowlevel.reschedule(reader, outcome.Value(item))
        else:
            self._items.append(item)

    async def send(self, item: SessionMessage | Exception) -> None:
        self.put_nowait(item)
        while len(self._items) > _INBOX_LIMIT and not self.closed:
            if self._room is None:
                self._room = trio.Event()
            await self._room.wait()

    async def receive(self) -> SessionMessage | Exception:
        await trio.lowlevel.checkpoint_if_cancelled()
        if self._items:
            item = self._items.popleft()
            if self._room is not None and len(self._items) <= _INBOX_LIMIT:
                self._room.set()
                self._room = None
            return item
        if self.closed:
            raise anyio.EndOfStream
        self._reader = trio.lowlevel.current_task()

        def abort(_: Any) -> trio.lowlevel.Abort:
            self._reader = None
            return trio.lowlevel.Abort.SUCCEEDED

        received: SessionMessage | Exception = await trio.lowlevel.wait_task_rescheduled(abort)
        return received

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._items.clear()
        if self._room is not None:
            self._room.set()
            self._room = None
        reader, self._reader = self._reader, None
        if reader is not None:
            trio.lowlevel.reschedule(reader, outcome.Error(anyio.EndOfStream()))

    async def aclose(self) -> None:
        self.close()


@final
class _Outbox(_ClosesOnExit):
    """The protocol loop's write stream: each message is routed at once to its response stream."""

    __slots__ = ("_wire", "closed")

    def __init__(self, wire: _Wire) -> None:
        self._wire = wire
        self.closed = False

    async def send(self, item: SessionMessage, /) -> None:
        if self.closed:
            raise anyio.ClosedResourceError
        await self._wire.route(item)

    async def aclose(self) -> None:
        self.closed = True


@final
class _Stream:
    """The events waiting for one open response: a POST's SSE stream, the GET stream, a replay.

    The protocol loop's writer `push`es (waiting for `room` when `_STREAM_LIMIT` events are
    queued, as the SDK's buffered stream does); the response's task takes them in `wait`. A
    closed stream ends its response at the next message boundary; ``gone`` is set when the
    client disconnected.
    """

    __slots__ = ("_reader", "_room", "closed", "events", "gone", "request_id")

    def __init__(self, request_id: Any = None) -> None:
        #: The JSON-RPC id of the request this stream answers (None: the GET stream, a replay).
        self.request_id = request_id
        self.events: deque[EventMessage] = deque()
        self._reader: trio.lowlevel.Task | None = None
        self._room: trio.Event | None = None
        self.closed = False
        self.gone = False

    def push(self, event: EventMessage) -> None:
        self.events.append(event)
        self._wake()

    def full(self) -> bool:
        return len(self.events) >= _STREAM_LIMIT

    async def room(self) -> None:
        while self.full() and not self.closed:
            if self._room is None:
                self._room = trio.Event()
            await self._room.wait()

    def take(self) -> EventMessage:
        event = self.events.popleft()
        if self._room is not None and not self.full():
            self._room.set()
            self._room = None
        return event

    def close(self) -> None:
        self.closed = True
        if self._room is not None:
            self._room.set()
            self._room = None
        self._wake()

    def leave(self) -> None:
        """The client disconnected."""
        self.gone = True
        self._wake()

    def _wake(self) -> None:
        reader = self._reader
        if reader is not None:
            self._reader = None
            trio.lowlevel.reschedule(reader)

    async def wait(self) -> None:
        """Until an event is queued, or the stream is closed or its client gone."""
        if self.events or self.closed or self.gone:
            await trio.lowlevel.checkpoint_if_cancelled()
            return
        self._reader = trio.lowlevel.current_task()

        def abort(_: Any) -> trio.lowlevel.Abort:
            self._reader = None
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)


async def _watch(receive: Receive, stream: _Stream) -> None:
    """Tell ``stream`` when its client disconnects.

    The rest of a body (a GET's empty one) is skipped; any other message ends the watch.
    """
    while True:
        message = await receive()
        kind = message["type"]
        if kind == "http.disconnect":
            stream.leave()
            return
        if kind != "http.request":
            return
        await trio.lowlevel.checkpoint()


def _accepts_sse(scope: Scope) -> bool:
    """The SDK's Accept check for a GET (RFC 7231 wildcards)."""
    accept = [
        part.strip().split(";")[0].strip().lower()
        for part in (_header(scope, b"accept") or "").split(",")
    ]
    return "*/*" in accept or "text/event-stream" in accept or "text/*" in accept


def _content_type_ok(scope: Scope) -> bool:
    """The SDK's Content-Type check for a POST (after the app's own, which is looser)."""
    content_type = _header(scope, b"content-type") or ""
    if content_type == "application/json":
        return True
    return any(part.strip() == "application/json" for part in content_type.split(";")[0].split(","))


#: While a resumed GET runs its replay: called once the replayed stream is known to be the
#: session's stream of server-to-client messages (see `_http_session._SessionEventStore`).
_RELEASE: contextvars.ContextVar[Callable[[], None] | None] = contextvars.ContextVar(
    "supervisor_mcp_http_release", default=None
)


@final
class _Wire:
    """One session's Streamable HTTP wire (the SDK transport's behaviour, see the module doc).

    Args:
        session_id: The ``Mcp-Session-Id`` every response carries.
        json_response: Answer request POSTs with one JSON body instead of an SSE stream.
        event_store: This session's view of the event store (resumable streams), or None.
        retry_interval: Milliseconds for the ``retry`` field of priming events.
    """

    __slots__ = (
        "_store",
        "_streams",
        "handshake",
        "inbox",
        "json_response",
        "outbox",
        "retry_interval",
        "session_id",
    )

    def __init__(
        self,
        session_id: str,
        *,
        json_response: bool,
        event_store: EventStore | None,
        retry_interval: int | None,
    ) -> None:
        self.session_id = session_id
        self.json_response = json_response
        self._store = event_store
        self.retry_interval = retry_interval
        self._streams: dict[str, _Stream] = {}
        self.inbox = _Inbox()
        self.outbox = _Outbox(self)
        #: Set by the session actor: ``notifications/initialized`` is recorded before its 202.
        self.handshake: _Handshake | None = None

    # -- the protocol loop's side ----------------------------------------------------------

    async def route(self, item: SessionMessage) -> None:
        """Deliver a message of the protocol loop to its stream (the SDK's message router)."""
        message = item.message
        target: str | None = None
        if isinstance(message, JSONRPCResponse | JSONRPCError) and message.id is not None:
            target = str(message.id)
        else:
            metadata = item.metadata
            if (
                isinstance(metadata, ServerMessageMetadata)
                and metadata.related_request_id is not None
            ):
                if self.json_response:
                    # A JSON body carries only the response: this message has no wire form.
                    return
                target = str(metadata.related_request_id)
        stream_id = GET_STREAM_KEY if target is None else target
        event_id = None
        if self._store is not None:
            event_id = await self._store.store_event(stream_id, message)
        stream = self._streams.get(stream_id)
        if stream is None:
            return  # nobody listening: stored (if there is a store) for a replay
        if stream.full():
            await stream.room()
            if self._streams.get(stream_id) is not stream:
                return
        stream.push(EventMessage(message, event_id))

    def close_sse_stream(self, request_id: str) -> None:
        """End the response stream of ``request_id`` (the client may resume it)."""
        stream = self._streams.pop(request_id, None)
        if stream is not None:
            stream.close()

    def close_standalone_sse_stream(self) -> None:
        """End the GET stream of server-to-client messages."""
        self.close_sse_stream(GET_STREAM_KEY)

    def close(self) -> None:
        """The session is over: every stream ends, the protocol loop reads EOF."""
        self.inbox.close()
        streams = list(self._streams.values())
        self._streams.clear()
        for stream in streams:
            stream.close()

    def fail_requests(self, why: str) -> None:
        """The protocol loop died (the actor crashed): every request still waiting for its
        response gets a JSON-RPC error instead of a stream that just ends."""
        for stream in self._streams.values():
            if stream.request_id is not None and not stream.closed:
                error = ErrorData(code=INTERNAL_ERROR, message=why)
                failed = JSONRPCError(jsonrpc="2.0", id=stream.request_id, error=error)
                stream.push(EventMessage(failed, None))

    async def _terminate_unanswered(self, request_id: Any) -> None:
        # The 2025-era wire ends a request's stream only with a response: the SDK's answer to
        # a request that settled without one (cancelled).
        error = ErrorData(code=REQUEST_CANCELLED, message="Request cancelled")
        await self.route(SessionMessage(JSONRPCError(jsonrpc="2.0", id=request_id, error=error)))

    # -- responses ---------------------------------------------------------------------------

    def _json_headers(self, length: int) -> list[tuple[bytes, bytes]]:
        return [
            _CONTENT_JSON,
            (b"mcp-session-id", self.session_id.encode()),
            (b"content-length", str(length).encode()),
        ]

    def _sse_headers(self) -> list[tuple[bytes, bytes]]:
        return [
            *_SSE_HEADERS_HEAD,
            (b"mcp-session-id", self.session_id.encode()),
            (b"x-accel-buffering", b"no"),
        ]

    async def _respond(self, send: Send, status: int, body: bytes) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": self._json_headers(len(body)),
            }
        )
        await send({"type": "http.response.body", "body": body, "more_body": False})

    async def _error(self, send: Send, status: int, code: int, message: str) -> None:
        await self._respond(send, status, _error_body(code, message))

    # -- POST --------------------------------------------------------------------------------

    async def post(self, scope: Scope, receive: Receive, send: Send, body: bytes, raw: Any) -> None:
        """Serve a POST of this session whose headers the app has checked; ``body`` is read.

        ``raw`` is the body parsed already (`parse`), or `_UNPARSED`.
        """
        started = False

        async def tracking(message: Any) -> None:
            nonlocal started
            started = True
            await send(message)

        try:
            await self._post(scope, receive, tracking, body, raw)
        except Exception as exc:
            logger.exception("Error handling POST request")
            if not started:
                await self._error(send, 500, INTERNAL_ERROR, "Error handling POST request")
            with contextlib.suppress(anyio.ClosedResourceError):
                self.inbox.put_nowait(exc)

    async def _post(
        self, scope: Scope, receive: Receive, send: Send, body: bytes, raw: Any
    ) -> None:
        if not _content_type_ok(scope):
            await self._error(
                send,
                415,
                INVALID_REQUEST,
                "Unsupported Media Type: Content-Type must be application/json",
            )
            return
        if raw is _UNPARSED:
            try:
                raw = pydantic_core.from_json(body)
            except ValueError as exc:
                await self._error(send, 400, PARSE_ERROR, f"Parse error: {exc}")
                return
        try:
            message: JSONRPCMessage = jsonrpc_message_adapter.validate_python(raw, by_name=False)
        except ValidationError as exc:
            await self._error(send, 400, INVALID_PARAMS, f"Validation error: {exc}")
            return
        request = Request(scope, receive)
        request._body = body  # read already, as the SDK's request has it
        if not isinstance(message, JSONRPCRequest):
            handshake = self.handshake
            if (
                handshake is not None
                and handshake.accepted is not None
                and isinstance(message, JSONRPCNotification)
                and message.method == "notifications/initialized"
            ):
                # Recorded before the 202 (the message is dispatched only after it), so a
                # client that sees 202 sees a READY session.
                handshake.client_initialized()
            await self._respond(send, 202, b"")
            metadata = ServerMessageMetadata(
                request_context=request, can_send_request=not self.json_response
            )
            await self.inbox.send(SessionMessage(message, metadata=metadata))
            return
        if message.method == "initialize" and message.params:
            protocol_version = str(
                message.params.get("protocolVersion", DEFAULT_NEGOTIATED_VERSION)
            )
        else:
            protocol_version = (
                _header(scope, MCP_PROTOCOL_VERSION_HEADER.encode()) or DEFAULT_NEGOTIATED_VERSION
            )
        request_id = str(message.id)
        unanswered = partial(self._terminate_unanswered, message.id)
        if self.json_response:
            await self._post_json(receive, send, message, request, request_id, unanswered)
            return
        priming = await self._priming(request_id, protocol_version)
        stream = _Stream(message.id)
        self._streams[request_id] = stream
        try:
            if self._store is not None and is_version_at_least(protocol_version, "2025-11-25"):

                async def close_stream() -> None:
                    self.close_sse_stream(request_id)

                async def close_standalone() -> None:
                    self.close_standalone_sse_stream()

                metadata = ServerMessageMetadata(
                    request_context=request,
                    close_sse_stream=close_stream,
                    close_standalone_sse_stream=close_standalone,
                    on_request_unanswered=unanswered,
                )
            else:
                metadata = ServerMessageMetadata(
                    request_context=request, on_request_unanswered=unanswered
                )
            await send(
                {"type": "http.response.start", "status": 200, "headers": self._sse_headers()}
            )
            if priming is not None:
                await send(_body(priming))
            await self.inbox.send(SessionMessage(message, metadata=metadata))
            await _relay(stream, receive, send, until_response=True)
        finally:
            if self._streams.get(request_id) is stream:
                del self._streams[request_id]

    async def _post_json(
        self,
        receive: Receive,
        send: Send,
        message: JSONRPCRequest,
        request: Request,
        request_id: str,
        unanswered: Callable[[], Any],
    ) -> None:
        stream = _Stream(message.id)
        self._streams[request_id] = stream
        try:
            metadata = ServerMessageMetadata(
                request_context=request, on_request_unanswered=unanswered, can_send_request=False
            )
            await self.inbox.send(SessionMessage(message, metadata=metadata))
            await _first_event(stream, receive)
        finally:
            if self._streams.get(request_id) is stream:
                del self._streams[request_id]
        if stream.gone and not stream.events:
            # Nothing can reach the client any more: the handler's work is for nobody. The
            # server is told the request is cancelled, as if the client had sent it.
            params = {"requestId": message.id, "reason": "the client disconnected"}
            notice = JSONRPCNotification(
                jsonrpc="2.0", method="notifications/cancelled", params=params
            )
            with contextlib.suppress(anyio.ClosedResourceError):
                self.inbox.put_nowait(SessionMessage(notice))
            return
        if not stream.events:
            logger.debug("session terminated with a request in flight; no response to send")
            await self._error(
                send, 500, INTERNAL_ERROR, "Session terminated before the request completed"
            )
            return
        event = stream.events[0]
        await self._respond(
            send, 200, event.message.model_dump_json(by_alias=True, exclude_unset=True).encode()
        )

    async def _priming(self, stream_id: str, protocol_version: str) -> bytes | None:
        if self._store is None or not is_version_at_least(protocol_version, "2025-11-25"):
            return None
        event_id = await self._store.store_event(stream_id, None)
        return _frame("", event_id, event=False, retry=self.retry_interval)

    # -- GET ---------------------------------------------------------------------------------

    async def _get_accepted(self, scope: Scope, send: Send) -> bool:
        if _accepts_sse(scope):
            return True
        await self._error(
            send, 406, INVALID_REQUEST, "Not Acceptable: Client must accept text/event-stream"
        )
        return False

    async def get(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The session's stream of server-to-client messages (a GET without ``Last-Event-ID``)."""
        if not await self._get_accepted(scope, send):
            return
        if GET_STREAM_KEY in self._streams:
            await self._error(
                send, 409, INVALID_REQUEST, "Conflict: Only one SSE stream is allowed per session"
            )
            return
        stream = _Stream()
        self._streams[GET_STREAM_KEY] = stream
        try:
            await send(
                {"type": "http.response.start", "status": 200, "headers": self._sse_headers()}
            )
            await _relay(stream, receive, send, until_response=False)
        finally:
            if self._streams.get(GET_STREAM_KEY) is stream:
                del self._streams[GET_STREAM_KEY]

    async def replay(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        last_event_id: str,
        release: Callable[[], None],
    ) -> None:
        """A GET with ``Last-Event-ID``: replay what followed it, then relay the stream live.

        ``release`` is called once the replayed stream is the GET stream (not a request).
        """
        store = self._store
        assert store is not None
        if not await self._get_accepted(scope, send):
            return
        version = _header(scope, MCP_PROTOCOL_VERSION_HEADER.encode()) or DEFAULT_NEGOTIATED_VERSION
        await send({"type": "http.response.start", "status": 200, "headers": self._sse_headers()})

        async def replayed(event: EventMessage) -> None:
            await send(_body(_event_frame(event)))

        token = _RELEASE.set(release)
        try:
            stream_id = await store.replay_events_after(last_event_id, replayed)
        except Exception:
            logger.exception("Error in replay sender")
            stream_id = None
        finally:
            _RELEASE.reset(token)
        if not stream_id or stream_id in self._streams:
            await send(_END)
            return
        stream = _Stream()
        self._streams[stream_id] = stream
        try:
            try:
                priming = await self._priming(stream_id, version)
            except Exception:
                logger.exception("Error in replay sender")
                await send(_END)
                return
            if priming is not None:
                await send(_body(priming))
            # A resumed stream is relayed until it is closed (a response does not end it).
            await _relay(stream, receive, send, until_response=False)
        finally:
            if self._streams.get(stream_id) is stream:
                del self._streams[stream_id]


#: `_Wire.post` with a body not parsed yet.
_UNPARSED: Final[Any] = object()


def parse(body: bytes) -> Any:
    """The body as JSON (as the SDK parses it), or `_UNPARSED` when it is not JSON."""
    try:
        return pydantic_core.from_json(body)
    except ValueError:
        return _UNPARSED


async def _pump(stream: _Stream, send: Send, until_response: bool, deadline: float) -> bool:
    """Write the stream's events until it is done (True) or ``deadline`` passes (False)."""
    while True:
        while stream.events:
            event = stream.take()
            await send(_body(_event_frame(event)))
            if until_response and isinstance(event.message, JSONRPCResponse | JSONRPCError):
                return True
        if stream.closed or stream.gone:
            return True
        if trio.current_time() >= deadline:
            return False
        with trio.move_on_at(deadline):
            await stream.wait()


async def _relay(stream: _Stream, receive: Receive, send: Send, *, until_response: bool) -> None:
    """Relay a stream's events as SSE until done, with keep-alive pings; then end the body.

    A response that is not over within `_WATCH_AFTER` watches for the client's disconnect
    (which ends it; the request's handler runs on). The common short response needs no task.
    """
    now = trio.current_time()
    ping_at = now + _PING_INTERVAL
    if not await _pump(stream, send, until_response, now + _WATCH_AFTER):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_watch, receive, stream)
            while not await _pump(stream, send, until_response, ping_at):
                await send(_body(_ping_frame()))
                ping_at += _PING_INTERVAL
            nursery.cancel_scope.cancel()
    if not stream.gone:
        await send(_END)


async def _first_event(stream: _Stream, receive: Receive) -> None:
    """Wait for the stream's first event (a JSON response), its end, or the client's leaving."""
    if stream.events or stream.closed:
        return
    with trio.move_on_after(_WATCH_AFTER):
        await stream.wait()
    if stream.events or stream.closed:
        return
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_watch, receive, stream)
        while not (stream.events or stream.closed or stream.gone):
            await stream.wait()
        nursery.cancel_scope.cancel()
