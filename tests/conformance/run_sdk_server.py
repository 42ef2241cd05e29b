"""Serve the conformance fixture with the SDK's own Streamable HTTP stack, on trio.

This is the reference ("SDK runner") way of serving ``tests/conformance/server.py``
until/besides our own adapter: the SDK's ``MCPServer.streamable_http_app()``
(a Starlette app around ``StreamableHTTPSessionManager``) served by
``hypercorn.trio.serve``. Hypercorn runs the app's ASGI lifespan, which enters
the session manager's ``run()`` (an anyio task group, here on trio).
``MCPServer.run()`` is not used: it is asyncio/uvicorn only.

Usage::

    .venv/bin/python tests/conformance/run_sdk_server.py [--port 0] [--max-sessions 100]

Once listening it prints one line ``CONFORMANCE_SERVER_URL=http://127.0.0.1:PORT/mcp``
on stdout (``--port 0`` picks a free port) and serves until SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import warnings
from pathlib import Path
from typing import Any

import trio
from hypercorn.config import Config
from hypercorn.trio import serve
from mcp.shared.exceptions import MCPDeprecationWarning

# run as a script: make the repository importable
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.conformance.server import RETRY_INTERVAL_MS, build_event_store, build_server

MCP_PATH = "/mcp"


def build_app(*, max_sessions: int, host: str) -> Any:
    """The SDK's Streamable HTTP ASGI app for a fresh fixture server."""
    mcp = build_server()
    return mcp.streamable_http_app(
        streamable_http_path=MCP_PATH,
        event_store=build_event_store(),
        retry_interval=RETRY_INTERVAL_MS,
        max_sessions=max_sessions,
        host=host,  # loopback host => the SDK turns on DNS-rebinding protection
    )


async def _until_signal() -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for _ in signals:
            return


async def main(host: str, port: int, max_sessions: int) -> None:
    config = Config()
    config.bind = [f"{host}:{port}"]
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    config.graceful_timeout = 2.0
    app = build_app(max_sessions=max_sessions, host=host)
    async with trio.open_nursery() as nursery:
        binds: list[str] = await nursery.start(
            lambda task_status: serve(
                app, config, shutdown_trigger=_until_signal, task_status=task_status
            )
        )
        print(f"CONFORMANCE_SERVER_URL={binds[0]}{MCP_PATH}", flush=True)


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (default)")
    parser.add_argument("--max-sessions", type=int, default=100)
    parser.add_argument("--log-level", default="WARNING")
    args = parser.parse_args()
    # The 2025-era scenarios deliberately exercise logging and sampling, which
    # the SDK flags as deprecated for the 2026-07-28 protocol: keep stderr quiet.
    warnings.filterwarnings("ignore", category=MCPDeprecationWarning)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    trio.run(main, args.host, args.port, args.max_sessions)


if __name__ == "__main__":
    cli()
