"""Forwarding a request to the node that owns its session: `Forwarding`, an ASGI middleware.

In cluster mode every session lives on one node (its owner), and its id says which one
(``<random>.<node>``). A load balancer may send any request to any node; `Forwarding` wraps a
node's `McpHttpApp` and relays a request for another node's session to that node over HTTP,
streaming the answer back as it arrives (an SSE response, the GET stream). What it looks at:

* handshake era: the ``Mcp-Session-Id`` header (POST, GET and DELETE alike);
* 2026-07-28 era (``MCP-Protocol-Version`` a modern version): the state handle of a
  ``tools/call`` request (``Mcp-Method: tools/call``), its ``params.arguments.session`` (the
  ``session`` argument of the session tools and the handle argument of ``close_session``), so
  the POST body of a tool call is read first; other requests of that era are not.

Everything else (this node's sessions, new sessions, other paths, WebSocket, lifespan) goes to
the wrapped app untouched. The owner checks the request as if it had come to it directly: the
original ``Host``, ``Origin`` and ``Authorization`` headers are relayed, so its DNS-rebinding
and principal checks see what the client sent (another principal's token gets 404 there).

A relayed request carries ``x-tss-forwarded: <this node>``; one that arrives with it is never
relayed again (the local app answers, with 404 for a session it does not own), so two nodes
that disagree about an owner cannot loop. An owner with no known address, or that refuses the
connection, is a dead owner: its handshake-era session gets the app's 404 for an unknown
session, and a 2026-07-28 call goes to the local app, which answers ``session-not-found``
because it does not know the handle.

Durable sessions (the supervisor keeps them in `Cluster.store`) move: a passivated one, or a
dead node's, is activated on whichever node gets its next request, so the id no longer says
who runs it. For a session that is not live on this node, forwarding asks the store who holds
it (one round trip) and then:

* no record: as above (the id's node, or 404 / ``session-not-found``);
* held by another live node: relayed there (503 with ``Retry-After`` if it cannot be reached:
  its lease has not lapsed yet, so it cannot be activated elsewhere either);
* passivated, or its owner is dead: activated here (`Supervisor.activate`) and served by the
  local app; if another node won the race to activate it, relayed to that node;
* no slot here, or the store is not answering: 503 with ``Retry-After``.

A relayed request (``x-tss-forwarded``) is activated here if it is not live here, and never
relayed again.
"""

from __future__ import annotations

import enum
import json
import logging
from typing import Final, Literal, Protocol, cast, final

import httpx
import trio
from mcp_types import INTERNAL_ERROR, INVALID_REQUEST
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from .._durable import ActiveElsewhere, StoreError
from .._exceptions import CapacityError, SessionNotFound, SupervisorClosed
from .._ids import short_id
from ..mcp._asgi import ASGIMessage, Receive, Scope, Send, _rpc_error
from ..mcp._checks import DEFAULT_MAX_BODY_SIZE, _path_ok, _queued
from ._durable import MISSING, Missing

__all__ = ["FORWARDED_HEADER", "Directory", "DurableDirectory", "Forwarding"]

logger = logging.getLogger("supervisor.cluster")

#: The header a relayed request carries (its value: the relaying node's token).
FORWARDED_HEADER: Final = "x-tss-forwarded"

_FORWARDED = FORWARDED_HEADER.encode()
_SESSION_HEADER = b"mcp-session-id"
_VERSION_HEADER = b"mcp-protocol-version"
_METHOD_HEADER = b"mcp-method"
_MODERN: Final = frozenset(v.encode("latin-1") for v in MODERN_PROTOCOL_VERSIONS)

#: Not relayed upstream: hop-by-hop headers (RFC 9110 7.6.1), and Content-Length (httpx sets
#: it from the body it sends). ``proxy-*`` headers are dropped too.
_REQUEST_DROP: Final = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"te",
        b"trailer",
        b"trailers",
        b"transfer-encoding",
        b"upgrade",
        b"content-length",
        _FORWARDED,
    }
)
#: Not relayed back to the client: the hop-by-hop headers of the owner's response.
_RESPONSE_DROP: Final = frozenset(
    {b"connection", b"keep-alive", b"te", b"trailer", b"trailers", b"transfer-encoding", b"upgrade"}
)

#: Seconds a pooled connection to a peer may stay idle: below hypercorn's keep-alive timeout
#: (5 s by default), so the pool drops a connection before the peer closes it under a request.
_KEEPALIVE_EXPIRY = 4.0

#: Seconds to receive a body, for an app that does not say (`McpHttpApp` has ``body_timeout``).
_BODY_TIMEOUT = 30.0

#: ``Retry-After`` (seconds) of a 503 for a durable session that is moving between nodes.
_RETRY_AFTER: Final = "1"


class _Route(enum.Enum):
    """Where a request for a durable session goes, besides a node id to relay it to."""

    LOCAL = "local"  # the local app (the session is live here now, or it is not found)
    AS_BEFORE = "as-before"  # no durable record: the id's node, as for any session
    BUSY = "busy"  # 503: no slot here, the store is away, or the owner is unreachable


class Directory(Protocol):
    """Who owns a session and where a node answers: what `Forwarding` asks of the cluster."""

    @property
    def node_id(self) -> str:
        """This node's token (the owner part of the ids of its sessions)."""
        ...

    def owner_of(self, session_id: str) -> str | None:
        """The node token in ``session_id``; None when the id has no node part. Never blocks."""
        ...

    def address_of(self, node: str) -> str | None:
        """The base URL (``http://host:port``) of the live peer ``node``; None when it is
        unknown or dead. Never blocks."""
        ...


class DurableDirectory(Directory, Protocol):
    """What `Forwarding` asks of a directory whose node keeps durable sessions (`Cluster`):
    used when its ``durable`` is True."""

    @property
    def durable(self) -> bool:
        """True when the node's supervisor keeps durable sessions in the cluster's store."""
        ...

    def is_live(self, session_id: str) -> bool:
        """True when the session runs on this node now. Never blocks."""
        ...

    async def durable_owner(self, session_id: str) -> str | Literal[Missing.MISSING] | None:
        """The live node holding the session, None (passivated, or its owner is dead), or
        `MISSING` (no record). Raises `supervisor.StoreError`."""
        ...

    async def activate(self, session_id: str) -> None:
        """Activate the session here (`Supervisor.activate`), raising what it raises."""
        ...


@final
class Forwarding:
    """ASGI middleware: relay requests for another node's session to that node.

    ``Forwarding(app, directory)`` is an ASGI app; serve it in place of ``app`` (e.g.
    ``serve_http(..., wrap=lambda app: Forwarding(app, directory))``). See the module
    docstring for what is relayed.

    A request for this node's session (or a new one) costs one scan of its headers and a
    split of the id. A 2026-07-28 tool call is read first (bounded by ``max_body_size`` and
    ``body_timeout``) and parsed only when it could name a handle (a ``tools/call`` with a
    ``session`` argument); the local app then gets the body replayed. A body over
    ``max_body_size`` goes to the local app as read so far, which answers 413 itself.

    Relaying uses one pooled ``httpx.AsyncClient`` (keep-alive connections to the peers, no
    redirects followed, no proxy from the environment, no read timeout: a relayed SSE stream
    lasts as long as the owner keeps it open). It is opened on the first relayed request and
    closed at lifespan shutdown or by `aclose`. A client that disconnects cancels its relayed
    request at once, so the owner sees the disconnect too. An owner that cannot be reached
    within ``connect_timeout`` is treated as dead (404, see the module docstring); one that
    fails after accepting the connection gets 502 before the answer has started, or a cut
    answer after. Failures are logged at WARNING, with short ids only.

    Args:
        app: The node's ASGI app (an `McpHttpApp`).
        directory: Who owns an id, and the peers' addresses.
        path: The MCP endpoint path (``None``: any path); other paths are not relayed.
        max_body_size: Largest body read to relay or to find a handle in (default: the app's
            ``max_body_size``, else 4 MiB).
        connect_timeout: Seconds to connect to an owner before it counts as dead.
        body_timeout: Seconds to receive a body that is to be relayed or searched for a
            handle; a slower one gets 408 (default: the app's ``body_timeout``, else 30).
        activate_timeout: Seconds an activation of a durable session here may take (a slot
            included) before the request gets 503 with ``Retry-After``.
    """

    def __init__(
        self,
        app: _ASGIApp,
        directory: Directory,
        *,
        path: str | None = "/mcp",
        max_body_size: int | None = None,
        connect_timeout: float = 2.0,
        body_timeout: float | None = None,
        activate_timeout: float = 10.0,
    ) -> None:
        if max_body_size is None:
            max_body_size = getattr(app, "max_body_size", DEFAULT_MAX_BODY_SIZE)
        if body_timeout is None:
            body_timeout = getattr(app, "body_timeout", _BODY_TIMEOUT)
        if max_body_size <= 0:
            raise ValueError("max_body_size must be a positive number of bytes")
        if not connect_timeout > 0:
            raise ValueError("connect_timeout must be a positive number of seconds")
        if not body_timeout > 0:
            raise ValueError("body_timeout must be a positive number of seconds")
        if not activate_timeout > 0:
            raise ValueError("activate_timeout must be a positive number of seconds")
        self.app = app
        self.directory = directory
        self.path = path
        self.max_body_size: int = max_body_size
        self.connect_timeout = connect_timeout
        self.body_timeout: float = body_timeout
        self.activate_timeout = activate_timeout
        self._client: httpx.AsyncClient | None = None

    async def aclose(self) -> None:
        """Close the pooled client (a later relayed request opens a new one)."""
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    # -- ASGI entry ---------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                await self.app(scope, receive, self._lifespan_send(send))
            else:
                await self.app(scope, receive, send)
            return
        if self.path is not None and not _path_ok(self.path, scope):
            await self.app(scope, receive, send)
            return
        session_id: bytes | None = None
        version: bytes | None = None
        method: bytes | None = None
        durable = self._durable()
        forwarded = False
        for key, value in scope["headers"]:
            if key == _SESSION_HEADER:
                session_id = value
            elif key == _VERSION_HEADER:
                version = value
            elif key == _METHOD_HEADER:
                method = value
            elif key == _FORWARDED:
                if durable is None:
                    # Relayed once already: this node answers, whoever the id names.
                    await self.app(scope, receive, send)
                    return
                forwarded = True  # answered here, a durable session activated here first
        if version is not None and version in _MODERN:
            # Over HTTP, ``Mcp-Method`` must equal the body's method (the SDK answers
            # HEADER_MISMATCH otherwise, here as on the owner): only a tools/call is read.
            if method == b"tools/call" and scope.get("method") == "POST":
                await self._modern(scope, receive, send, durable, forwarded)
            else:
                await self.app(scope, receive, send)
            return
        if session_id is None:
            await self.app(scope, receive, send)
            return
        sid = bytes(session_id).decode("latin-1")
        if durable is not None:
            route = await self._durable_route(durable, sid, forwarded)
            if route is _Route.LOCAL:
                await self.app(scope, receive, send)
                return
            if route is _Route.BUSY:
                await _busy(send)
                return
            if isinstance(route, str):
                await self._handshake(scope, receive, send, sid, route, durable=True)
                return
        owner = self.directory.owner_of(sid)
        if owner is None or owner == self.directory.node_id:
            await self.app(scope, receive, send)
            return
        await self._handshake(scope, receive, send, sid, owner)

    def _lifespan_send(self, send: Send) -> Send:
        async def lifespan_send(message: ASGIMessage) -> None:
            if message["type"] in ("lifespan.shutdown.complete", "lifespan.shutdown.failed"):
                await self.aclose()
            await send(message)

        return lifespan_send

    # -- durable sessions ---------------------------------------------------------------------

    def _durable(self) -> DurableDirectory | None:
        """The directory, when its node keeps durable sessions in the cluster's store."""
        if getattr(self.directory, "durable", False) is True:
            return cast(DurableDirectory, self.directory)
        return None

    async def _durable_route(
        self, durable: DurableDirectory, session_id: str, forwarded: bool
    ) -> _Route | str:
        """Where a request for ``session_id`` goes: a `_Route`, or the node to relay it to.

        A session live here is served here (no round trip). Otherwise the store says who
        holds it (one round trip; skipped for a relayed request, which is never relayed
        again): another live node gets the request; a passivated session, or a dead node's,
        is activated here first.
        """
        if durable.is_live(session_id):
            return _Route.LOCAL
        if not forwarded:
            try:
                owner = await durable.durable_owner(session_id)
            except StoreError as exc:
                logger.warning(
                    "session %s...: the durable store did not answer (%s): routed by its id",
                    short_id(session_id),
                    exc,
                )
                return _Route.AS_BEFORE
            if owner is MISSING:
                return _Route.AS_BEFORE
            if owner is not None and owner != durable.node_id:
                return owner
        try:
            with trio.fail_after(self.activate_timeout):
                await durable.activate(session_id)
        except ActiveElsewhere as exc:  # another node won the race to activate it
            if forwarded or exc.owner == durable.node_id:
                return _Route.BUSY
            return exc.owner
        except (SessionNotFound, SupervisorClosed):
            return _Route.LOCAL  # the app answers as for any unknown session
        except (CapacityError, StoreError, trio.TooSlowError) as exc:
            logger.warning(
                "session %s...: cannot activate it here (%s): 503",
                short_id(session_id),
                type(exc).__name__,
            )
            return _Route.BUSY
        return _Route.LOCAL

    # -- the two eras -------------------------------------------------------------------------

    async def _handshake(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        session_id: str,
        owner: str,
        *,
        durable: bool = False,
    ) -> None:
        """A handshake-era request for ``owner``'s session: relay it, or 404 if it is dead
        (503 for a durable session, whose owner's lease has not lapsed yet)."""
        read = await self._read(receive, send)
        if read is None:
            return
        body, whole = read
        if not whole:
            # Too large: the app reads the rest and answers 413, as it would to the client.
            await self.app(scope, _replaying(body, receive), send)
            return
        otherwise = "503" if durable else "404"
        if await self._relay(scope, receive, send, body, "session", session_id, owner, otherwise):
            return
        if durable:
            await _busy(send)
            return
        await _rpc_error(send, 404, INVALID_REQUEST, "Not Found: unknown or expired session ID")

    async def _modern(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        durable: DurableDirectory | None = None,
        forwarded: bool = False,
    ) -> None:
        """A 2026-07-28 POST: relay a tool call on another node's handle, else serve here."""
        read = await self._read(receive, send)
        if read is None:
            return
        body, whole = read
        if whole:
            handle = _handle_in(body)
            route: _Route | str = _Route.AS_BEFORE
            if handle is not None and durable is not None:
                route = await self._durable_route(durable, handle, forwarded)
            if route is _Route.BUSY:
                await _busy(send)
                return
            if isinstance(route, str):
                assert handle is not None
                if not await self._relay(
                    scope, receive, send, body, "handle", handle, route, "503"
                ):
                    await _busy(send)
                return
            if handle is not None and route is _Route.AS_BEFORE:
                owner = self.directory.owner_of(handle)
                # A dead owner's handle is served here: this node does not know it, and
                # answers session-not-found as for any ended one.
                if (
                    owner is not None
                    and owner != self.directory.node_id
                    and await self._relay(
                        scope, receive, send, body, "handle", handle, owner, "served here"
                    )
                ):
                    return
        await self.app(scope, _replaying(body, receive, more=not whole), send)

    # -- reading the body ---------------------------------------------------------------------

    async def _read(self, receive: Receive, send: Send) -> tuple[bytes, bool] | None:
        """(body, whole); whole is False past ``max_body_size`` (the rest is still unread).

        None when the client left, or when answered here (408).
        """
        chunks: list[bytes] = []
        size = 0
        nowait = _queued(receive)
        # hypercorn queues a small body before the app runs: read it with no timer, no yield.
        while nowait is not None:
            try:
                message = nowait()
            except trio.WouldBlock:
                break
            if message["type"] != "http.request":
                return None
            chunk = message.get("body", b"")
            chunks.append(chunk)
            size += len(chunk)
            if size > self.max_body_size:
                return b"".join(chunks), False
            if not message.get("more_body", False):
                return b"".join(chunks), True
        with trio.move_on_after(self.body_timeout):
            while True:
                message = await receive()
                if message["type"] != "http.request":
                    return None
                chunk = message.get("body", b"")
                chunks.append(chunk)
                size += len(chunk)
                if size > self.max_body_size:
                    return b"".join(chunks), False
                if not message.get("more_body", False):
                    return b"".join(chunks), True
        logger.warning("request body not received within %s s", self.body_timeout)
        await _rpc_error(send, 408, INVALID_REQUEST, "Request Timeout: body too slow")
        return None

    # -- relaying -----------------------------------------------------------------------------

    async def _locate(self, node: str) -> str | None:
        """The owner's address; a directory that can look a node up (`Cluster.locate`) is
        asked when the address is not known yet (a node that joined a moment ago)."""
        address = self.directory.address_of(node)
        if address is None:
            locate = getattr(self.directory, "locate", None)
            if locate is not None:
                found = await locate(node)
                address = found if isinstance(found, str) else None
        return address

    def _pool(self) -> httpx.AsyncClient:
        client = self._client
        if client is None:
            client = self._client = httpx.AsyncClient(
                timeout=httpx.Timeout(None, connect=self.connect_timeout),
                follow_redirects=False,
                trust_env=False,
                # A relayed GET stream holds its connection as long as it lasts: no cap, or
                # enough open streams would make every other relayed request wait.
                limits=httpx.Limits(
                    max_connections=None,
                    max_keepalive_connections=64,
                    keepalive_expiry=_KEEPALIVE_EXPIRY,
                ),
            )
        return client

    async def _relay(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        body: bytes,
        what: str,
        session_id: str,
        owner: str,
        otherwise: str,
    ) -> bool:
        """Relay the request to ``owner`` and stream the answer back.

        Returns False when the owner is unknown or could not be connected to (nothing was
        sent to the client; logged, with ``what`` the id is and what is done ``otherwise``),
        True when the request is answered (or the client left).
        """
        address = await self._locate(owner)
        if address is None:
            logger.warning(
                "%s %s...: owner %s... is unknown or dead: %s",
                what,
                short_id(session_id),
                short_id(owner),
                otherwise,
            )
            return False
        target = scope.get("raw_path") or str(scope.get("path", "/")).encode()
        query = scope.get("query_string") or b""
        url = address + bytes(target).decode("latin-1")
        if query:
            url += "?" + bytes(query).decode("latin-1")
        headers = [
            (key, value)
            for key, value in scope["headers"]
            if key not in _REQUEST_DROP and not key.startswith(b"proxy-")
        ]
        headers.append((_FORWARDED, self.directory.node_id.encode("latin-1")))
        request = httpx.Request(str(scope.get("method", "GET")), url, headers=headers, content=body)
        answered = True
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_cancel_on_disconnect, receive, nursery.cancel_scope)
            answered = await self._exchange(request, send, session_id, owner)
            nursery.cancel_scope.cancel()
        return answered

    async def _exchange(
        self, request: httpx.Request, send: Send, session_id: str, owner: str
    ) -> bool:
        try:
            response = await self._pool().send(request, stream=True)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            logger.warning(
                "session %s...: cannot reach owner %s... (%s): treated as dead",
                short_id(session_id),
                short_id(owner),
                type(exc).__name__,
            )
            return False
        except httpx.HTTPError as exc:
            logger.warning(
                "session %s...: owner %s... failed before answering (%s): 502",
                short_id(session_id),
                short_id(owner),
                type(exc).__name__,
            )
            await _rpc_error(
                send, 502, INTERNAL_ERROR, "Bad Gateway: the session's node did not answer"
            )
            return True
        try:
            headers = [
                (key.lower(), value)
                for key, value in response.headers.raw
                if key.lower() not in _RESPONSE_DROP
            ]
            await send(
                {"type": "http.response.start", "status": response.status_code, "headers": headers}
            )
            try:
                async for chunk in response.aiter_raw():
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            except httpx.HTTPError as exc:
                logger.warning(
                    "session %s...: owner %s... cut the answer (%s)",
                    short_id(session_id),
                    short_id(owner),
                    type(exc).__name__,
                )
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            # Cancelled (the client left): still close the connection, so the owner sees it.
            with trio.CancelScope(shield=True), trio.move_on_after(1.0):
                await response.aclose()
        return True


# -- helpers --------------------------------------------------------------------------------------


class _ASGIApp(Protocol):
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None: ...


def _handle_in(body: bytes) -> str | None:
    """The state handle a ``tools/call`` body names (``params.arguments.session``), if any.

    Parsed only when the bytes could hold one: other requests cost two substring checks.
    """
    if b"tools/call" not in body or b'"session"' not in body:
        return None
    try:
        decoded = json.loads(body)
    except (ValueError, RecursionError):
        return None  # the app answers the parse error
    if not isinstance(decoded, dict) or decoded.get("method") != "tools/call":
        return None
    params = decoded.get("params")
    arguments = params.get("arguments") if isinstance(params, dict) else None
    handle = arguments.get("session") if isinstance(arguments, dict) else None
    return handle if isinstance(handle, str) else None


def _replaying(body: bytes, receive: Receive, *, more: bool = True) -> Receive:
    """``receive`` with the body read so far given back first, as one message.

    ``more``: the body read so far is not the whole body (the rest follows from ``receive``).
    """
    pending = True

    async def replay() -> ASGIMessage:
        nonlocal pending
        if pending:
            pending = False
            return {"type": "http.request", "body": body, "more_body": more}
        return await receive()

    return replay


async def _busy(send: Send) -> None:
    """503 with ``Retry-After``: the durable session cannot be served right now."""
    await _rpc_error(
        send,
        503,
        INTERNAL_ERROR,
        "Service Unavailable: the session is moving between nodes; retry",
        headers=[("Retry-After", _RETRY_AFTER)],
    )


async def _cancel_on_disconnect(receive: Receive, scope: trio.CancelScope) -> None:
    """Cancel ``scope`` when the client disconnects (the body has been read already)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            scope.cancel()
            return
