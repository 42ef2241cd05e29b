"""``python -m supervisor``: the command line (``serve``, ``top``).

``serve`` runs an MCP server on a supervisor: Streamable HTTP (and WebSocket) with hypercorn's
trio worker, or one session over stdio with ``--stdio``. SIGINT/SIGTERM shut down gracefully (the
supervisor closes every session, the HTTP server stops listening), print a one-line summary of
the totals and exit 0; a second signal cancels whatever is left at once.

``top`` draws a live view of a server started with ``--admin-port``. The operator options of
``serve`` (admin endpoint with Prometheus metrics, ``--log-level``, ``--log-format``, ``--top``)
and the ``top`` command are implemented in ``supervisor._ops``.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
from collections.abc import Sequence
from functools import partial
from typing import TYPE_CHECKING, Any, TextIO

import trio

if TYPE_CHECKING:
    from .mcp import ServerSource

__all__ = ["build_parser", "load_app", "main"]


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m supervisor``."""
    parser = argparse.ArgumentParser(
        prog="python -m supervisor",
        description="trio-session-supervisor: supervised sessions for MCP servers.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = commands.add_parser(
        "serve",
        help="serve an MCP server (Streamable HTTP + WebSocket, or stdio)",
        description="Serve an MCP server with one supervised session per client. Without --app, "
        "serves the built-in demo server (tools echo and counter).",
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    serve.add_argument(
        "--port", type=int, default=8000, help="port to bind; 0 picks a free one (default 8000)"
    )
    serve.add_argument("--path", default="/mcp", help="endpoint path (default /mcp)")
    serve.add_argument(
        "--max-sessions", type=_positive_int, default=100, help="session capacity (default 100)"
    )
    serve.add_argument(
        "--idle-timeout",
        type=_positive_float,
        default=1800.0,
        help="seconds without activity before a session expires (default 1800)",
    )
    serve.add_argument(
        "--init-timeout",
        type=_positive_float,
        default=None,
        help="seconds a session may take to finish initializing (default: no limit)",
    )
    serve.add_argument(
        "--app",
        default=None,
        metavar="MODULE:ATTR",
        help="the server to serve: an mcp Server/MCPServer, or a zero-argument factory of one",
    )
    serve.add_argument(
        "--stdio", action="store_true", help="serve one session over stdin/stdout instead"
    )
    # The operator surface (admin endpoint, metrics, logging, top) lives in supervisor._ops.
    from ._ops._run import add_serve_options, add_top_command

    add_serve_options(serve)
    add_top_command(commands)
    return parser


def load_app(spec: str) -> ServerSource:
    """Import ``module:attr`` and return the attribute (a server or a factory of one).

    Raises:
        ValueError: ``spec`` is not of the form ``module:attr``.
        ImportError, AttributeError: the module or attribute does not exist.
    """
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"--app must look like module:attr, got {spec!r}")
    target: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        target = getattr(target, part)
    source: ServerSource = target
    return source


def _summary(sup: Any) -> str:
    stats = sup.statistics()
    return (
        f"supervisor stopped: {stats.created_total} sessions created, "
        f"{stats.closed_total} closed, {stats.expired_total} expired, "
        f"{stats.failed_total} failed, {stats.rejected_total} rejected"
    )


async def _watch_signals(
    signals: Any, stop: trio.Event, cancel_scope: trio.CancelScope, out: TextIO
) -> None:
    async for signum in signals:
        if not stop.is_set():
            print(f"received {signal.Signals(signum).name}, shutting down", file=out, flush=True)
            stop.set()
        else:
            cancel_scope.cancel()


async def _serve(args: argparse.Namespace) -> int:
    from . import open_supervisor
    from .mcp import create_demo_server, serve_stdio

    server: ServerSource = load_app(args.app) if args.app else create_demo_server()
    config: dict[str, Any] = {
        "max_sessions": args.max_sessions,
        "idle_timeout": args.idle_timeout,
        "init_timeout": args.init_timeout,
    }
    # With --stdio, stdout carries the protocol: talk to the operator on stderr.
    out = sys.stderr if args.stdio else sys.stdout
    stop = trio.Event()
    from ._ops._run import Operations

    ops = Operations(args, out)
    ops.configure()
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with open_supervisor(**config) as sup, trio.open_nursery() as nursery:
            nursery.start_soon(_watch_signals, signals, stop, nursery.cancel_scope, out)
            await ops.start(sup, nursery)
            if args.stdio:
                print("serving MCP over stdio", file=out, flush=True)
                async with trio.open_nursery() as inner:

                    async def run_stdio() -> None:
                        await serve_stdio(server, supervisor=sup)
                        stop.set()

                    inner.start_soon(run_stdio)
                    await stop.wait()
                    await sup.shutdown()
                    await ops.drained()
            else:
                async with trio.open_nursery() as http:
                    url = await http.start(partial(ops.serve_http, sup, server, stop))
                    print(f"serving MCP on {url}", file=out, flush=True)
                    ops.announce(url)
                    ops.start_live_view(sup, nursery, url)
                    await stop.wait()
                    # Concurrently with hypercorn's graceful stop: open GET streams end with
                    # their sessions, so hypercorn's connections can drain.
                    await sup.shutdown()
                    await ops.drained()
            nursery.cancel_scope.cancel()
        print(_summary(sup), file=out, flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = build_parser().parse_args(argv)
    if args.command == "top":
        from ._ops._run import top_main

        return top_main(args)
    if args.command == "serve":
        try:
            return trio.run(_serve, args)
        except (ValueError, ImportError, AttributeError, OSError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    return 2  # pragma: no cover - argparse rejects unknown commands
