"""How ``python -m supervisor`` wires the operator surface in: options, ``serve``'s extras, ``top``.

Kept here so the command line module only calls in: `add_serve_options` and `add_top_command`
extend the parser, `Operations` runs logging, metrics, the admin endpoint and the in-process
live view beside a served supervisor, and `top_main` runs the ``top`` command.

In cluster mode (``serve --cluster``) `Operations` is given the node's `supervisor.cluster.Cluster`:
the MCP app is served wrapped by ``Cluster.forwarding`` (requests for sessions another node owns
are proxied there), the node's address is set once the port is bound (`Operations.bind_cluster`),
the startup lines name the node and the cluster (its password redacted), and the admin endpoint,
the metrics and the live view describe the cluster as well.
"""

from __future__ import annotations

import argparse
import os
import sys
from functools import partial
from typing import TYPE_CHECKING, Any, TextIO
from urllib.parse import urlsplit

import trio

from ._logging import LOG_LEVELS, configure_logging, log_events

if TYPE_CHECKING:
    from .. import Supervisor
    from ..cluster import Cluster
    from ..mcp import ServerSource
    from ._metrics import OperatorMetrics

__all__ = [
    "DEFAULT_ADMIN_URL",
    "Operations",
    "add_serve_options",
    "add_top_command",
    "top_main",
]

#: Where ``top`` looks by default: ``serve --admin-port 8001`` on loopback.
DEFAULT_ADMIN_URL = "http://127.0.0.1:8001"
TOKEN_ENV = "SUPERVISOR_ADMIN_TOKEN"


def add_serve_options(serve: argparse.ArgumentParser) -> None:
    """The operator options of ``serve``: admin endpoint, logging, live view."""
    ops = serve.add_argument_group("operator surface")
    ops.add_argument(
        "--admin-port",
        type=int,
        default=None,
        help="serve /metrics, /sessions and /events (for top) on this port; off by default",
    )
    ops.add_argument(
        "--admin-host",
        default="127.0.0.1",
        help="address of the admin endpoint (default 127.0.0.1; elsewhere a token is required)",
    )
    ops.add_argument(
        "--admin-token",
        default=None,
        help=f"bearer token the admin endpoint requires (default: ${TOKEN_ENV} if set)",
    )
    ops.add_argument(
        "--log-level",
        choices=LOG_LEVELS,
        default="warning",
        help="log records at this level and above to stderr (default warning; info logs "
        "every session's lifecycle)",
    )
    ops.add_argument(
        "--log-format",
        choices=("text", "json"),
        default="text",
        help="text lines, or one JSON object per line (default text)",
    )
    ops.add_argument(
        "--top",
        action="store_true",
        help="draw the live view on this terminal while serving (not with --stdio)",
    )


def add_top_command(commands: Any) -> None:
    """The ``top`` subcommand."""
    top = commands.add_parser(
        "top",
        help="live view of a running server (reads its admin endpoint)",
        description="Live view of a server started with --admin-port: sessions by state, "
        "transport and kind (state handles or protocol sessions), live sessions with their "
        "protocol era, lifecycle events, totals. Redraws when events arrive.",
    )
    top.add_argument(
        "--url",
        default=DEFAULT_ADMIN_URL,
        help=f"the server's admin endpoint (default {DEFAULT_ADMIN_URL})",
    )
    top.add_argument(
        "--token", default=None, help=f"admin bearer token (default: ${TOKEN_ENV} if set)"
    )
    top.add_argument("--once", action="store_true", help="print one snapshot and exit")


def top_main(args: argparse.Namespace) -> int:
    """Run ``top``; Ctrl-C quits with status 0."""
    from ._top import run_top

    token = args.token or os.environ.get(TOKEN_ENV) or None
    try:
        return trio.run(partial(run_top, args.url, token=token, once=args.once))
    except KeyboardInterrupt:
        return 0
    except BaseExceptionGroup as group:  # Ctrl-C while the view's nursery runs
        _, rest = group.split(KeyboardInterrupt)
        if rest is None:
            return 0
        raise


def _load_metrics(
    sup: Supervisor, out: TextIO, cluster: Cluster | None = None
) -> OperatorMetrics | None:
    try:
        from ._metrics import OperatorMetrics
    except ImportError:
        print(
            "prometheus-client is not installed: /metrics is off "
            "(install the [metrics] extra, or: pip install prometheus-client)",
            file=out,
            flush=True,
        )
        return None
    return OperatorMetrics(sup, cluster=cluster)


class Operations:
    """Logging, metrics, the admin endpoint and the live view beside one served supervisor.

    `configure` (before the supervisor opens) sets up logging and checks the options;
    `start` (inside the supervisor's block) starts the tasks; `drained` (after
    `Supervisor.shutdown`) lets the admin endpoint deliver the last events, then stop.
    With a ``cluster``, `bind_cluster` (once the MCP port is bound) sets the node's address.
    """

    def __init__(
        self,
        args: argparse.Namespace,
        out: TextIO,
        *,
        token_verifier: Any = None,
        cluster: Cluster | None = None,
    ) -> None:
        self.args = args
        self.out = out
        self.token_verifier = token_verifier
        self.cluster = cluster
        #: What peers forward to (set by `bind_cluster`).
        self.advertised: str | None = None
        self.metrics: OperatorMetrics | None = None
        self.admin_url: str | None = None
        self._drained = trio.Event()
        self._admin_done = trio.Event()
        self.token: str | None = getattr(args, "admin_token", None) or os.environ.get(TOKEN_ENV)

    def configure(self) -> None:
        """Set up logging; raises `ValueError` for inconsistent options."""
        args = self.args
        configure_logging(args.log_level, args.log_format)
        if args.admin_port is not None:
            from ._admin import is_loopback

            if not is_loopback(args.admin_host) and not self.token:
                raise ValueError(
                    f"the admin endpoint on {args.admin_host} (not loopback) needs a token: "
                    f"pass --admin-token or set {TOKEN_ENV}"
                )
        if args.top and args.stdio:
            raise ValueError("--top draws on stdout, which --stdio uses for the protocol")
        if self.cluster is not None and args.stdio:
            raise ValueError("cluster mode is HTTP only: --cluster cannot serve --stdio")

    async def start(self, sup: Supervisor, nursery: trio.Nursery) -> None:
        """Start the subscribers and the admin endpoint (printing its URL)."""
        args = self.args
        nursery.start_soon(log_events, sup)
        if args.admin_port is None:
            return
        from ._admin import serve_admin

        self.metrics = _load_metrics(sup, self.out, self.cluster)
        if self.metrics is not None:
            nursery.start_soon(self.metrics.run)

        async def admin(task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
            try:
                await serve_admin(
                    sup,
                    self.metrics,
                    host=args.admin_host,
                    port=args.admin_port,
                    token=self.token,
                    shutdown_trigger=self._drained.wait,
                    task_status=task_status,
                    cluster=self.cluster,
                )
            finally:
                self._admin_done.set()

        self.admin_url = await nursery.start(admin)

    def bind_cluster(self, url: str) -> None:
        """Once the MCP endpoint ``url`` is bound: tell the cluster where peers reach this node
        (``--advertise``, else ``http://<bind host>:<bound port>``)."""
        if self.cluster is None:
            return
        advertised = getattr(self.args, "advertise", None)
        if not advertised:
            bound = urlsplit(url)
            host = str(self.args.host)
            host = f"[{host}]" if ":" in host else host
            advertised = f"{bound.scheme or 'http'}://{host}:{bound.port}"
        self.advertised = advertised.rstrip("/")
        self.cluster.set_address(self.advertised)

    def announce(self, url: str) -> None:
        """After the MCP URL: the cluster node, where the admin endpoint is, how to try the
        server, how to stop."""
        lines = []
        if self.cluster is not None:
            from ..cluster._store import redact  # loaded already: this node is clustered

            lines.append(
                f"cluster node {self.cluster.node_id} in {redact(self.args.cluster)}, "
                f"reached by peers at {self.advertised}"
            )
        if self.admin_url is not None:
            lines.append(f"admin endpoint on {self.admin_url}")
            if self.metrics is not None:
                lines.append(f"  metrics:   {self.admin_url}/metrics")
            lines.append(f"  live view: python -m supervisor top --url {self.admin_url}")
        if not self.args.top:
            lines.append(
                "try it: npx @modelcontextprotocol/inspector (transport Streamable HTTP, URL "
                f"{url}), or the official Python client (README.md); Ctrl-C stops"
            )
        for line in lines:
            print(line, file=self.out, flush=True)

    def start_live_view(self, sup: Supervisor, nursery: trio.Nursery, source: str) -> None:
        """With ``--top``: draw the live view on this terminal, fed in process."""
        if not self.args.top:
            return
        from rich.console import Console

        from ._feed import Frame, run_feed
        from ._top import TopView, poll_cluster_view

        view = TopView(source, Console(file=sys.stdout))

        async def emit(frames: list[Frame]) -> None:
            view.push(frames)

        nursery.start_soon(view.show)
        nursery.start_soon(partial(run_feed, sup, emit))
        if self.cluster is not None:
            nursery.start_soon(poll_cluster_view, self.cluster, view)

    async def serve_http(
        self,
        sup: Supervisor,
        server: ServerSource,
        stop: trio.Event,
        task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """The MCP front end, its requests timed when metrics are on.

        Who may connect comes from ``--allowed-hosts``, ``--allowed-origins`` (``None``: the
        app's loopback defaults) and the token verifier given to `Operations`.
        """
        args = self.args
        options: dict[str, Any] = {
            "host": args.host,
            "port": args.port,
            "path": args.path,
            "shutdown_trigger": stop.wait,
            "task_status": task_status,
            "allowed_hosts": getattr(args, "allowed_hosts", None),
            "allowed_origins": getattr(args, "allowed_origins", None),
            "token_verifier": self.token_verifier,
        }
        cluster, metrics = self.cluster, self.metrics
        if cluster is not None or metrics is not None:

            def wrap(app: Any) -> Any:
                # Forwarding sees the MCP app itself; timing sees forwarded requests too.
                if cluster is not None:
                    app = cluster.forwarding(app, path=args.path)
                return app if metrics is None else metrics.timed(app)

            options["wrap"] = wrap
        from ..mcp import serve_http

        await serve_http(sup, server, **options)

    async def drained(self) -> None:
        """After shutdown: let the admin endpoint send its last frames and stop (1 s at most)."""
        self._drained.set()
        if self.admin_url is not None:
            with trio.move_on_after(1.0):
                await self._admin_done.wait()
