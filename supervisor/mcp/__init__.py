"""MCP adapter: serve the official ``mcp`` SDK's protocol with one supervised session per client.

Every MCP session is a session actor of a `supervisor.Supervisor`: the supervisor owns ids (the
supervisor's session id *is* the ``Mcp-Session-Id``), deadlines (idle, init, lifetime), capacity,
lifecycle events and shutdown; the SDK only runs the per-session JSON-RPC loop
(`mcp.server.runner.serve_loop` / ``serve_dual_era_loop``) over anyio memory streams inside the
actor. Needs the ``[mcp]`` extra (``mcp``, ``hypercorn``, ``anyio``, ``trio-websocket``).

Public API (all importable from ``supervisor.mcp``):

Transports
    `McpHttpApp`
        ASGI application: Streamable HTTP (protocol 2025-11-25 and older) routed by
        ``Mcp-Session-Id``, the stateless 2026-07-28 era handed to the SDK's single-exchange
        path, and WebSocket (subprotocol ``"mcp"``, one session per connection) on the same
        path. Serve it with ``hypercorn.trio.serve`` (or `serve_http`). Sessions are READY
        once the client has sent ``notifications/initialized``; see ``docs/mcp.md`` for every
        status rule.
    `serve_http`
        ``await serve_http(sup, server, host="127.0.0.1", port=8000, ...)``: run `McpHttpApp` on
        hypercorn's trio worker; ``task_status.started(url)`` reports the URL it serves on.
    `serve_stdio`
        ``await serve_stdio(server, supervisor=None, ...)``: one supervised session over
        stdin/stdout; returns when the client closes stdin or the session ends.
    `open_in_process_streams` / `open_in_process_client`
        A client/server pair over memory streams, for tests and embedding: the first yields
        `InProcessConnection` (client streams + the supervisor `Session`), the second an
        initialized official `mcp.ClientSession`.
    `run_mcp_session`
        The building block the transports share: run the SDK's protocol loop for ``server`` over
        a stream pair inside a session actor. Use it to write your own transport.

Server side
    `ServerSource`
        What every entry point accepts as ``server``: an ``mcp.server.Server``, an
        ``mcp.server.mcpserver.MCPServer``, or a zero-argument factory returning one (called once
        per session, so closure state in the factory is per session).
    `McpSession` / `current_session`
        The per-session handle visible to tool handlers: ``current_session()`` inside a handler
        returns the `McpSession` of the session serving the request (its supervisor
        ``context``, ``id``, ``transport`` and a ``state`` dict owned by the session actor).
        Outside a session (e.g. the stateless 2026 era without a handle) it raises
        `LookupError`.

State handles (sessions for sessionless 2026-07-28 clients; ``docs/mcp.md``, "State handles")
    `session_tool`
        Decorator for ``MCPServer`` tools: adds an optional ``session`` argument (a handle);
        with it the body runs in the handle's actor and `current_session` is the handle's
        `McpSession`; without it the tool runs as before.
    `call_with_session` / `with_session_argument`
        The same for a low-level ``Server``: run a ``call_tool`` body in the session its
        ``session`` argument selects; add that argument to a ``Tool``'s input schema.
    `add_session_tools` / `call_session_tool` / `SESSION_TOOLS`
        The ``open_session`` (``{"session": handle}``) and ``close_session`` tools: add both
        to a server, or serve and list them from your own low-level handlers.
    `run_in_session`
        ``await run_in_session(handle_or_None, fn)``: the primitive the above share.
    `HandleError`
        Why a handle cannot serve a call (``code``: ``session-not-found``,
        ``session-expired``, ``session-closed``, ``capacity``); ``result()`` is the tool error.
    `StateHandles` / `state_handles`
        A supervisor's handles and its bounded memory of recently ended ones
        (`DEFAULT_REMEMBER` ids for `DEFAULT_REMEMBER_FOR` seconds).
    `serving_stateless`
        For transport writers: mark a sessionless request's task with its supervisor and
        principal, so session tools there can use handles.
    `HANDLE_ERA`, `SESSION_ARGUMENT_DESCRIPTION`
        The ``"era"`` recorded in each handle's metadata; the ``session`` argument's
        description in input schemas.
    `TokenVerifierFn`, `Principal`
        Bearer-token authentication hook for `McpHttpApp`: ``async (token) -> principal | None``,
        or any SDK ``TokenVerifier`` (``verify_token(token) -> AccessToken | None``).
    `create_demo_server`
        The built-in demo server (tools ``echo(text)`` and ``counter()``; ``counter`` counts per
        session; ``open_session``/``close_session`` and an optional ``session`` argument for
        2026-07-28 clients).
    `DEFAULT_ALLOWED_HOSTS`, `DEFAULT_ALLOWED_ORIGINS`, `DEFAULT_MAX_BODY_SIZE`
        Defaults of `McpHttpApp`: loopback names for the DNS-rebinding protection, and the
        largest accepted request body (4 MiB).
"""

from __future__ import annotations

from ._auth import Principal as Principal
from ._auth import TokenVerifierFn as TokenVerifierFn
from ._checks import DEFAULT_ALLOWED_HOSTS as DEFAULT_ALLOWED_HOSTS
from ._checks import DEFAULT_ALLOWED_ORIGINS as DEFAULT_ALLOWED_ORIGINS
from ._checks import DEFAULT_MAX_BODY_SIZE as DEFAULT_MAX_BODY_SIZE
from ._demo import create_demo_server as create_demo_server
from ._handles import DEFAULT_REMEMBER as DEFAULT_REMEMBER
from ._handles import DEFAULT_REMEMBER_FOR as DEFAULT_REMEMBER_FOR
from ._handles import HANDLE_ERA as HANDLE_ERA
from ._handles import SESSION_ARGUMENT_DESCRIPTION as SESSION_ARGUMENT_DESCRIPTION
from ._handles import SESSION_TOOLS as SESSION_TOOLS
from ._handles import HandleError as HandleError
from ._handles import StateHandles as StateHandles
from ._handles import add_session_tools as add_session_tools
from ._handles import call_session_tool as call_session_tool
from ._handles import call_with_session as call_with_session
from ._handles import run_in_session as run_in_session
from ._handles import serving_stateless as serving_stateless
from ._handles import session_tool as session_tool
from ._handles import state_handles as state_handles
from ._handles import with_session_argument as with_session_argument
from ._http import McpHttpApp as McpHttpApp
from ._memory import InProcessConnection as InProcessConnection
from ._memory import open_in_process_client as open_in_process_client
from ._memory import open_in_process_streams as open_in_process_streams
from ._serving import serve_http as serve_http
from ._session import McpSession as McpSession
from ._session import ServerSource as ServerSource
from ._session import current_session as current_session
from ._session import run_mcp_session as run_mcp_session
from ._stdio import serve_stdio as serve_stdio

__all__ = [
    "DEFAULT_ALLOWED_HOSTS",
    "DEFAULT_ALLOWED_ORIGINS",
    "DEFAULT_MAX_BODY_SIZE",
    "DEFAULT_REMEMBER",
    "DEFAULT_REMEMBER_FOR",
    "HANDLE_ERA",
    "SESSION_ARGUMENT_DESCRIPTION",
    "SESSION_TOOLS",
    "HandleError",
    "InProcessConnection",
    "McpHttpApp",
    "McpSession",
    "Principal",
    "ServerSource",
    "StateHandles",
    "TokenVerifierFn",
    "add_session_tools",
    "call_session_tool",
    "call_with_session",
    "create_demo_server",
    "current_session",
    "open_in_process_client",
    "open_in_process_streams",
    "run_in_session",
    "run_mcp_session",
    "serve_http",
    "serve_stdio",
    "serving_stateless",
    "session_tool",
    "state_handles",
    "with_session_argument",
]
