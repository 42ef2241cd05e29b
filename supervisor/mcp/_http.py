"""Streamable HTTP (and WebSocket) front end: `McpHttpApp`, the ASGI app that routes requests.

The supervisor owns the sessions; each session speaks the wire format (SSE or JSON responses, the
GET stream, resumability) through a lean transport of the adapter's own (`_transport`), shared
with the session's actor (`_http_session`), which runs the SDK's protocol loop over it. The SDK's
session manager and its per-session transport are not used for the stateful era. Requests of the
stateless 2026-07-28 era (``MCP-Protocol-Version: 2026-07-28``) go to `_modern`, which answers
as the SDK's single-exchange entry does, with less work per request.

The app checks each request (`_checks`, `_auth`), then routes it: to a session
(`_http_session`), to the stateless entry, or, for a WebSocket, to `_websocket`. Serving it with
hypercorn is `_serving`.
"""

from __future__ import annotations

import json
import logging
import math
import time
import weakref
from collections.abc import Awaitable, Callable, Iterable
from contextlib import AsyncExitStack, suppress
from typing import TYPE_CHECKING, Any, final

from mcp.server.lowlevel.server import Server
from mcp.server.streamable_http import EventStore
from mcp.shared.inbound import unsupported_protocol_version_rejection
from mcp_types import (
    INTERNAL_ERROR,
    INVALID_REQUEST,
    PARSE_ERROR,
    UNSUPPORTED_PROTOCOL_VERSION,
)
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS, MODERN_PROTOCOL_VERSIONS

from .. import (
    LIVE_STATES,
    CapacityError,
    SessionNotFound,
    SupervisorClosed,
    Transport,
)
from .._durable import ActiveElsewhere, StoreError
from .._ids import short_id
from ._asgi import ASGIMessage, Receive, Scope, Send, _header, _respond, _rpc_error
from ._auth import (
    Principal,
    TokenVerifierFn,
    _authenticate,
    _SdkTokenVerifier,
    _VerifierFailed,
    _www_authenticate,
)
from ._checks import (
    DEFAULT_ALLOWED_HOSTS,
    DEFAULT_ALLOWED_ORIGINS,
    DEFAULT_MAX_BODY_SIZE,
    _is_initialize,
    _origin_ok,
    _path_ok,
    _post_headers_ok,
    _read_request_body,
)
from ._handles import _MARK as _HANDLE_MARK
from ._handles import serving_stateless, state_handles
from ._http_session import _HttpSession, _run_http_session, _run_request, _SessionEventStore
from ._modern import serve_modern
from ._session import ServerSource, _create_now, resolve_server
from ._transport import _UNPARSED, _Wire, parse
from ._websocket import _deny, serve_websocket_connection

if TYPE_CHECKING:
    from .. import Session, SessionContext, Supervisor

__all__ = ["DELETED", "DURABLE_NAME", "McpHttpApp"]

logger = logging.getLogger("supervisor.mcp")

#: Reason recorded when a client ends its session with DELETE.
DELETED = "client-delete"

_SESSION_HEADER = b"mcp-session-id"
_VERSION_HEADER = b"mcp-protocol-version"


#: Each supervisor's live HTTP sessions (what its actor and the app share), for every app that
#: serves it: a session opened through one app can be used through another on the same supervisor.
_SESSIONS: weakref.WeakKeyDictionary[Supervisor, dict[str, _HttpSession]] = (
    weakref.WeakKeyDictionary()
)

#: The name `McpHttpApp` registers its session actor under (`Supervisor.register_durable`).
DURABLE_NAME = "mcp-http"

#: The app that serves each supervisor's durable HTTP sessions (at most one per supervisor: its
#: actor is the one registered, so sessions it passivated come back to it).
_DURABLE_APPS: weakref.WeakKeyDictionary[Supervisor, McpHttpApp] = weakref.WeakKeyDictionary()


class _Unavailable(Exception):
    """A passivated session cannot be activated here now (503 with ``Retry-After``)."""


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
    reserved). Each request of a session runs in its own task, counted in flight with its
    session (the idle clock is paused, as for a `Supervisor.call`) while it runs; a client that
    disconnects ends its request, and the session idles out as usual; with JSON
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

    Durable sessions: when the supervisor has a store (``open_supervisor(store=...)``), every
    Streamable HTTP session and every state handle is durable (``durable=False`` turns it
    off). The app registers its session actor as `DURABLE_NAME` (``"mcp-http"``, state handles
    as ``"mcp-handle"``), so another process on the same store, or another node of the
    cluster, can start a session again: one durable app per supervisor. A tool's
    `McpSession.state` is saved write-through (the response to a request that changed it
    leaves once the store confirmed the save; a save refused because the session moved, or
    not confirmed by the store, turns the response into a JSON-RPC error) and restored when
    the session starts again. A request whose ``Mcp-Session-Id`` is not live here activates
    the session from the store (`Supervisor.activate`): an idle session that was passivated,
    a session of a process that was restarted (kill -9 included), of a node that died. The
    restored session is READY with its saved handshake (the SDK's protocol session is given
    the saved ``initialize`` again, its response dropped), so the client's next request is
    answered under the same id. The principal is checked as for a live session (404); the
    store record does not tell the principal before the activation, so a request of another
    principal leaves the session activated (it passivates again at its idle timeout). A
    session held by another live node, or no slot for it (capacity), gets 503 with
    ``Retry-After``, as does a store that fails. Resumable SSE streams do not survive a
    reactivation (the event ids of the earlier activation are refused).

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
        durable: Make HTTP sessions and state handles durable; default: when the supervisor
            has a store.

    Raises:
        ValueError: an option out of range; ``durable=True`` without a store; a second
            durable app for one supervisor.
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
        durable: bool | None = None,
    ) -> None:
        if max_body_size <= 0:
            raise ValueError("max_body_size must be a positive number of bytes")
        if not body_timeout > 0:
            raise ValueError("body_timeout must be a positive number of seconds")
        if max_requests_per_session is None:
            max_requests_per_session = max(1, supervisor.config.mailbox_size)
        if max_requests_per_session <= 0:
            raise ValueError("max_requests_per_session must be positive")
        if durable is None:
            durable = supervisor.store is not None
        elif durable and supervisor.store is None:
            raise ValueError("durable=True needs a supervisor with a store")
        if durable and _DURABLE_APPS.get(supervisor) is not None:
            raise ValueError(
                "another McpHttpApp serves this supervisor's durable sessions already "
                "(one per supervisor; pass durable=False to the others)"
            )
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
        #: What the app shares with each live HTTP session's actor (its wire, its requests).
        self._sessions = _SESSIONS.setdefault(supervisor, {})
        #: Sessions with an open GET stream of server-to-client messages.
        self._streams: set[str] = set()
        self._refused_sessions = _Refusals("refused a new session")
        self._refused_requests = _Refusals("refused a request")
        self._stateless_server: Server[Any] | None = None
        self._stateless_state: Any = None
        self._stateless_ready = False
        self._lifespan_stack: AsyncExitStack | None = None
        #: Whether this app's sessions are durable (see the class docstring).
        self.durable = durable
        if durable:
            supervisor.register_durable(DURABLE_NAME, self._actor)
            _DURABLE_APPS[supervisor] = self
            state_handles(supervisor)  # registers the state handles' actor too

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
        return _path_ok(self.path, scope)

    def _origin_ok(self, scope: Scope) -> bool:
        return _origin_ok(scope, self.allowed_hosts, self.allowed_origins)

    async def _authenticate(self, scope: Scope) -> tuple[bool, Principal | None]:
        """(ok, principal); ok is False when a verifier is set and the token is refused."""
        return await _authenticate(self.token_verifier, scope)

    def _www_authenticate(self) -> tuple[str, str]:
        return _www_authenticate(self.resource_metadata_url)

    async def _session(self, session_id: str, principal: Principal | None) -> _HttpSession | None:
        """The live HTTP session for this id and principal, or None (answered with 404).

        Raises:
            _Unavailable: the session cannot be activated here now (answered with 503).
        """
        session = await self._lookup(session_id, principal)
        if session is None:
            return None
        known = self._sessions.get(session_id)
        if known is None and session.durable:
            # Activated (or restarting) and its actor has not started yet: the actor takes
            # this one when it does.
            known = self._new_http_session(session_id)
        return known

    def _new_http_session(self, session_id: str) -> _HttpSession:
        store = None if self.event_store is None else _SessionEventStore(self.event_store)
        wire = _Wire(
            session_id,
            json_response=self.json_response,
            event_store=store,
            retry_interval=self.retry_interval,
        )
        session = self._sessions[session_id] = _HttpSession(wire)
        return session

    async def _activate(self, session_id: str) -> Session | None:
        """Activate a passivated session from the store; None when there is none to activate.

        Raises:
            _Unavailable: held by another live node, no slot for it, or the store failed.
        """
        if self.supervisor.store is None:
            return None
        try:
            return await self.supervisor.activate(session_id)
        except SessionNotFound:
            return None
        except ActiveElsewhere:
            # In cluster mode the forwarding middleware relays such a request before the app
            # sees it; without it there is no relay here.
            self._refused_sessions.note(
                f"session {short_id(session_id)}... is active on another node"
            )
            raise _Unavailable(
                "Service Unavailable: the session is active on another node"
            ) from None
        except (CapacityError, SupervisorClosed) as exc:
            self._refused_sessions.note(str(exc))
            raise _Unavailable("Service Unavailable: too many sessions") from None
        except StoreError as exc:
            logger.warning("activating session %s... failed: %s", short_id(session_id), exc)
            raise _Unavailable("Service Unavailable: the session store failed") from None

    async def _unavailable(self, send: Send, exc: _Unavailable) -> None:
        await _rpc_error(
            send,
            503,
            INTERNAL_ERROR,
            str(exc),
            headers=[("Retry-After", str(self.retry_after))],
        )

    async def _lookup(self, session_id: str, principal: Principal | None) -> Session | None:
        """The live session for this id and principal, or None (answered with 404); a
        passivated one is activated first (see the class docstring).

        Raises:
            _Unavailable: the session cannot be activated here now (answered with 503).
        """
        try:
            session: Session | None = self.supervisor.get_session(session_id)
        except SessionNotFound:
            session = None
        if session is not None and session.passivating and self._ours(session, principal):
            session = None  # passivating now: activated again once it has passivated
        if session is None:
            session = await self._activate(session_id)
            if session is None:
                return None
        if not self._ours(session, principal):
            return None
        if session.state not in LIVE_STATES or session.close_reason is not None:
            return None  # ending (closed, or a deadline fired and it drains): 404 as after
        return session

    @staticmethod
    def _ours(session: Session, principal: Principal | None) -> bool:
        """Is ``session`` an HTTP session (an ``Mcp-Session-Id``) of ``principal``?"""
        if session.transport is not Transport.HTTP or session.metadata.get(_HANDLE_MARK):
            return False  # a WebSocket session or a state handle: not an Mcp-Session-Id
        if session.principal != principal:
            logger.warning("request for session %s... from another principal", short_id(session.id))
            return False
        return True

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
            try:
                session = await self._session(session_id, principal)
            except _Unavailable as exc:
                await self._unavailable(send, exc)
                return
            if session is None:
                await self._not_found(send)
                return
            if method == "DELETE":
                self.supervisor.close_session(session_id, reason=DELETED)
                await _respond(send, 200)
            else:
                await self._get(scope, receive, send, session_id, session)
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
        return await _post_headers_ok(scope, send, json_response=self.json_response)

    async def _not_found(self, send: Send) -> None:
        await _rpc_error(send, 404, INVALID_REQUEST, "Not Found: unknown or expired session ID")

    async def _read(self, scope: Scope, receive: Receive, send: Send) -> bytes | None:
        """The request body, or None when answered here (413, 408) or the client left."""
        return await _read_request_body(
            scope, receive, send, limit=self.max_body_size, within=self.body_timeout
        )

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
        if session_id is not None:
            try:
                known = await self._session(session_id, principal)
            except _Unavailable as exc:
                await self._unavailable(send, exc)
                return
            if known is None:
                await self._not_found(send)
                return
            wire = known.wire

            async def post(release: Callable[[], None]) -> None:
                await wire.post(scope, receive, send, body, _UNPARSED)

            await self._request(session_id, known, post, send)
            return
        raw = parse(body)
        if raw is _UNPARSED:
            await _rpc_error(send, 400, PARSE_ERROR, "Parse error: malformed JSON")
            return
        if not _is_initialize(raw):
            await _rpc_error(send, 400, INVALID_REQUEST, "Bad Request: Missing session ID")
            return
        try:
            created = await _create_now(
                self.supervisor,
                self._actor,
                transport=Transport.HTTP,
                principal=principal,
                durable=self.durable,
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
        # Before the actor's first step (no checkpoint since the session was created).
        session = self._new_http_session(created.id)
        wire = session.wire
        if principal is not None and not created.is_authenticated:
            self.supervisor.authenticate_session(created.id, principal)

        async def opening(release: Callable[[], None]) -> None:
            await wire.post(scope, receive, send, body, raw)

        try:
            await self._request(created.id, session, opening, send)
        finally:
            handshake = session.handshake
            if handshake is None or not (handshake.done or handshake.accepted is not None):
                # Without a session id only initialize can succeed; a refused one leaves nothing.
                self.supervisor.close_session(created.id, reason="init-failed")

    async def _get(
        self, scope: Scope, receive: Receive, send: Send, session_id: str, session: _HttpSession
    ) -> None:
        """A GET: the stream of server-to-client messages, or (``Last-Event-ID``) a replay."""
        last_event_id = _header(scope, b"last-event-id")
        if last_event_id and self.event_store is not None:
            # A resumed stream counts as a request until it is known to be the GET stream.
            async def replay(release: Callable[[], None]) -> None:
                await session.wire.replay(scope, receive, send, last_event_id, release)

            await self._request(session_id, session, replay, send)
            return
        # Nothing to resume from (no store, or an empty id): a fresh stream. It is not a
        # request: it neither pauses the idle clock nor counts against the per-session limit.
        if session_id in self._streams:
            await _rpc_error(
                send, 409, INVALID_REQUEST, "Conflict: Only one SSE stream is allowed per session"
            )
            return
        self._streams.add(session_id)
        try:

            async def stream(release: Callable[[], None]) -> None:
                await session.wire.get(scope, receive, send)

            if not await _run_request(session, stream, pinned=False):
                await self._not_found(send)
        finally:
            self._streams.discard(session_id)

    async def _request(
        self,
        session_id: str,
        session: _HttpSession,
        work: Callable[[Callable[[], None]], Awaitable[None]],
        send: Send,
    ) -> None:
        """Run one request of a session in this task; 429 past ``max_requests_per_session``."""
        active = self._active.get(session_id, 0)
        if active >= self.max_requests_per_session:
            self._refused_requests.note(
                f"session {short_id(session_id)}... has {active} requests in flight: 429"
            )
            await _rpc_error(
                send,
                429,
                INTERNAL_ERROR,
                "Too Many Requests: too many requests in flight for this session",
                headers=[("Retry-After", str(self.retry_after))],
            )
            return
        self._active[session_id] = active + 1
        try:
            if not await _run_request(session, work, pinned=True):
                await self._not_found(send)
        finally:
            remaining = self._active[session_id] - 1
            if remaining:
                self._active[session_id] = remaining
            else:
                del self._active[session_id]

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
        # Only POST gets here (`_http` answers 405 first); the checks `handle_modern_request`
        # would run again are done: `serve_modern` answers as it does, with less work.
        body = await self._read(scope, receive, send)
        if body is None:
            return
        server = self._stateless()
        if self._stateless_ready:
            await serve_modern(
                server,
                json_response=self.json_response,
                lifespan_state=self._stateless_state,
                scope=scope,
                body=body,
                receive=receive,
                send=send,
            )
            return
        # Not started through ASGI lifespan (e.g. an in-memory test client): one lifespan per call.
        async with server.lifespan(server) as state:
            await serve_modern(
                server,
                json_response=self.json_response,
                lifespan_state=state,
                scope=scope,
                body=body,
                receive=receive,
                send=send,
            )

    # -- the session actor (see `_http_session`) ----------------------------------------------

    async def _actor(self, ctx: SessionContext[Any]) -> None:
        session = self._sessions.get(ctx.id)
        if session is None:
            if not ctx.durable:  # pragma: no cover - registered before the actor's first step
                return
            # A durable session activated again (or restarted) with no request waiting yet.
            session = self._new_http_session(ctx.id)
        try:
            await _run_http_session(ctx, self.server, session)
        finally:
            if self._sessions.get(ctx.id) is session:
                del self._sessions[ctx.id]
