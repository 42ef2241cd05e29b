"""``python -m supervisor``: the command line (``serve``, ``top``).

``serve`` runs an MCP server on a supervisor: Streamable HTTP (and WebSocket) with hypercorn's
trio worker, or one session over stdio with ``--stdio``. The first SIGINT/SIGTERM shuts down
gracefully (the supervisor closes every session and gives requests in flight the grace period,
the HTTP server stops listening); a second one cancels whatever is left at once. Either way the
process prints a one-line summary of the totals and exits 0. Should something ignore the
cancellation, the process exits with status 1 `FORCE_EXIT_AFTER` seconds after the second
signal.

Who may connect: loopback by default. ``--allowed-hosts``/``--allowed-origins`` open it to named
hosts, ``--auth-token-file``/``--auth`` require bearer tokens, and a bind that is not loopback
is refused without authentication unless ``--allow-unauthenticated`` (see ``_ops._auth``).

Cluster mode (``--cluster redis://HOST:PORT/DB``; also ``rediss://``, ``valkey://``,
``valkeys://``; needs the ``[cluster]`` extra): the node joins the cluster before it serves and
leaves it after its last session; requests for a session another node owns are forwarded to
that node's ``--advertise`` address (default ``http://<--host>:<bound port>``, which a wildcard
``--host`` cannot give). HTTP only.

Durable sessions (``--store``): ``sqlite:///PATH`` keeps them in one SQLite file (the embedded
store, `supervisor.durable.SqliteStore`), so a restarted server, even after ``kill -9``, serves
them again under the same ids; in cluster mode the cluster's Redis is the store by default
(``Cluster.store``), so a dead node's sessions are activated again on the node that gets their
next request. ``--store none`` turns durability off. ``--retention``, ``--max-restarts``,
``--restart-window`` and ``--passivate-at-capacity`` set the `SupervisorConfig` fields of the
same names.

``top`` draws a live view of a server started with ``--admin-port``. The operator options of
``serve`` (admin endpoint with Prometheus metrics, ``--log-level``, ``--log-format``, ``--top``)
and the ``top`` command are implemented in ``supervisor._ops``.
"""

from __future__ import annotations

import argparse
import importlib
import ipaddress
import os
import signal
import stat
import sys
import threading
import traceback
from collections.abc import Sequence
from functools import partial
from typing import TYPE_CHECKING, Any, TextIO
from urllib.parse import urlsplit

import attrs
import trio

if TYPE_CHECKING:
    from . import SessionStore, Supervisor
    from ._ops._run import Operations
    from .cluster import Cluster
    from .mcp import ServerSource

__all__ = [
    "CLUSTER_SCHEMES",
    "DEFAULT_INIT_TIMEOUT",
    "FORCE_EXIT_AFTER",
    "SQLITE_PREFIX",
    "StoreSpec",
    "build_parser",
    "check_cluster_options",
    "check_store_options",
    "durable_config",
    "load_app",
    "main",
    "make_store",
    "store_url",
]

#: The URL schemes ``--cluster`` accepts (Redis and Valkey, plain or TLS).
CLUSTER_SCHEMES = ("redis", "rediss", "valkey", "valkeys")

#: What to install for cluster mode.
CLUSTER_EXTRA = "pip install 'trio-session-supervisor[cluster]'"

#: ``serve``'s default ``--init-timeout`` (seconds). Finishing the MCP handshake takes an honest
#: client two requests and well under a second; a client that opens a session and never
#: finishes it would otherwise hold a capacity slot for the whole ``--idle-timeout`` (30 min),
#: so a hundred of them could lock everyone out for half an hour. 30 s leaves slow links and
#: debugging clients ample room. (The library's `SupervisorConfig` keeps no limit by default.)
DEFAULT_INIT_TIMEOUT = 30.0

#: Seconds after the second signal before ``serve`` exits with status 1 even though something
#: has not finished cancelling (a task that shields itself, a blocking call in a thread).
FORCE_EXIT_AFTER = 3.0


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text!r}")
    return value


def _timeout_or_none(text: str) -> float | None:
    if text.strip().lower() in ("none", "off"):
        return None
    return _positive_float(text)


def _patterns(text: str) -> list[str]:
    """One ``--allowed-hosts``/``--allowed-origins`` value: comma-separated patterns."""
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise argparse.ArgumentTypeError(f"expected comma-separated patterns, got {text!r}")
    return items


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text!r}")
    return value


def _cluster_url(text: str) -> str:
    """One ``--cluster`` value: a Redis/Valkey URL with a host."""
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a valid URL: {text!r} ({exc})") from None
    if parts.scheme.lower() not in CLUSTER_SCHEMES or not parts.hostname:
        schemes = ", ".join(f"{scheme}://" for scheme in CLUSTER_SCHEMES)
        raise argparse.ArgumentTypeError(
            f"expected {schemes} followed by HOST[:PORT][/DB], got {text!r}"
        )
    return text


#: ``--store`` for the embedded store: ``sqlite:///`` then the path, as SQLAlchemy spells it
#: (``sqlite:///sessions.db`` is relative to the working directory, ``sqlite:////var/s.db``
#: absolute: the path is everything after the third slash).
SQLITE_PREFIX = "sqlite:///"


@attrs.frozen
class StoreSpec:
    """One ``--store`` value, parsed.

    Attributes:
        kind: ``"sqlite"`` (the embedded store), ``"redis"`` (the cluster's store) or
            ``"none"`` (no store, not even the cluster's).
        target: the SQLite file's path, or the Redis/Valkey URL; ``""`` for ``"none"``.
    """

    kind: str
    target: str = ""

    def describe(self) -> str:
        """For the startup line: the store and where it is, any password redacted."""
        if self.kind == "sqlite":
            return f"SQLite file {os.path.abspath(self.target)}"
        if self.kind == "redis":
            return f"the cluster's Redis at {_redact(self.target)}"
        return "none"


def _redact(url: str) -> str:
    """``url`` with any password as ``***`` (the cluster layer's redactor; it needs no
    coredis)."""
    from .cluster._store import redact

    return redact(url)


def store_url(text: str) -> StoreSpec:
    """One ``--store`` value: ``sqlite:///PATH``, a Redis/Valkey URL, or ``none``."""
    if text.strip().lower() == "none":
        return StoreSpec("none")
    scheme, sep, _ = text.partition("://")
    scheme = scheme.lower()
    if sep and scheme == "sqlite":
        if text[: len(SQLITE_PREFIX)].lower() != SQLITE_PREFIX:
            raise argparse.ArgumentTypeError(
                f"expected sqlite:///PATH (three slashes; sqlite:////abs/path for an absolute "
                f"path), got {text!r}"
            )
        path = text[len(SQLITE_PREFIX) :]
        if not path or path.endswith("/"):
            raise argparse.ArgumentTypeError(
                f"{text!r} names no file: sqlite:///PATH, e.g. sqlite:///sessions.db or "
                "sqlite:////var/lib/mcp/sessions.db"
            )
        if path == ":memory:" or "?" in path:
            raise argparse.ArgumentTypeError(
                f"{text!r}: give the path of a file (no :memory:, no ?options)"
            )
        return StoreSpec("sqlite", path)
    if sep and scheme in CLUSTER_SCHEMES:
        try:
            return StoreSpec("redis", _cluster_url(text))
        except argparse.ArgumentTypeError:
            raise argparse.ArgumentTypeError(
                f"expected {scheme}://HOST[:PORT][/DB] (the cluster's store), got {_redact(text)!r}"
            ) from None
    schemes = ", ".join(f"{s}://" for s in CLUSTER_SCHEMES)
    raise argparse.ArgumentTypeError(
        f"expected sqlite:///PATH (the embedded store), {schemes} (the cluster's store, with "
        f"--cluster) or none, got {_redact(text)!r}"
    )


def _is_wildcard(host: str) -> bool:
    """Whether ``host`` binds every address (``0.0.0.0``, ``::``, empty)."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_unspecified
    except ValueError:
        return not host.strip("[]")


def _advertise_url(text: str) -> str:
    """One ``--advertise`` value: ``http(s)://HOST:PORT`` that peers can reach."""
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a valid URL: {text!r} ({exc})") from None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise argparse.ArgumentTypeError(f"expected http://HOST:PORT or https://..., got {text!r}")
    if _is_wildcard(parts.hostname):
        raise argparse.ArgumentTypeError(
            f"{text!r} names no address peers can reach: give this node's own host name or IP"
        )
    return text.rstrip("/")


def check_cluster_options(args: argparse.Namespace) -> None:
    """Refuse cluster options that cannot work, before anything binds.

    Raises:
        ValueError: cluster options without ``--cluster``, ``--cluster`` with ``--stdio``,
            a wildcard ``--host`` without ``--advertise``, ``--lease-check`` not shorter than
            ``--node-lease``, or the ``[cluster]`` extra (coredis) is not installed.
    """
    if getattr(args, "cluster", None) is None:
        if getattr(args, "advertise", None) is not None:
            raise ValueError("--advertise is for cluster mode: it needs --cluster")
        return
    if args.stdio:
        raise ValueError("cluster mode is HTTP only: --cluster cannot serve --stdio")
    if args.advertise is None and _is_wildcard(args.host):
        raise ValueError(
            f"--host {args.host or repr('')} binds every address, so peers cannot be told which "
            "one reaches this node: pass --advertise http://HOST:PORT"
        )
    if not args.lease_check < args.node_lease:
        raise ValueError(
            f"--lease-check ({args.lease_check:g} s) must be shorter than --node-lease "
            f"({args.node_lease:g} s): the lease is renewed every --lease-check"
        )
    try:
        import coredis  # noqa: F401
    except ImportError:
        raise ValueError(f"cluster mode needs coredis: {CLUSTER_EXTRA}") from None


def check_store_options(args: argparse.Namespace) -> list[str]:
    """Refuse ``--store`` values that cannot work, before anything binds; return warnings.

    Raises:
        ValueError: a Redis/Valkey ``--store`` without ``--cluster``, or one that is not the
            ``--cluster`` URL (the Redis store is the cluster's own connection).
    """
    spec: StoreSpec | None = getattr(args, "store", None)
    cluster = getattr(args, "cluster", None)
    if spec is not None and spec.kind == "redis":
        if cluster is None:
            raise ValueError(
                "--store redis://... is the cluster's store: it needs --cluster (for one "
                "server without Redis, use the embedded store: --store sqlite:///PATH)"
            )
        if spec.target != cluster:
            raise ValueError(
                f"--store {_redact(spec.target)} is not the --cluster URL "
                f"{_redact(cluster)}: the Redis store is the cluster's own connection (leave "
                "--store out to use it)"
            )
    if spec is not None and spec.kind == "sqlite":
        folder = os.path.dirname(os.path.abspath(spec.target))
        if not os.path.isdir(folder):
            raise ValueError(f"--store: the directory {folder} does not exist")
    if store_kind(args) != "none":
        return []
    durable = [
        flag
        for flag, name in (
            ("--retention", "retention"),
            ("--max-restarts", "max_restarts"),
            ("--restart-window", "restart_window"),
            ("--passivate-at-capacity", "passivate_at_capacity"),
        )
        if getattr(args, name, None) not in (None, False)
    ]
    if not durable:
        return []
    return [f"{', '.join(durable)}: no effect without a store (--store or --cluster)"]


def store_kind(args: argparse.Namespace) -> str:
    """The store ``serve`` uses: ``"sqlite"``, ``"redis"`` (given, or by default with
    ``--cluster``) or ``"none"``."""
    spec: StoreSpec | None = getattr(args, "store", None)
    if spec is not None:
        return spec.kind
    return "redis" if getattr(args, "cluster", None) is not None else "none"


def make_store(args: argparse.Namespace, cluster: Cluster | None) -> SessionStore | None:
    """The `SessionStore` that ``--store`` (or ``--cluster`` without it) asks for."""
    kind = store_kind(args)
    if kind == "sqlite":
        from .durable import SqliteStore

        spec: StoreSpec = args.store
        return SqliteStore(spec.target)
    if kind == "redis" and cluster is not None:
        return cluster.store
    return None


def describe_store(args: argparse.Namespace) -> str | None:
    """The startup line naming the store (``None``: no store)."""
    kind = store_kind(args)
    if kind == "none":
        return None
    spec: StoreSpec = args.store if args.store is not None else StoreSpec("redis", args.cluster)
    return f"durable sessions in {spec.describe()}"


def _add_store_options(serve: argparse.ArgumentParser) -> None:
    durable = serve.add_argument_group(
        "durable sessions",
        "With a store, HTTP sessions and state handles keep their state (the demo's counter) "
        "across idle timeouts, crashes of their actor and restarts of the server: an idle "
        "session is passivated (its slot freed, its state kept for --retention) and its next "
        "request activates it again under the same id. See docs/durability.md.",
    )
    durable.add_argument(
        "--store",
        type=store_url,
        default=None,
        metavar="URL",
        help="where durable sessions are kept: sqlite:///PATH, the embedded store (one SQLite "
        "file, no server; sqlite:///s.db is relative to the working directory, "
        "sqlite:////var/lib/s.db absolute), or the --cluster URL (redis://, rediss://, "
        "valkey://, valkeys://); 'none' for no store. Default: the cluster's Redis with "
        "--cluster, else none",
    )
    durable.add_argument(
        "--retention",
        type=_positive_float,
        default=None,
        metavar="SECONDS",
        help="how long a passivated session is kept before it expires for good (default 86400)",
    )
    durable.add_argument(
        "--max-restarts",
        type=_non_negative_int,
        default=None,
        metavar="N",
        help="a session whose actor raises is restarted from its last saved state at most N "
        "times within --restart-window, then fails; 0: never (default 3)",
    )
    durable.add_argument(
        "--restart-window",
        type=_positive_float,
        default=None,
        metavar="SECONDS",
        help="the window of --max-restarts (default 5)",
    )
    durable.add_argument(
        "--passivate-at-capacity",
        action="store_true",
        default=None,
        help="at --max-sessions, passivate the least recently used idle durable session to "
        "admit a new one instead of refusing it",
    )


def durable_config(args: argparse.Namespace) -> dict[str, Any]:
    """The durable `SupervisorConfig` keywords ``serve``'s options set (the rest keep the
    library's defaults)."""
    names = ("retention", "max_restarts", "restart_window", "passivate_at_capacity")
    return {name: value for name in names if (value := getattr(args, name, None)) is not None}


def _add_cluster_options(serve: argparse.ArgumentParser) -> None:
    cluster = serve.add_argument_group(
        "cluster mode",
        "Several serve processes share one set of sessions through Redis or Valkey (needs "
        f"{CLUSTER_EXTRA}; HTTP only). A request reaching a node that does not own its "
        "session is forwarded to the owner.",
    )
    cluster.add_argument(
        "--cluster",
        type=_cluster_url,
        default=None,
        metavar="URL",
        help="join the cluster whose store is at URL: redis://HOST:PORT/DB, rediss:// (TLS), "
        "valkey:// or valkeys://; a password goes in the URL (redis://:PASSWORD@HOST)",
    )
    cluster.add_argument(
        "--advertise",
        type=_advertise_url,
        default=None,
        metavar="URL",
        help="where the other nodes reach this one, http://HOST:PORT (default: --host and the "
        "bound port; required when --host is a wildcard such as 0.0.0.0)",
    )
    cluster.add_argument(
        "--node-lease",
        type=_positive_float,
        default=3.0,
        metavar="SECONDS",
        help="how long this node stays in the cluster without renewing its lease; a node that "
        "cannot renew in time fences itself (default 3)",
    )
    cluster.add_argument(
        "--lease-check",
        type=_positive_float,
        default=1.0,
        metavar="SECONDS",
        help="how often the lease is renewed and lapsed nodes are reaped (default 1)",
    )


def make_cluster(args: argparse.Namespace) -> Cluster | None:
    """The `supervisor.cluster.Cluster` that ``--cluster`` asks for (``None`` without it)."""
    if getattr(args, "cluster", None) is None:
        return None
    from .cluster import Cluster

    return Cluster(
        args.cluster,
        advertise=args.advertise,
        lease=args.node_lease,
        check_every=args.lease_check,
    )


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
        epilog="SIGINT or SIGTERM stops gracefully (requests in flight get the 5 s grace "
        "period); a second one cancels what is left at once. Either way the process prints a "
        "summary and exits 0 (1 if the stop was not clean). See docs/operations.md.",
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
        type=_timeout_or_none,
        default=DEFAULT_INIT_TIMEOUT,
        metavar="SECONDS",
        help="seconds a new session may take to finish the MCP handshake before it is closed, "
        f"or 'none' (default {DEFAULT_INIT_TIMEOUT:g}: a client that never finishes it would "
        "otherwise hold a slot for the whole --idle-timeout)",
    )
    serve.add_argument(
        "--max-lifetime",
        type=_timeout_or_none,
        default=None,
        metavar="SECONDS",
        help="seconds after which a session is closed whatever its activity (default: none)",
    )
    serve.add_argument(
        "--max-sessions-per-principal",
        type=_positive_int,
        default=None,
        metavar="N",
        help="sessions one authenticated principal may hold at once; more get 503 (default: "
        "no limit; without --auth-token-file or --auth it limits nothing)",
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
    access = serve.add_argument_group(
        "who may connect",
        "Loopback only by default. A --host that is not loopback needs --auth-token-file or "
        "--auth (or --allow-unauthenticated) and, for clients to get past 403, --allowed-hosts.",
    )
    access.add_argument(
        "--allowed-hosts",
        type=_patterns,
        action="extend",
        default=None,
        metavar="HOSTS",
        help="Host header values accepted, comma-separated or repeated; 'name:*' is any port, "
        "'*' anything (default: loopback names). Replaces the default: add 127.0.0.1:* to "
        "keep local clients. Others get 403",
    )
    access.add_argument(
        "--allowed-origins",
        type=_patterns,
        action="extend",
        default=None,
        metavar="ORIGINS",
        help="Origin header values accepted (browsers send one), same patterns (default: "
        "loopback origins; a request without Origin is accepted). Others get 403",
    )
    auth = access.add_mutually_exclusive_group()
    auth.add_argument(
        "--auth-token-file",
        default=None,
        metavar="PATH",
        help="require a bearer token listed in PATH: one a line, optionally 'TOKEN PRINCIPAL'; "
        "blank lines and # comments ignored. Others get 401",
    )
    auth.add_argument(
        "--auth",
        default=None,
        metavar="MODULE:ATTR",
        help="require a bearer token accepted by this verifier: async (token) -> principal "
        "or None, or an SDK TokenVerifier. Others get 401",
    )
    access.add_argument(
        "--allow-unauthenticated",
        action="store_true",
        help="serve a --host that is not loopback without authentication (anyone who can "
        "reach it may use it)",
    )
    _add_cluster_options(serve)
    _add_store_options(serve)
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


def supervisor_config(args: argparse.Namespace) -> dict[str, Any]:
    """The `SupervisorConfig` keywords ``serve``'s options ask for."""
    return {
        "max_sessions": args.max_sessions,
        "idle_timeout": args.idle_timeout,
        "init_timeout": args.init_timeout,
        "max_lifetime": args.max_lifetime,
        "max_sessions_per_principal": args.max_sessions_per_principal,
    }


def _summary(sup: Supervisor) -> str:
    stats = sup.statistics()
    text = (
        f"supervisor stopped: {stats.created_total} sessions created, "
        f"{stats.closed_total} closed, {stats.expired_total} expired, "
        f"{stats.failed_total} failed, {stats.rejected_total} rejected"
    )
    if sup.store is not None:
        text += (
            f"; durable: {stats.passivated_total} passivated, {stats.activated_total} "
            f"activated, {stats.restarted_total} restarted"
        )
    return text


class _Signals:
    """The first signal asks for a graceful stop, the second cancels everything at once."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.stop = trio.Event()
        self.everything = trio.CancelScope()
        self._timer: threading.Timer | None = None

    async def watch(self, signals: Any) -> None:
        async for signum in signals:
            name = signal.Signals(signum).name
            if not self.stop.is_set():
                print(f"received {name}, shutting down", file=self.out, flush=True)
                self.stop.set()
            elif not self.everything.cancel_called:
                print(f"received {name} again, cancelling what is left", file=self.out, flush=True)
                self._arm_force_exit()
                self.everything.cancel()

    def _arm_force_exit(self) -> None:
        out = self.out

        def force_exit() -> None:
            print(
                f"error: still running {FORCE_EXIT_AFTER:g} s after the second signal "
                "(something ignores cancellation); exiting now",
                file=out,
                flush=True,
            )
            os._exit(1)

        self._timer = threading.Timer(FORCE_EXIT_AFTER, force_exit)
        self._timer.daemon = True
        self._timer.start()

    def disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()


async def _serve(args: argparse.Namespace, verifier: Any = None) -> int:
    from . import open_supervisor
    from .mcp import create_demo_server

    server: ServerSource = load_app(args.app) if args.app else create_demo_server()
    # With --stdio, stdout carries the protocol: talk to the operator on stderr.
    out = sys.stderr if args.stdio else sys.stdout
    from ._ops._run import Operations

    cluster = make_cluster(args)
    store = make_store(args, cluster)
    ops = Operations(args, out, token_verifier=verifier, cluster=cluster)
    ops.configure()
    control = _Signals(out)
    status = 0
    sup: Supervisor | None = None
    try:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            try:
                # The second signal cancels this scope: the supervisor's block is left with
                # Cancelled, which cancels every session at once (each still gets its
                # terminal event) instead of waiting out the grace period.
                with control.everything:
                    async with open_supervisor(
                        cluster=cluster,
                        store=store,
                        **supervisor_config(args),
                        **durable_config(args),
                    ) as sup:
                        described = describe_store(args)
                        if described is not None:
                            print(described, file=out, flush=True)
                        async with trio.open_nursery() as nursery:
                            nursery.start_soon(control.watch, signals)
                            await ops.start(sup, nursery)
                            if args.stdio:
                                await _serve_stdio(sup, server, control.stop, ops)
                            else:
                                await _serve_http(sup, server, control.stop, ops, nursery)
                            nursery.cancel_scope.cancel()
            except Exception as exc:
                if not control.everything.cancel_called:
                    raise
                # Cancelling at once, something raised on its way out: say so, still stop.
                print("error while cancelling:", file=sys.stderr)
                traceback.print_exception(exc, file=sys.stderr)
                status = 1
            if sup is not None:
                print(_summary(sup), file=out, flush=True)
    finally:
        control.disarm()
    return status


def _stdin_stream() -> trio.abc.ReceiveStream | None:
    """Stdin as a trio stream when it is a pipe or a socket (what an MCP client gives us).

    Read through trio's I/O loop, a stop while the client still holds stdin open leaves no
    thread blocked in ``read()``: such a thread makes the interpreter abort at exit (SIGABRT,
    "could not acquire lock for <stdin>"). Anything else (a file, a terminal) is read the
    default way, in a thread.
    """
    try:
        mode = os.fstat(sys.stdin.fileno()).st_mode
    except (AttributeError, OSError, ValueError):
        return None
    if not (stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)):
        return None
    return trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))


async def _serve_stdio(
    sup: Supervisor, server: ServerSource, stop: trio.Event, ops: Operations
) -> None:
    from .mcp import serve_stdio

    print("serving MCP over stdio", file=ops.out, flush=True)
    stdin = _stdin_stream()
    async with trio.open_nursery() as inner:

        async def run_stdio() -> None:
            try:
                await serve_stdio(server, supervisor=sup, stdin=stdin)
            finally:
                if stdin is not None:
                    await stdin.aclose()
            stop.set()

        inner.start_soon(run_stdio)
        await stop.wait()
        await sup.shutdown()
        await ops.drained()


async def _serve_http(
    sup: Supervisor,
    server: ServerSource,
    stop: trio.Event,
    ops: Operations,
    nursery: trio.Nursery,
) -> None:
    async with trio.open_nursery() as http:
        url = await http.start(partial(ops.serve_http, sup, server, stop))
        ops.bind_cluster(url)
        print(f"serving MCP on {url}", file=ops.out, flush=True)
        ops.announce(url)
        ops.start_live_view(sup, nursery, url)
        await stop.wait()
        # Concurrently with hypercorn's graceful stop: open GET streams end with their
        # sessions, so hypercorn's connections can drain.
        await sup.shutdown()
        await ops.drained()


def _first_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException:
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = build_parser().parse_args(argv)
    if args.command == "top":
        from ._ops._run import top_main

        return top_main(args)
    if args.command == "serve":
        from ._ops._auth import check_exposure, verifier_from_args

        try:
            # Before anything binds: a public bind without authentication never listens.
            warnings = check_exposure(args)
            check_cluster_options(args)
            warnings += check_store_options(args)
            verifier = verifier_from_args(args)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        for warning in warnings:
            print(f"warning: {warning}", file=sys.stderr, flush=True)
        from . import CapacityError, StoreError

        try:
            return trio.run(_serve, args, verifier)
        except (ValueError, ImportError, AttributeError, OSError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        except (CapacityError, StoreError) as exc:
            # ClusterUnavailable: the store did not answer the join; StoreError: the durable
            # store could not be opened (say, another process has the SQLite file).
            print(f"error: {exc}", file=sys.stderr)
            return 1
        except BaseExceptionGroup as group:  # the same, raised inside the supervisor's nursery
            unavailable, rest = group.split((CapacityError, StoreError))
            if unavailable is None or rest is not None:
                raise
            print(f"error: {_first_leaf(unavailable)}", file=sys.stderr)
            return 1
    return 2  # pragma: no cover - argparse rejects unknown commands
