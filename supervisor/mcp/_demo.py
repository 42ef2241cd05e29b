"""The built-in demo server: ``echo`` and a per-session ``counter``.

``python -m supervisor serve`` serves it when no ``--app`` is given. ``counter`` keeps its count in
the session's `McpSession.state`, a dict owned by the session actor: every session counts from 1,
and the count ends with the session. The tools are ``async`` so they run in the session's trio task
(the SDK runs plain functions in a worker thread). In the stateless 2026-07-28 era there is no session, so
``counter`` answers 1 every time (each request is its own session, as far as state goes).
"""

from __future__ import annotations

from mcp.server.mcpserver import MCPServer

from ._session import current_session

__all__ = ["create_demo_server"]


async def echo(text: str) -> str:
    """Return ``text`` unchanged."""
    return text


async def counter() -> int:
    """Return how many times this session has called ``counter`` (1 on the first call)."""
    try:
        state = current_session().state
    except LookupError:
        return 1
    count = int(state.get("counter", 0)) + 1
    state["counter"] = count
    return count


def create_demo_server(name: str = "supervisor-demo") -> MCPServer:
    """Build the demo ``MCPServer`` (tools ``echo(text)`` and ``counter()``).

    One instance can serve every session: the per-session state is in the session, not in the
    server.
    """
    server = MCPServer(
        name,
        instructions="Demo server of trio-session-supervisor: echo(text) and a per-session counter().",
    )
    server.add_tool(echo, name="echo", description="Return the text unchanged.")
    server.add_tool(
        counter,
        name="counter",
        description="How many times this session has called counter (1, 2, 3, ...).",
    )
    return server
