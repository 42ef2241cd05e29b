"""Serve the conformance fixture through OUR adapter: ``supervisor.mcp.serve_http``.

Every MCP session is a session actor of a ``supervisor.Supervisor`` (``max_sessions`` sized
for the suite, which opens ~35 sessions and never deletes them); the fixture
(``tests/conformance/server.py``) is passed as a factory, so each session gets its own
``MCPServer``. Same command line and same ``CONFORMANCE_SERVER_URL=...`` line as
``run_sdk_server.py``, so ``tests/test_conformance.py`` can run the suite against either.

Usage::

    .venv/bin/python tests/conformance/run_supervised_server.py [--port 0] [--max-sessions 100]
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import warnings
from pathlib import Path

import trio
from mcp.shared.exceptions import MCPDeprecationWarning

# run as a script: make the repository importable
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from supervisor import open_supervisor
from supervisor.mcp import serve_http
from tests.conformance.server import build_server

MCP_PATH = "/mcp"


async def _until_signal() -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for _ in signals:
            return


async def main(host: str, port: int, max_sessions: int) -> None:
    async with open_supervisor(max_sessions=max_sessions) as sup, trio.open_nursery() as nursery:
        url: str = await nursery.start(
            lambda task_status: serve_http(
                sup,
                build_server,
                host=host,
                port=port,
                path=MCP_PATH,
                shutdown_trigger=_until_signal,
                task_status=task_status,
            )
        )
        print(f"CONFORMANCE_SERVER_URL={url}", flush=True)


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (default)")
    parser.add_argument("--max-sessions", type=int, default=100)
    parser.add_argument("--log-level", default="WARNING")
    args = parser.parse_args()
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    # The 2025-era scenarios deliberately exercise logging and sampling, which
    # the SDK flags as deprecated for the 2026-07-28 protocol: keep stderr quiet.
    warnings.filterwarnings("ignore", category=MCPDeprecationWarning)
    trio.run(main, args.host, args.port, args.max_sessions)


if __name__ == "__main__":
    cli()
