"""The built-in demo server: ``echo`` and a per-session ``counter``.

``python -m supervisor serve`` serves it when no ``--app`` is given. ``counter`` keeps its count in
the session's `McpSession.state`, a dict owned by the session actor: every session counts from 1,
and the count ends with the session. In the stateless 2026-07-28 era there is no session, so
``counter`` answers 1 every time.

Built on the SDK's low-level ``Server`` (``MCPServer`` reconfigures the root logger when it is
constructed, which a library should not do to its host process).
"""

from __future__ import annotations

from typing import Any

import mcp_types as types
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel.server import Server

from ._session import current_session

__all__ = ["create_demo_server"]

_TOOLS = [
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
        description="How many times this session has called counter (1, 2, 3, ...).",
        input_schema={"type": "object", "properties": {}},
        output_schema={
            "type": "object",
            "properties": {"count": {"type": "integer"}},
            "required": ["count"],
        },
    ),
]


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
    arguments = params.arguments or {}
    if params.name == "echo":
        text = arguments.get("text")
        if not isinstance(text, str):
            return _text("echo needs a string argument 'text'", error=True)
        return _text(text)
    if params.name == "counter":
        count = count_call()
        result = _text(str(count))
        result.structured_content = {"count": count}
        return result
    return _text(f"unknown tool {params.name!r}", error=True)


def create_demo_server(name: str = "supervisor-demo") -> Server[Any]:
    """Build the demo server (tools ``echo(text)`` and ``counter()``).

    One instance serves every session: the per-session state lives in the session
    (`current_session`), not in the server.
    """
    return Server(
        name,
        version="0.1.0",
        instructions="trio-session-supervisor demo: echo(text) and a per-session counter().",
        on_list_tools=_list_tools,
        on_call_tool=_call_tool,
    )
