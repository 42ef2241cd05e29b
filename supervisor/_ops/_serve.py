"""``serve``'s MCP front end: `supervisor.mcp.McpHttpApp` on hypercorn, optionally timed.

The same as `supervisor.mcp.serve_http`, except that the app can be wrapped in `TimedApp` so
MCP requests feed the request-duration histogram. (``serve_http`` builds its app itself and
takes no wrapper; if it grows one, this module can go.)
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import trio

from ._admin import serve_asgi

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from .. import Supervisor
    from ..mcp import ServerSource
    from ._metrics import OperatorMetrics

__all__ = ["serve_mcp"]


async def serve_mcp(
    supervisor: Supervisor,
    server: ServerSource,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    path: str = "/mcp",
    metrics: OperatorMetrics | None = None,
    shutdown_trigger: Callable[[], Awaitable[None]] | None = None,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
    **app_options: Any,
) -> None:
    """Serve MCP over Streamable HTTP (and WebSocket); ``task_status.started(endpoint_url)``."""
    from ..mcp import McpHttpApp

    app: Any = McpHttpApp(supervisor, server, path=path, **app_options)
    if metrics is not None:
        app = metrics.timed(app)

    async def serving(task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        await serve_asgi(
            app,
            host=host,
            port=port,
            shutdown_trigger=shutdown_trigger,
            errorlog=logging.getLogger("supervisor.mcp"),
            task_status=task_status,
        )

    async with trio.open_nursery() as nursery:
        base: str = await nursery.start(serving)
        task_status.started(base + path)
