"""Streamable HTTP (and WebSocket) front end: an ASGI app that routes requests to session actors.

The supervisor owns the sessions; the SDK's `StreamableHTTPServerTransport` is reused per session,
inside the session actor, for the wire format of one session (SSE or JSON responses, the GET
stream). The SDK's session manager is not used for the stateful era. Requests of the stateless
2026-07-28 era (``MCP-Protocol-Version: 2026-07-28``) go to the SDK's single-exchange entry.
"""

from __future__ import annotations

import contextvars
import gc
import json
import logging
import math
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, MutableMapping, Sequence
from contextlib import AsyncExitStack, contextmanager, suppress
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias, final, runtime_checkable

import anyio
import attrs
import trio
from mcp.server._streamable_http_modern import handle_modern_request
from mcp.server.auth.provider import AccessToken, principal_components
from mcp.server.lowlevel.server import Server
from mcp.server.streamable_http import (
    GET_STREAM_KEY,
    EventCallback,
    EventMessage,
    EventStore,
    StreamableHTTPServerTransport,
)
from mcp.shared.inbound import unsupported_protocol_version_rejection
from mcp.shared.message import SessionMessage
from mcp_types import (
    INTERNAL_ERROR,
    INVALID_REQUEST,
    PARSE_ERROR,
    UNSUPPORTED_PROTOCOL_VERSION,
    JSONRPCNotification,
)
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS, MODERN_PROTOCOL_VERSIONS

from .. import (
    LIVE_STATES,
    CapacityError,
    SessionClosed,
    SessionNotFound,
    SupervisorClosed,
    Transport,
)
from .._ids import short_id
from ._handles import _MARK as _HANDLE_MARK
from ._handles import serving_stateless
from ._session import ServerSource, _Handshake, _serve_session, resolve_server

if TYPE_CHECKING:
    from .. import Message, Session, SessionContext, Supervisor

__all__ = [
    "DEFAULT_ALLOWED_HOSTS",
    "DEFAULT_ALLOWED_ORIGINS",
    "DEFAULT_MAX_BODY_SIZE",
    "McpHttpApp",
    "Principal",
    "TokenVerifierFn",
    "serve_http",
]

logger = logging.getLogger("supervisor.mcp")

Scope: TypeAlias = MutableMapping[str, Any]
ASGIMessage: TypeAlias = MutableMapping[str, Any]
Receive: TypeAlias = Callable[[], Awaitable[ASGIMessage]]
Send: TypeAlias = Callable[[ASGIMessage], Awaitable[None]]

#: A principal is a string naming who a bearer token belongs to.
Principal: TypeAlias = str

#: ``async (token) -> principal | None``: the bearer-token hook of `McpHttpApp`.
TokenVerifierFn: TypeAlias = Callable[[str], Awaitable[Principal | None]]

#: Host header values accepted by default: loopback names, any port.
DEFAULT_ALLOWED_HOSTS: tuple[str, ...] = (
    "127.0.0.1",
    "127.0.0.1:*",
    "localhost",
    "localhost:*",
    "[::1]",
    "[::1]:*",
)

#: Origin header values accepted by default (a request without Origin is always accepted).
DEFAULT_ALLOWED_ORIGINS: tuple[str, ...] = tuple(
    f"{scheme}://{host}"
    for scheme in ("http", "https")
    for host in ("127.0.0.1", "127.0.0.1:*", "localhost", "localhost:*", "[::1]", "[::1]:*")
)

#: Largest accepted request body (4 MiB, as the SDK).
DEFAULT_MAX_BODY_SIZE = 4 * 1024 * 1024

#: Seconds a connection may stay idle between requests; it also bounds how long a client may take
#: to send a request's headers (hypercorn's idle timer runs until the head is complete), so a
#: client trickling headers is cut off after this long.
#: Seconds to hand the server the cancellation of a request whose client disconnected.
_CANCEL_NOTICE_TIMEOUT = 1.0
_KEEP_ALIVE_TIMEOUT = 5.0

#: The young-generation threshold of CPython's garbage collector while `serve_http` runs (the
#: interpreter's default is 700). See `serve_http`.
_GC_THRESHOLD = 20_000

#: Reason recorded when a client ends its session with DELETE.
DELETED = "client-delete"

_SESSION_HEADER = b"mcp-session-id"
_VERSION_HEADER = b"mcp-protocol-version"


@runtime_checkable
class _SdkTokenVerifier(Protocol):
    async def verify_token(self, token: str) -> AccessToken | None: ...


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return bytes(value).decode("latin-1")
    return None


def _allowed(value: str, patterns: Iterable[str]) -> bool:
    for pattern in patterns:
        if pattern == "*" or pattern == value:
            return True
        if pattern.endswith(":*"):
            base = pattern[:-1]
            port = value[len(base) :]
            if value.startswith(base) and port.isascii() and port.isdigit():
                return True
    return False


async def _respond(
    send: Send,
    status: int,
    body: bytes = b"",
    *,
    content_type: str | None = "application/json",
    headers: Sequence[tuple[str, str]] = (),
) -> None:
    raw: list[tuple[bytes, bytes]] = []
    if content_type is not None and body:
        raw.append((b"content-type", content_type.encode()))
    raw.extend((k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers)
    raw.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def _rpc_error(
    send: Send,
    status: int,
    code: int,
    message: str,
    *,
    data: Any = None,
    headers: Sequence[tuple[str, str]] = (),
) -> None:
    error: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        error["data"] = data
    body = json.dumps({"jsonrpc": "2.0", "id": None, "error": error}).encode()
    await _respond(send, status, body, headers=headers)


class _BodyTooLarge(Exception):
    pass


async def _read_body(receive: Receive, limit: int) -> tuple[bytes, bool]:
    """Read the whole request body; returns (body, disconnected)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return b"".join(chunks), True
        if message["type"] != "http.request":  # pragma: no cover - not in the ASGI spec
            continue
        chunk = bytes(message.get("body", b""))
        size += len(chunk)
        if size > limit:
            raise _BodyTooLarge
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks), False


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that yields ``body`` once, then defers to ``receive`` (disconnects)."""
    sent = False

    async def replay() -> ASGIMessage:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def _disconnect_after(gone: trio.Event) -> Receive:
    """A ``receive`` that returns ``http.disconnect`` once ``gone`` is set (see `_watch`)."""

    async def receive() -> ASGIMessage:
        await gone.wait()
        return {"type": "http.disconnect"}

    return receive


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


class _VerifierFailed(Exception):
    """The token verifier raised, or returned something that is neither a principal nor None."""


#: Seconds between two log lines about expected refusals (503 at capacity, 429).
_REFUSAL_LOG_INTERVAL = 60.0


@final
class _Refusals:
    """Expected refusals logged without flooding: one WARNING, then at most one per interval.

    Under a flood every refusal would be a line; instead the first is logged at WARNING, the
    next ones at DEBUG, and the next WARNING (at least `_REFUSAL_LOG_INTERVAL` seconds later)
    says how many there were in between. The supervisor counts refused sessions
    (``rejected_total``) in any case.
    """

    __slots__ = ("_last", "_suppressed", "_what")

    def __init__(self, what: str) -> None:
        self._what = what
        self._last = -math.inf
        self._suppressed = 0

    def note(self, detail: str) -> None:
        now = time.monotonic()
        if now - self._last < _REFUSAL_LOG_INTERVAL:
            self._suppressed += 1
            logger.debug("%s: %s", self._what, detail)
            return
        if self._suppressed:
            logger.warning(
                "%s: %s (and %d more in the last %.0f s)",
                self._what,
                detail,
                self._suppressed,
                now - self._last,
            )
        else:
            logger.warning("%s: %s (more are logged at most once a minute)", self._what, detail)
        self._last = now
        self._suppressed = 0


def _is_initialized_notification(body: bytes) -> bool:
    if b"notifications/initialized" not in body:
        return False
    try:
        decoded = json.loads(body)
    except (ValueError, RecursionError):
        return False
    return (
        isinstance(decoded, dict)
        and decoded.get("method") == "notifications/initialized"
        and "id" not in decoded
    )


def _is_initialize(body: bytes) -> bool | None:
    """True for an ``initialize`` request, False for other JSON, None for malformed JSON."""
    try:
        decoded = json.loads(body)
    except (ValueError, RecursionError):
        return None
    return (
        isinstance(decoded, dict)
        and decoded.get("method") == "initialize"
        and "id" in decoded
        and decoded.get("jsonrpc") == "2.0"
    )


@final
class McpHttpApp:
    """ASGI app serving MCP over Streamable HTTP and WebSocket, one supervised session per client.

    Serve it with ``hypercorn.trio.serve`` (see `serve_http`), inside the supervisor's block. The
    supervisor's session id is the ``Mcp-Session-Id``. Per request, in this order:

    * a Host or Origin header outside ``allowed_hosts``/``allowed_origins`` gets 403 (DNS
      rebinding protection; loopback is allowed by default, a request without Origin is fine);
    * with a ``token_verifier``, a missing or refused bearer token gets 401 with
      ``WWW-Authenticate: Bearer``;
    * a POST whose Content-Type is not JSON gets 415, one whose Accept lacks JSON (or SSE,
      unless ``json_response``) gets 406;
    * ``MCP-Protocol-Version: 2026-07-28`` goes to the SDK's stateless single-exchange path (no
      session; POST only, else 405); any other value that is not a handshake-era version gets
      400;
    * a body above ``max_body_size`` gets 413, one slower than ``body_timeout`` 408;
    * POST without ``Mcp-Session-Id``: an ``initialize`` request opens a new session (503 with
      ``Retry-After`` at capacity), malformed JSON gets a JSON-RPC parse error (400), anything
      else 400;
    * GET/POST/DELETE with an ``Mcp-Session-Id`` that is unknown, expired, closing, or belongs
      to another principal gets 404; DELETE ends the session (200); a session with
      ``max_requests_per_session`` requests in flight gets 429 with ``Retry-After``; a second
      GET stream of a session gets 409.

    Every refusal carries a JSON-RPC error body (401 an OAuth-style one); a token verifier
    that raises, or returns anything but a ``str`` or ``None``, is a 500 (logged, nothing
    reserved). Each request of a session runs in that session's actor as a `Supervisor.call`,
    so it counts as in flight (the idle clock is paused) while it runs; a client that
    disconnects ends its request's call, and the session idles out as usual; with JSON
    responses its handler is cancelled too (nothing can reach the client any more), with SSE
    it runs on (a disconnect is not a cancellation, the spec's rule: the stream may resume).
    The GET stream of server-to-client messages is not a request: it neither pauses the idle
    clock nor counts against ``max_requests_per_session`` (one per session), so a silent
    session with an open stream expires on time; its stream then ends cleanly and the
    client's next request gets 404. The session is READY once the client has sent
    ``notifications/initialized``: a client that stops after ``initialize`` is ended by the
    supervisor's ``init_timeout``. A session whose opening ``initialize`` is refused is closed
    at once (reason ``"init-failed"``).

    Every close drains: on DELETE, `Supervisor.close_session`, shutdown, and the idle, init
    and lifetime deadlines alike, the GET stream ends at a message boundary and requests in
    flight get the close grace (``close_grace``, ``shutdown_grace`` for a shutdown); those
    still running shortly before it runs out are answered with a JSON-RPC error.

    WebSocket connections (subprotocol ``"mcp"``, one JSON-RPC message per text frame) on the
    same path get one session each, with transport `Transport.WEBSOCKET`.

    Args:
        supervisor: The supervisor that owns the sessions.
        server: The MCP server, or a zero-argument factory called once per session (see
            `ServerSource`). The stateless era uses one instance (a factory is called once).
        path: The endpoint path (``None``: any path).
        allowed_hosts: Accepted Host values; ``"name:*"`` means any port, ``"*"`` anything.
        allowed_origins: Accepted Origin values, same patterns.
        max_body_size: Largest accepted request body in bytes.
        token_verifier: ``async (token) -> principal | None``, or an SDK ``TokenVerifier``
            (the principal is then derived from the token's client id, issuer and subject).
        resource_metadata_url: Advertised in ``WWW-Authenticate`` on 401 (RFC 9728).
        json_response: Answer POSTs with one JSON body instead of an SSE stream.
        event_store: An SDK ``EventStore`` shared by all sessions, for resumable SSE streams
            (``Last-Event-ID``); without one, streams are not resumable. Each session sees
            only its own events: stream and event ids are namespaced per session, and an event
            id of another session is refused like an unknown one. The store must replay only
            the events of the given event's stream (as the SDK's example store does).
        retry_interval: Milliseconds suggested to clients in SSE ``retry`` (with an event store).
        retry_after: Seconds suggested in ``Retry-After`` on 503 and 429.
        max_requests_per_session: Requests of one session served at once (the GET stream of
            server-to-client messages does not count; a resumed stream does); more get 429
            with ``Retry-After``. Default: the supervisor's ``mailbox_size``, at least 1.
        body_timeout: Seconds to receive a whole request body; a slower one gets 408.
        websocket: Accept WebSocket connections.
    """

    def __init__(
        self,
        supervisor: Supervisor,
        server: ServerSource,
        *,
        path: str | None = "/mcp",
        allowed_hosts: Iterable[str] | None = None,
        allowed_origins: Iterable[str] | None = None,
        max_body_size: int = DEFAULT_MAX_BODY_SIZE,
        token_verifier: TokenVerifierFn | _SdkTokenVerifier | None = None,
        resource_metadata_url: str | None = None,
        json_response: bool = False,
        event_store: EventStore | None = None,
        retry_interval: int | None = None,
        retry_after: int = 1,
        max_requests_per_session: int | None = None,
        body_timeout: float = 30.0,
        websocket: bool = True,
    ) -> None:
        if max_body_size <= 0:
            raise ValueError("max_body_size must be a positive number of bytes")
        if not body_timeout > 0:
            raise ValueError("body_timeout must be a positive number of seconds")
        if max_requests_per_session is None:
            max_requests_per_session = max(1, supervisor.config.mailbox_size)
        if max_requests_per_session <= 0:
            raise ValueError("max_requests_per_session must be positive")
        self.supervisor = supervisor
        self.server = server
        self.path = path
        self.allowed_hosts: tuple[str, ...] = (
            DEFAULT_ALLOWED_HOSTS if allowed_hosts is None else tuple(allowed_hosts)
        )
        self.allowed_origins: tuple[str, ...] = (
            DEFAULT_ALLOWED_ORIGINS if allowed_origins is None else tuple(allowed_origins)
        )
        self.max_body_size = max_body_size
        self.token_verifier = token_verifier
        self.resource_metadata_url = resource_metadata_url
        self.json_response = json_response
        self.event_store = event_store
        self.retry_interval = retry_interval
        self.retry_after = retry_after
        self.max_requests_per_session = max_requests_per_session
        self.body_timeout = body_timeout
        self.websocket = websocket
        self._active: dict[str, int] = {}
        #: Sessions with an open GET stream of server-to-client messages.
        self._streams: set[str] = set()
        self._refused_sessions = _Refusals("refused a new session")
        self._refused_requests = _Refusals("refused a request")
        self._stateless_server: Server[Any] | None = None
        self._stateless_state: Any = None
        self._stateless_ready = False
        self._lifespan_stack: AsyncExitStack | None = None

    # -- ASGI entry ---------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            started = False

            async def tracking_send(message: ASGIMessage) -> None:
                nonlocal started
                started = started or message["type"] == "http.response.start"
                await send(message)

            try:
                await self._http(scope, receive, tracking_send)
            except Exception:
                # A bug or a failing token verifier: answer 500 if still possible, never crash
                # the server's connection task.
                logger.exception("MCP HTTP request failed")
                if not started:
                    await _rpc_error(send, 500, INTERNAL_ERROR, "Internal Server Error")
        elif kind == "websocket":
            from ._websocket import _deny, serve_websocket_connection

            try:
                await serve_websocket_connection(self, scope, receive, send)
            except _VerifierFailed:
                # Raised before the handshake is answered, and logged where it was raised.
                await _deny(scope, send, 500)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self._enter_stateless()
                except Exception as exc:
                    await send({"type": "lifespan.startup.failed", "message": repr(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self._exit_stateless()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _enter_stateless(self) -> None:
        server = self._stateless()
        stack = AsyncExitStack()
        self._stateless_state = await stack.enter_async_context(server.lifespan(server))
        self._lifespan_stack = stack
        self._stateless_ready = True

    async def _exit_stateless(self) -> None:
        stack, self._lifespan_stack = self._lifespan_stack, None
        self._stateless_ready = False
        if stack is not None:
            await stack.aclose()

    def _stateless(self) -> Server[Any]:
        if self._stateless_server is None:
            self._stateless_server = resolve_server(self.server)
        return self._stateless_server

    # -- checks shared with the WebSocket path ------------------------------------------------

    def _path_ok(self, scope: Scope) -> bool:
        if self.path is None:
            return True
        path = str(scope.get("path", ""))
        return path == self.path or path.rstrip("/") == self.path.rstrip("/")

    def _origin_ok(self, scope: Scope) -> bool:
        host = _header(scope, b"host")
        if host is not None and not _allowed(host, self.allowed_hosts):
            logger.warning("refused request with Host %r", host[:100])
            return False
        origin = _header(scope, b"origin")
        if origin is not None and not _allowed(origin, self.allowed_origins):
            logger.warning("refused request with Origin %r", origin[:100])
            return False
        return True

    async def _authenticate(self, scope: Scope) -> tuple[bool, Principal | None]:
        """(ok, principal); ok is False when a verifier is set and the token is refused."""
        verifier = self.token_verifier
        if verifier is None:
            return True, None
        authorization = _header(scope, b"authorization") or ""
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return False, None
        try:
            if isinstance(verifier, _SdkTokenVerifier):
                access: object = await verifier.verify_token(token)
            else:
                principal: object = await verifier(token)
        except Exception as exc:
            logger.exception("the token verifier raised: answered 500")
            raise _VerifierFailed from exc
        if isinstance(verifier, _SdkTokenVerifier):
            if access is None:
                return False, None
            if not isinstance(access, AccessToken):
                logger.error(
                    "the token verifier returned a %s, not an AccessToken or None: answered 500",
                    type(access).__name__,
                )
                raise _VerifierFailed
            if access.expires_at is not None and access.expires_at < time.time():
                return False, None
            client_id, issuer, subject = principal_components(access)
            if issuer is None and subject is None:
                return True, client_id
            return True, json.dumps([client_id, issuer, subject])
        if principal is None:
            return False, None
        if not isinstance(principal, str):
            logger.error(
                "the token verifier returned a %s, not a str principal or None: answered 500",
                type(principal).__name__,
            )
            raise _VerifierFailed
        if not principal:
            logger.error("the token verifier returned an empty principal: answered 500")
            raise _VerifierFailed
        return True, str.__str__(principal)

    def _www_authenticate(self) -> tuple[str, str]:
        value = 'Bearer error="invalid_token", error_description="Authentication required"'
        if self.resource_metadata_url is not None:
            value += f', resource_metadata="{self.resource_metadata_url}"'
        return ("WWW-Authenticate", value)

    def _lookup(self, session_id: str, principal: Principal | None) -> Session | None:
        """The live session for this id and principal, or None (answered with 404)."""
        try:
            session = self.supervisor.get_session(session_id)
        except SessionNotFound:
            return None
        if session.transport is not Transport.HTTP or session.metadata.get(_HANDLE_MARK):
            return None  # a WebSocket session or a state handle: not an Mcp-Session-Id
        if session.state not in LIVE_STATES or session.close_reason is not None:
            return None  # ending (closed, or a deadline fired and it drains): 404 as after
        if session.principal != principal:
            logger.warning("request for session %s... from another principal", short_id(session_id))
            return None
        return session

    # -- HTTP ---------------------------------------------------------------------------------

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self._path_ok(scope):
            await _respond(send, 404, b"Not Found", content_type="text/plain")
            return
        if not self._origin_ok(scope):
            await _rpc_error(send, 403, INVALID_REQUEST, "Forbidden: Host or Origin not allowed")
            return
        try:
            ok, principal = await self._authenticate(scope)
        except _VerifierFailed:
            await _rpc_error(
                send, 500, INTERNAL_ERROR, "Internal Server Error: the token verifier failed"
            )
            return
        if not ok:
            body = json.dumps(
                {"error": "invalid_token", "error_description": "Authentication required"}
            ).encode()
            await _respond(send, 401, body, headers=[self._www_authenticate()])
            return

        method = scope.get("method", "GET")
        if method == "POST" and not await self._post_headers_ok(scope, send):
            return
        version = _header(scope, _VERSION_HEADER)
        if version is not None and version in MODERN_PROTOCOL_VERSIONS:
            if method != "POST":
                await _rpc_error(
                    send,
                    405,
                    INVALID_REQUEST,
                    "Method Not Allowed: the 2026-07-28 era takes POST only",
                    headers=[("Allow", "POST")],
                )
                return
            await self._stateless_request(scope, receive, send, method, principal)
            return
        if version is not None and version not in HANDSHAKE_PROTOCOL_VERSIONS:
            await self._unsupported_version(scope, receive, send, method, version)
            return

        session_id = _header(scope, _SESSION_HEADER)
        if method == "POST":
            await self._post(scope, receive, send, session_id, principal)
        elif method in ("GET", "DELETE"):
            if session_id is None:
                await _rpc_error(send, 400, INVALID_REQUEST, "Bad Request: Missing session ID")
                return
            if self._lookup(session_id, principal) is None:
                await self._not_found(send)
                return
            if method == "DELETE":
                self.supervisor.close_session(session_id, reason=DELETED)
                await _respond(send, 200)
            else:
                last_event_id = _header(scope, b"last-event-id")
                resumes = bool(last_event_id) and self.event_store is not None
                if last_event_id is not None and not resumes:
                    # Nothing to resume from (no store, or an empty id): serve a fresh stream
                    # (the SDK transport would answer nothing at all for the first).
                    scope = dict(scope)
                    scope["headers"] = [
                        (k, v) for k, v in scope.get("headers", ()) if k != b"last-event-id"
                    ]
                standalone = not resumes
                exchange = _HttpExchange(scope, receive, send, standalone=standalone)
                await self._exchange(session_id, exchange)
        else:
            await _rpc_error(
                send,
                405,
                INVALID_REQUEST,
                "Method Not Allowed",
                headers=[("Allow", "GET, POST, DELETE")],
            )

    async def _unsupported_version(
        self, scope: Scope, receive: Receive, send: Send, method: str, version: str
    ) -> None:
        """400 with UNSUPPORTED_PROTOCOL_VERSION, worded as the SDK's 2026-07-28 entry words it.

        A POST's body is read first, bounded like every POST (413, 408), so the error echoes the
        request's id; ``supported`` is the list ``server/discover`` advertises.
        """
        request_id: str | int | None = None
        if method == "POST":
            body = await self._read(scope, receive, send)
            if body is None:
                return
            with suppress(ValueError, RecursionError):  # not JSON: no id to echo
                decoded = json.loads(body)
                candidate = decoded.get("id") if isinstance(decoded, dict) else None
                if isinstance(candidate, str) or (
                    isinstance(candidate, int) and not isinstance(candidate, bool)
                ):
                    request_id = candidate
        # never None: a version the modern entry serves does not get here
        rejection = unsupported_protocol_version_rejection(version[:100])
        error = {"code": UNSUPPORTED_PROTOCOL_VERSION, "message": "Unsupported protocol version"}
        if rejection is not None:
            error = {"code": rejection.code, "message": rejection.message, "data": rejection.data}
        reply = json.dumps({"jsonrpc": "2.0", "id": request_id, "error": error}).encode()
        await _respond(send, 400, reply)

    async def _post_headers_ok(self, scope: Scope, send: Send) -> bool:
        """Content-Type and Accept of a POST (answered here so every refusal is JSON-RPC)."""
        content_type = (_header(scope, b"content-type") or "").split(";")[0].strip().lower()
        if content_type != "application/json":
            await _rpc_error(
                send,
                415,
                INVALID_REQUEST,
                "Unsupported Media Type: Content-Type must be application/json",
            )
            return False
        accept = [
            part.split(";")[0].strip().lower()
            for part in (_header(scope, b"accept") or "").split(",")
        ]
        anything = "*/*" in accept
        has_json = anything or "application/json" in accept or "application/*" in accept
        has_sse = anything or "text/event-stream" in accept or "text/*" in accept
        if not has_json or (not self.json_response and not has_sse):
            await _rpc_error(
                send,
                406,
                INVALID_REQUEST,
                "Not Acceptable: Accept must list application/json and text/event-stream",
            )
            return False
        return True

    async def _not_found(self, send: Send) -> None:
        await _rpc_error(send, 404, INVALID_REQUEST, "Not Found: unknown or expired session ID")

    async def _read(self, scope: Scope, receive: Receive, send: Send) -> bytes | None:
        """The request body, or None when answered here (413, 408) or the client left."""
        declared = _header(scope, b"content-length")
        if (
            declared is not None
            and declared.isascii()
            and declared.isdigit()
            and int(declared) > self.max_body_size
        ):
            await _rpc_error(send, 413, INVALID_REQUEST, "Payload Too Large")
            return None
        body: bytes | None = None
        disconnected = False
        with trio.move_on_after(self.body_timeout):
            try:
                body, disconnected = await _read_body(receive, self.max_body_size)
            except _BodyTooLarge:
                await _rpc_error(send, 413, INVALID_REQUEST, "Payload Too Large")
                return None
        if body is None:
            logger.warning("request body not received within %s s", self.body_timeout)
            await _rpc_error(send, 408, INVALID_REQUEST, "Request Timeout: body too slow")
            return None
        return None if disconnected else body

    async def _post(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        session_id: str | None,
        principal: Principal | None,
    ) -> None:
        body = await self._read(scope, receive, send)
        if body is None:
            return
        # With JSON responses nothing in the SDK listens for a disconnect: `_exchange` does.
        gone = trio.Event() if self.json_response else None
        replayed = _replay(body, receive if gone is None else _disconnect_after(gone))
        if session_id is not None:
            if self._lookup(session_id, principal) is None:
                await self._not_found(send)
                return
            exchange = _HttpExchange(scope, replayed, send, body=body, gone=gone)
            await self._exchange(session_id, exchange, watch=(receive, gone))
            return
        opening = _is_initialize(body)
        if opening is None:
            await _rpc_error(send, 400, PARSE_ERROR, "Parse error: malformed JSON")
            return
        if not opening:
            await _rpc_error(send, 400, INVALID_REQUEST, "Bad Request: Missing session ID")
            return
        try:
            session = self.supervisor.create_session_nowait(
                self._actor, transport=Transport.HTTP, principal=principal
            )
        except (CapacityError, SupervisorClosed) as exc:
            self._refused_sessions.note(str(exc))
            await _rpc_error(
                send,
                503,
                INTERNAL_ERROR,
                "Service Unavailable: too many sessions",
                headers=[("Retry-After", str(self.retry_after))],
            )
            return
        if principal is not None and not session.is_authenticated:
            self.supervisor.authenticate_session(session.id, principal)
        exchange = _HttpExchange(scope, replayed, send, body=body, gone=gone)
        try:
            await self._exchange(session.id, exchange, watch=(receive, gone))
        finally:
            if not exchange.initialize_accepted:
                # Without a session id only initialize can succeed; a refused one leaves nothing.
                self.supervisor.close_session(session.id, reason="init-failed")

    async def _exchange(
        self,
        session_id: str,
        exchange: _HttpExchange,
        *,
        watch: tuple[Receive, trio.Event | None] | None = None,
    ) -> None:
        """Run one request in its session; ``watch``: the real receive, for a JSON response."""
        if exchange.standalone:
            if session_id in self._streams:
                await _rpc_error(
                    exchange.send,
                    409,
                    INVALID_REQUEST,
                    "Conflict: Only one SSE stream is allowed per session",
                )
                return
            self._streams.add(session_id)
            try:
                await self._call(session_id, exchange)
            finally:
                exchange.cancel_scope.cancel()
                self._streams.discard(session_id)
            return
        active = self._active.get(session_id, 0)
        if active >= self.max_requests_per_session:
            self._refused_requests.note(
                f"session {short_id(session_id)}... has {active} requests in flight: 429"
            )
            await _rpc_error(
                exchange.send,
                429,
                INTERNAL_ERROR,
                "Too Many Requests: too many requests in flight for this session",
                headers=[("Retry-After", str(self.retry_after))],
            )
            return
        self._active[session_id] = active + 1
        try:
            if watch is not None and (gone := watch[1]) is not None:
                receive = watch[0]
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(_watch, receive, exchange, gone, nursery.cancel_scope)
                    await self._call(session_id, exchange)
                    nursery.cancel_scope.cancel()
            else:
                await self._call(session_id, exchange)
        finally:
            exchange.cancel_scope.cancel()
            remaining = self._active[session_id] - 1
            if remaining:
                self._active[session_id] = remaining
            else:
                del self._active[session_id]

    async def _call(self, session_id: str, exchange: _HttpExchange) -> None:
        try:
            await self.supervisor.call(session_id, exchange)
        except (SessionNotFound, SessionClosed):
            if exchange.status is None:
                await self._not_found(exchange.send)
            return
        if not exchange.done.is_set():  # a stream: the call was answered when it started
            await exchange.done.wait()
        if exchange.error is not None:
            raise exchange.error

    async def _stateless_request(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        method: str,
        principal: Principal | None = None,
    ) -> None:
        # Session tools there open and use state handles of this supervisor, for this principal.
        with serving_stateless(self.supervisor, principal, Transport.HTTP):
            await self._stateless_exchange(scope, receive, send, method)

    async def _stateless_exchange(
        self, scope: Scope, receive: Receive, send: Send, method: str
    ) -> None:
        if method == "POST":
            body = await self._read(scope, receive, send)
            if body is None:
                return
            receive = _replay(body, receive)
        server = self._stateless()
        if self._stateless_ready:
            await handle_modern_request(
                server, None, self.json_response, self._stateless_state, scope, receive, send
            )
            return
        # Not started through ASGI lifespan (e.g. an in-memory test client): one lifespan per call.
        async with server.lifespan(server) as state:
            await handle_modern_request(
                server, None, self.json_response, state, scope, receive, send
            )

    # -- the session actor --------------------------------------------------------------------

    async def _actor(self, ctx: SessionContext[Any]) -> None:
        store = None if self.event_store is None else _SessionEventStore(self.event_store)
        transport = StreamableHTTPServerTransport(
            mcp_session_id=ctx.id,
            is_json_response_enabled=self.json_response,
            event_store=store,
            retry_interval=self.retry_interval,
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
                                    self.server,
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


def _request_id(body: bytes) -> str | int | None:
    """The id of the JSON-RPC request in ``body`` (``None``: not a single request)."""
    try:
        decoded = json.loads(body)
    except (ValueError, RecursionError):
        return None
    if not isinstance(decoded, dict) or "method" not in decoded:
        return None
    request_id = decoded.get("id")
    if isinstance(request_id, bool) or not isinstance(request_id, str | int):
        return None
    return request_id


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


async def serve_http(
    supervisor: Supervisor,
    server: ServerSource,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    path: str = "/mcp",
    shutdown_trigger: Callable[[], Awaitable[None]] | None = None,
    wrap: Callable[[McpHttpApp], Any] | None = None,
    graceful_timeout: float | None = None,
    keep_alive_timeout: float = _KEEP_ALIVE_TIMEOUT,
    backlog: int = 1024,
    read_timeout: float | None = None,
    gc_threshold: int | None = _GC_THRESHOLD,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
    **app_options: Any,
) -> None:
    """Serve `McpHttpApp` with ``hypercorn.trio.serve`` until cancelled or ``shutdown_trigger``.

    ``port=0`` picks a free port. ``task_status.started(url)`` reports the endpoint URL (e.g.
    ``http://127.0.0.1:54321/mcp``) once the socket is listening, so
    ``url = await nursery.start(partial(serve_http, sup, server, port=0))`` works. Other
    keywords go to `McpHttpApp`.

    Returning does not close the supervisor's sessions: that is the supervisor's block's job.
    For a graceful stop, fire ``shutdown_trigger`` and call ``sup.shutdown()`` concurrently:
    hypercorn stops listening and waits up to ``graceful_timeout`` (default: the supervisor's
    ``shutdown_grace`` plus one second) for open requests, while the sessions let theirs finish
    within the grace period and answer the rest with a JSON-RPC error.

    Args:
        wrap: Called with the app; its result (an ASGI middleware around it) is served instead.
        graceful_timeout: Seconds hypercorn waits for open connections after the trigger.
        keep_alive_timeout: Seconds a connection may be idle before its next request's headers
            are complete: an idle keep-alive connection, and a client trickling its headers
            (slowloris), are closed after this long. Open responses (a GET stream, a long tool
            call) are not affected. A slow body is bounded by the app's ``body_timeout``.
        backlog: connections the kernel queues before hypercorn accepts them (hypercorn's
            default is 100; a burst of clients beyond it is reset by the kernel).
        read_timeout: hypercorn's ``read_timeout``: seconds any single read from a client may
            wait, *including* while a response is being streamed, when clients are silent.
            Leave it ``None`` (the default) unless no GET stream or request ever lasts that
            long: with it set, such a connection is cut when the timeout passes.
        gc_threshold: While serving, raise the young-generation threshold of CPython's garbage
            collector to at least this (``None``: leave the collector alone). With thousands of
            sessions the live heap holds millions of objects; at the interpreter's default
            (700) the objects of requests in flight keep being promoted and trigger a full
            collection every second or so, each one stalling the server for about as long as
            the heap is large. The previous thresholds are restored on return.
    """
    from hypercorn.config import Config
    from hypercorn.trio import serve

    app = McpHttpApp(supervisor, server, path=path, **app_options)
    served: Any = app if wrap is None else wrap(app)
    config = Config()
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.accesslog = None
    config.errorlog = logger
    if graceful_timeout is None:
        graceful_timeout = supervisor.config.shutdown_grace + 1.0
    config.graceful_timeout = graceful_timeout
    if not keep_alive_timeout > 0:
        raise ValueError("keep_alive_timeout must be a positive number of seconds")
    config.keep_alive_timeout = keep_alive_timeout
    if not backlog > 0:
        raise ValueError("backlog must be a positive number of connections")
    config.backlog = backlog
    if read_timeout is not None and not read_timeout > 0:
        raise ValueError("read_timeout must be a positive number of seconds or None")
    config.read_timeout = read_timeout  # type: ignore[assignment]  # hypercorn says int
    with _gc_tuned(gc_threshold):
        async with trio.open_nursery() as nursery:
            binds: list[str] = await nursery.start(
                partial(serve, served, config, shutdown_trigger=shutdown_trigger)
            )
            task_status.started(binds[0] + path)


_gc_users = 0
_gc_saved: tuple[int, int, int] | None = None


@contextmanager
def _gc_tuned(threshold: int | None) -> Iterator[None]:
    """Raise the collector's young threshold to ``threshold`` while any server runs."""
    global _gc_users, _gc_saved
    if threshold is None:
        yield
        return
    if threshold <= 0:
        raise ValueError("gc_threshold must be positive or None")
    current = gc.get_threshold()
    if _gc_users == 0:
        _gc_saved = current
    _gc_users += 1
    if current[0] < threshold:
        gc.set_threshold(threshold, current[1], current[2])
    try:
        yield
    finally:
        _gc_users -= 1
        if _gc_users == 0 and _gc_saved is not None:
            gc.set_threshold(*_gc_saved)
            _gc_saved = None
