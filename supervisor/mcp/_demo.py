"""The built-in demo server: ``echo``, a per-session ``counter``, and the state-handle tools.

``python -m supervisor serve`` serves it when no ``--app`` is given. ``counter`` keeps its count in
the session's `McpSession.state`, a dict owned by the session actor: every session counts from 1,
and the count ends with the session. A handshake-era client's protocol session is that session;
a sessionless 2026-07-28 client calls ``open_session`` and passes the handle it returns as
``counter``'s (and ``echo``'s) optional ``session`` argument. Without a handle a 2026-07-28
request belongs to no session, so ``counter`` answers 1 every time.

When the server runs with a store (``serve --store ...``, or ``open_supervisor(store=...)``
under `McpHttpApp`), Streamable HTTP sessions and state handles are durable, and so is the
count, with no code here: the state is saved before each ``counter`` answer leaves and restored
when the session starts again, so the count survives an idle passivation, a crash of the
session's actor, and a restart of the server (kill -9 included): the same ``Mcp-Session-Id``,
or the same handle, continues at the next number.

Built on the SDK's low-level ``Server`` (``MCPServer`` reconfigures the root logger when it is
constructed, which a library should not do to its host process).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import mcp_types as types
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel.server import Server

from ._handles import SESSION_TOOLS, call_session_tool, call_with_session, with_session_argument
from ._session import current_session

__all__ = ["create_demo_server"]

_OWN_TOOLS = [
    types.Tool(
        name="echo",
        description="Return the text unchanged.",
        input_schema={
            "type": "object",
            "properties": {"text": {"type": "string", "description": "the text to echo"}},
            "required": ["text"],
        },
    ),
    types.Tool(
        name="counter",
        description=(
            "How many times this session has called counter (1, 2, 3, ...). Without a "
            "protocol session, pass the handle from open_session as 'session'."
        ),
        input_schema={"type": "object", "properties": {}},
        output_schema={
            "type": "object",
            "properties": {"count": {"type": "integer"}},
            "required": ["count"],
        },
    ),
]
#: What every client sees, of either era: ``echo`` and ``counter`` with the optional ``session``
#: argument, then the handle tools. A handshake-era client needs no handle (its protocol session
#: is the session) but may open and pass one, so the tools it may call are listed to it too (a
#: client that checks calls against the listing, as the official Python client does, would
#: otherwise refuse them).
_TOOLS = [*(with_session_argument(tool) for tool in _OWN_TOOLS), *SESSION_TOOLS]
#: Input schemas by tool name: the 2026-07-28 HTTP path checks ``Mcp-Param-*`` headers against
#: them, and without this lookup the SDK runs the whole ``tools/list`` handler on every call.
_INPUT_SCHEMAS: dict[str, Mapping[str, Any]] = {tool.name: tool.input_schema for tool in _TOOLS}


def _text(text: str, *, error: bool = False) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(text=text)], is_error=error)


def count_call() -> int:
    """Count one ``counter`` call of the current session and return the new count."""
    try:
        state = current_session().state
    except LookupError:
        return 1
    count = int(state.get("counter", 0)) + 1
    state["counter"] = count
    return count


async def _list_tools(
    ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
) -> types.ListToolsResult:
    return types.ListToolsResult(tools=list(_TOOLS))


async def _call_tool(
    ctx: ServerRequestContext[Any], params: types.CallToolRequestParams
) -> types.CallToolResult:
    answer = await call_session_tool(params.name, params.arguments)
    if answer is not None:
        return answer
    if params.name == "echo":
        return await call_with_session(params.arguments, _echo)
    if params.name == "counter":
        return await call_with_session(params.arguments, _counter)
    return _text(f"unknown tool {params.name!r}", error=True)


async def _echo(arguments: dict[str, Any]) -> types.CallToolResult:
    text = arguments.get("text")
    if not isinstance(text, str):
        return _text("echo needs a string argument 'text'", error=True)
    return _text(text)


async def _counter(arguments: dict[str, Any]) -> types.CallToolResult:
    count = count_call()
    result = _text(str(count))
    result.structured_content = {"count": count}
    return result


def create_demo_server(name: str = "supervisor-demo") -> Server[Any]:
    """Build the demo server: ``echo(text)``, ``counter()``, ``open_session``, ``close_session``.

    ``echo`` and ``counter`` take an optional ``session`` (a state handle from
    ``open_session``). Clients of both eras see the same four tools; a handshake-era client
    that passes no ``session`` uses its protocol session.

    One instance serves every session: the per-session state lives in the session
    (`current_session`), not in the server.
    """
    return Server(
        name,
        version="0.1.0",
        instructions=(
            "trio-session-supervisor demo: echo(text) and a per-session counter(). "
            "Sessionless clients: call open_session and pass its handle as 'session'."
        ),
        on_list_tools=_list_tools,
        on_call_tool=_call_tool,
        get_tool_input_schema=_INPUT_SCHEMAS.get,
    )
