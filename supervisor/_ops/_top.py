"""``top``: a live view of a supervisor, drawn with rich from the frames of `_feed`.

`TopModel` holds what the frames said; `render` draws it (pure: a model and a time in, a rich
renderable out, so tests render it to text); `TopView` redraws on frame arrival, coalescing
bursts; `run_top` reads the admin endpoint's ``/events`` stream. Nothing polls the sessions:
the view changes when a frame arrives (events, the snapshot after a burst, or the server's
heartbeat).

A server with a durable store adds its durable counters to the totals (``passivated``,
``activated``, ``restarted``, ``retained``); a passivated session leaves the live table as an
ended one does, an activated one joins it as a created one does, and the event list shows
``passivated`` (with its reason), ``activated`` and ``restarted`` (with the actor's error).

In cluster mode the view has a cluster panel (this node's id and state, the nodes with their
sessions, held slots and lease left, the newest cluster events). The cluster is not in the
event stream: `run_top` polls the admin endpoint's ``/cluster`` about every second
(`CLUSTER_EVERY`, each request bounded by `CLUSTER_TIMEOUT`; a 404 there means no cluster and
no panel, any other failure shows ``cluster: unavailable`` until the next answer), and
``serve --top`` reads the node's cluster the same way in process (`poll_cluster_view`).
"""

from __future__ import annotations

import json
import math
import time
from collections import deque
from functools import partial
from typing import TYPE_CHECKING, Any

import trio
from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

from ._feed import Frame, cluster_frame, read_cluster

if TYPE_CHECKING:
    import httpx

    from ._feed import ClusterSource

__all__ = [
    "CLUSTER_EVERY",
    "CLUSTER_TIMEOUT",
    "TopModel",
    "TopView",
    "era_cell",
    "format_duration",
    "poll_cluster_view",
    "render",
    "run_top",
]

#: Seconds between two reads of the cluster.
CLUSTER_EVERY = 1.0
#: Most seconds one read of the cluster may take before the panel says it is unavailable.
CLUSTER_TIMEOUT = 2.0
#: Cluster events shown in the panel.
CLUSTER_EVENTS = 5

_NODE_STATE_STYLE = {
    "joining": "yellow",
    "ready": "green",
    "unavailable": "red",
    "fenced": "bold red",
}

_STATE_STYLE = {
    "created": "cyan",
    "initializing": "yellow",
    "ready": "green",
    "closing": "magenta",
    "closed": "dim",
    "error": "red",
}
_KIND_STYLE = {
    "created": "cyan",
    "initialized": "green",
    "authenticated": "blue",
    "state-changed": "dim",
    "closed": "white",
    "expired": "yellow",
    "failed": "bold red",
    "passivated": "blue",
    "activated": "cyan",
    "restarted": "bold yellow",
}
#: The durable counters of the summary (`Supervisor.statistics`' ``*_total`` and ``retained``).
_DURABLE = ("passivated", "activated", "restarted", "retained")
_LIVE_STATES = ("created", "initializing", "ready", "closing")
_TRANSPORTS = ("http", "websocket", "stdio", "in-process")


def era_cell(row: dict[str, Any]) -> Text:
    """The era column: ``handle`` for a state handle, else the negotiated protocol version as
    ``YYYY-MM`` (``2025-11``; ``2026-07`` for a 2026-07-28 connection that is not a handle),
    ``-`` before one is negotiated."""
    if row.get("state_handle"):
        return Text("handle", style="blue")
    era = row.get("era")
    if not isinstance(era, str) or era in ("", "handshake"):
        return Text("-")
    return Text(era[:7])


def format_duration(seconds: float | None) -> str:
    """``0.4s``, ``12s``, ``3m05s``, ``2h07m``, ``3d04h``; ``-`` for ``None``."""
    if seconds is None or math.isinf(seconds):
        return "-"
    seconds = max(0.0, seconds)
    if seconds < 10:
        return f"{seconds:.1f}s"
    whole = int(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d{whole % 86400 // 3600:02d}h"


class TopModel:
    """What the frames said so far. `apply` takes frames in order; times are local monotonic."""

    def __init__(self, source: str, *, tail: int = 200) -> None:
        self.source = source
        self.stats: dict[str, Any] = {}
        self.rows: list[dict[str, Any]] = []
        self.more = 0
        self.rows_at = time.monotonic()
        self.events: deque[tuple[float, Frame]] = deque(maxlen=tail)
        self.missed = 0
        self.frames = 0
        self.closing = False
        #: Whether the server keeps durable sessions (it has a store).
        self.durable = False
        self.ended = False
        #: The last ``cluster`` frame (``None``: not in a cluster, or unavailable).
        self.cluster: Frame | None = None
        self.cluster_at = self.rows_at
        #: Why the cluster could not be read last time (``None``: it could, or never tried).
        self.cluster_error: str | None = None

    def apply(self, frame: Frame, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self.frames += 1
        kind = frame.get("type")
        if kind == "snapshot":
            self.stats = dict(frame.get("stats", {}))
            self.rows = list(frame.get("sessions", []))
            self.more = int(frame.get("more", 0))
            self.closing = bool(frame.get("closing", False))
            self.durable = bool(frame.get("durable", False))
            self.rows_at = now
        elif kind == "event":
            self.events.append((float(frame.get("wall", time.time())), frame))
            self._apply_event(frame, now)
        elif kind == "lagged":
            self.missed += int(frame.get("missed", 0))
        elif kind == "cluster":
            self.cluster = frame
            self.cluster_at = now
            self.cluster_error = None
        elif kind == "cluster-error":
            self.cluster = None
            self.cluster_error = str(frame.get("error", "")) or "no answer"

    def _apply_event(self, frame: Frame, now: float) -> None:
        # Rows follow events at once; counters and times catch up with the next snapshot.
        sid = frame.get("session")
        row = next((r for r in self.rows if r.get("id") == sid), None)
        # ``leaves``: terminal or passivated (frames of servers before durability lack it).
        if frame.get("leaves", frame.get("terminal")):
            if row is not None:
                self.rows.remove(row)
        elif frame.get("kind") in ("created", "activated") and row is None:
            elapsed = now - self.rows_at
            self.rows.insert(
                0,
                {
                    "id": sid,
                    "principal": frame.get("principal"),
                    "transport": frame.get("transport"),
                    "state": frame.get("state"),
                    "era": frame.get("era"),
                    "state_handle": bool(frame.get("state_handle")),
                    "age": -elapsed,
                    "idle": -elapsed,
                    "expires_in": None,
                    "in_flight": 0,
                    "messages": 0,
                },
            )
        elif row is not None:
            row["state"] = frame.get("new_state", frame.get("state", row.get("state")))
            if "era" in frame:  # the negotiated version comes with ``initialized``
                row["era"] = frame["era"]
                row["state_handle"] = bool(frame.get("state_handle"))


def _event_line(wall: float, frame: Frame) -> Text:
    kind = str(frame.get("kind", "?"))
    line = Text(time.strftime("%H:%M:%S", time.localtime(wall)) + " ", style="dim")
    line.append(f"{frame.get('session', '?'):<8} ", style="bold")
    line.append(f"{frame.get('transport', ''):<10} ")
    if kind == "state-changed":
        line.append(f"{frame.get('old_state')} -> {frame.get('new_state')}", style="dim")
    else:
        line.append(kind, style=_KIND_STYLE.get(kind, ""))
    if frame.get("reason"):
        line.append(f" ({frame['reason']})")
    if frame.get("error"):
        line.append(f" {frame['error']}", style="red")
    return line


def _cluster_panel(model: TopModel, now: float) -> tuple[list[RenderableType], int]:
    """The cluster panel and how many lines it takes (none outside cluster mode)."""
    if model.cluster_error is not None:
        line = Text.assemble(("cluster: unavailable", "bold red"), f" ({model.cluster_error})")
        return [line, Text("")], 2
    cluster = model.cluster
    if cluster is None:
        return [], 0
    elapsed = max(0.0, now - model.cluster_at)
    state = str(cluster.get("state", "?"))
    nodes: list[dict[str, Any]] = list(cluster.get("nodes", []))
    header = Text.assemble(
        ("cluster ", "bold"),
        "node ",
        (str(cluster.get("node", "?")), "bold"),
        " ",
        (state, _NODE_STATE_STYLE.get(state, "")),
        f"  {len(nodes)} nodes",
        f"  {cluster.get('sessions', 0)}/{cluster.get('max_sessions', '?')} sessions",
        f"  {cluster.get('held', 0)} slots held",
    )
    table = Table(box=None, header_style="bold underline", pad_edge=False)
    table.add_column("node", no_wrap=True)
    table.add_column("address", no_wrap=True, overflow="ellipsis", max_width=32)
    for name in ("sessions", "held", "lease"):
        table.add_column(name, justify="right", no_wrap=True)
    for node in nodes:
        lease = node.get("lease")
        left = (
            Text("lapsed", style="red")
            if lease is None
            else Text(format_duration(max(0.0, float(lease) - elapsed)))
        )
        mark = " *" if node.get("this") else ""
        table.add_row(
            Text(str(node.get("id", "?")) + mark, style="bold" if mark else ""),
            str(node.get("address", "")),
            str(node.get("sessions", 0)),
            str(node.get("held", 0)),
            left,
        )
    events: list[dict[str, Any]] = list(cluster.get("events", []))[-CLUSTER_EVENTS:]
    tail = Table(title="cluster events", title_justify="left", box=None, show_header=False)
    tail.add_column("event")
    for event in events:
        kind = str(event.get("kind", "?"))
        line = Text(
            time.strftime("%H:%M:%S", time.localtime(float(event.get("at", 0)))) + " ",
            style="dim",
        )
        line.append(f"{event.get('node', '?')} ")
        line.append(kind, style=_KIND_STYLE.get(kind, "yellow" if kind == "node-lost" else ""))
        if event.get("session"):
            line.append(f" {event['session']}", style="bold")
        if event.get("reason"):
            line.append(f" ({event['reason']})")
        tail.add_row(line)
    if not events:
        tail.add_row(Text("no cluster events yet", style="dim"))
    parts: list[RenderableType] = [header, table, tail, Text("")]
    return parts, 5 + len(nodes) + max(1, len(events))


def render(
    model: TopModel, now: float | None = None, *, height: int = 40, events: int = 8
) -> RenderableType:
    """The whole view for a terminal ``height`` lines high; ``now`` is local monotonic time."""
    now = time.monotonic() if now is None else now
    stats = model.stats
    dt = max(0.0, now - model.rows_at)

    status = "stopped" if model.ended else "draining" if model.closing else "live"
    header = Text.assemble(
        ("supervisor top ", "bold"),
        (model.source, "cyan"),
        "  ",
        (status, "green" if status == "live" else "yellow"),
        f"  {stats.get('total', 0)}/{stats.get('max_sessions', '?')} sessions",
        f"  {stats.get('waiting', 0)} waiting" if stats.get("waiting") else "",
    )

    by_state = Table(title="by state", title_justify="left", box=None, show_header=False)
    for state in _LIVE_STATES:
        count = stats.get("by_state", {}).get(state, 0)
        by_state.add_row(Text(state, style=_STATE_STYLE[state]), str(count))
    by_transport = Table(title="by transport", title_justify="left", box=None, show_header=False)
    for transport in _TRANSPORTS:
        by_transport.add_row(transport, str(stats.get("by_transport", {}).get(transport, 0)))
    by_kind = Table(title="by kind", title_justify="left", box=None, show_header=False)
    kinds = stats.get("by_kind", {})
    by_kind.add_row(Text("handles", style="blue"), str(kinds.get("handle", 0)))
    by_kind.add_row("protocol", str(kinds.get("protocol", 0)))
    totals = Table(title="totals", title_justify="left", box=None, show_header=False)
    for name in ("created", "closed", "expired", "failed", "rejected"):
        style = "red" if name in ("failed", "rejected") and stats.get(name) else ""
        totals.add_row(name, Text(str(stats.get(name, 0)), style=style))
    # A server with a store (or one that has passivated, activated or restarted sessions)
    # counts its durable sessions too.
    durable = model.durable or any(stats.get(name) for name in _DURABLE)
    if durable:
        for name in _DURABLE:
            style = "yellow" if name == "restarted" and stats.get(name) else ""
            totals.add_row(name, Text(str(stats.get(name, 0)), style=style))
    traffic = Table(title="traffic", title_justify="left", box=None, show_header=False)
    traffic.add_row("messages", str(stats.get("messages", 0)))
    traffic.add_row("calls", str(stats.get("calls", 0)))
    traffic.add_row("mailbox max", str(stats.get("mailbox_high_water", 0)))
    traffic.add_row("events dropped", str(stats.get("events_dropped", 0) + model.missed))
    summary = Table.grid(padding=(0, 4))
    summary.add_row(by_state, by_transport, by_kind, totals, traffic)

    cluster, cluster_lines = _cluster_panel(model, now)
    room = max(3, height - 12 - events - cluster_lines - (len(_DURABLE) if durable else 0))
    sessions = Table(
        title="live sessions (newest first)",
        title_justify="left",
        box=None,
        header_style="bold underline",
        pad_edge=False,
    )
    sessions.add_column("id", no_wrap=True, min_width=8)
    sessions.add_column("principal", no_wrap=True, overflow="ellipsis", max_width=12)
    sessions.add_column("transport", no_wrap=True)
    sessions.add_column("era", no_wrap=True)
    sessions.add_column("state", no_wrap=True)
    for name in ("age", "idle", "expires", "calls", "msgs"):
        sessions.add_column(name, justify="right", no_wrap=True)
    for row in model.rows[:room]:
        busy = int(row.get("in_flight") or 0) > 0
        expires = row.get("expires_in")
        state = str(row.get("state", "?"))
        sessions.add_row(
            row.get("id", "?"),
            row.get("principal") or "-",
            row.get("transport", "?"),
            era_cell(row),
            Text(state, style=_STATE_STYLE.get(state, "")),
            format_duration(float(row.get("age", 0)) + dt),
            "busy" if busy else format_duration(float(row.get("idle", 0)) + dt),
            format_duration(None if expires is None else float(expires) - dt),
            str(row.get("in_flight", 0)),
            str(row.get("messages", 0)),
        )
    hidden = len(model.rows) - min(len(model.rows), room) + model.more
    if hidden:
        sessions.caption = f"... and {hidden} more"
    if not model.rows:
        sessions.caption = "no live sessions"

    tail = Table(title="events", title_justify="left", box=None, show_header=False)
    tail.add_column("event")
    # State changes show in the table; the tail keeps the events that tell a story.
    recent = [item for item in model.events if item[1].get("kind") != "state-changed"]
    recent = recent[-events:]
    for wall, frame in recent:
        tail.add_row(_event_line(wall, frame))
    if not recent:
        tail.add_row(Text("waiting for lifecycle events...", style="dim"))
    return Group(header, Text(""), summary, Text(""), *cluster, sessions, tail)


class TopView:
    """Feeds frames to a `TopModel` and redraws a rich `Live` display when they arrive."""

    def __init__(self, source: str, console: Console, *, coalesce: float = 0.05) -> None:
        self.model = TopModel(source)
        self.console = console
        self.coalesce = coalesce
        self._dirty = trio.Event()

    def push(self, frames: list[Frame]) -> None:
        for frame in frames:
            self.model.apply(frame)
        self._dirty.set()

    def render(self) -> RenderableType:
        return render(self.model, height=self.console.size.height)

    async def show(self) -> None:
        """Redraw on every batch of frames (after ``coalesce`` seconds) until cancelled."""
        from rich.live import Live

        with Live(
            self.render(),
            console=self.console,
            auto_refresh=False,
            redirect_stdout=False,
            redirect_stderr=False,
        ) as live:
            try:
                while True:
                    await self._dirty.wait()
                    self._dirty = trio.Event()
                    await trio.sleep(self.coalesce)
                    live.update(self.render(), refresh=True)
            finally:
                live.update(self.render(), refresh=True)


async def poll_cluster_view(
    cluster: ClusterSource, view: TopView, *, every: float = CLUSTER_EVERY
) -> None:
    """Feed ``view`` a cluster frame read from ``cluster`` every ``every`` seconds, forever."""
    while True:
        read, error = await read_cluster(partial(cluster.view, events=CLUSTER_EVENTS))
        frame: Frame = (
            {"type": "cluster-error", "error": error} if read is None else cluster_frame(read)
        )
        view.push([frame])
        await trio.sleep(every)


async def _read_cluster(client: httpx.AsyncClient, base: str) -> Frame | None:
    """One ``GET /cluster``: a cluster frame, a cluster-error frame, or None (no cluster)."""
    import httpx

    try:
        with trio.fail_after(CLUSTER_TIMEOUT):
            response = await client.get(
                f"{base}/cluster", params={"events": CLUSTER_EVENTS}, timeout=CLUSTER_TIMEOUT
            )
    except (httpx.HTTPError, trio.TooSlowError) as exc:
        return {"type": "cluster-error", "error": str(exc) or type(exc).__name__}
    if response.status_code == 404:
        return None
    if response.status_code != 200:
        said = response.text.strip().partition("\n")[0][:160]
        error = f"/cluster answered {response.status_code}" + (f": {said}" if said else "")
        return {"type": "cluster-error", "error": error}
    try:
        frame = response.json()
    except ValueError:
        return {"type": "cluster-error", "error": "/cluster answered no JSON"}
    if not isinstance(frame, dict) or frame.get("type") != "cluster":
        return {"type": "cluster-error", "error": "/cluster answered no cluster"}
    return frame


async def _poll_cluster(
    client: httpx.AsyncClient, base: str, view: TopView, *, every: float = CLUSTER_EVERY
) -> None:
    """Push ``/cluster`` to ``view`` every ``every`` seconds; stop at a 404 (no cluster)."""
    while True:
        frame = await _read_cluster(client, base)
        if frame is None:
            return
        view.push([frame])
        await trio.sleep(every)


async def run_top(
    url: str,
    *,
    token: str | None = None,
    console: Console | None = None,
    once: bool = False,
    read_timeout: float = 15.0,
) -> int:
    """Show the supervisor behind the admin endpoint ``url`` until its stream ends.

    With ``once``, print the view of the first snapshot (and of ``/cluster``) and return.
    Returns an exit status: 0 when the stream ended (the server shut down) or ``once``
    printed, 1 on a connection or protocol error (explained on the console).
    """
    import httpx

    console = Console() if console is None else console
    base = url.rstrip("/")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    timeout = httpx.Timeout(5.0, read=read_timeout)
    view = TopView(base, console)
    try:
        async with (
            httpx.AsyncClient(timeout=timeout, headers=headers) as client,
            client.stream("GET", base + "/events") as response,
        ):
            if response.status_code != 200:
                console.print(
                    f"[red]{base}/events answered {response.status_code}[/red]: "
                    + _status_hint(response.status_code)
                )
                return 1
            lines = response.aiter_lines()
            if once:
                async for line in lines:
                    if line.strip():
                        frame = json.loads(line)
                        view.push([frame])
                        if frame.get("type") == "snapshot":
                            break
                cluster = await _read_cluster(client, base)
                if cluster is not None:
                    view.push([cluster])
                console.print(view.render())
                return 0
            async with trio.open_nursery() as nursery:
                nursery.start_soon(view.show)
                nursery.start_soon(_poll_cluster, client, base, view)
                async for line in lines:
                    if line.strip():
                        view.push([json.loads(line)])
                view.model.ended = True
                view.push([])
                await trio.sleep(view.coalesce * 2)
                nursery.cancel_scope.cancel()
            console.print("[yellow]the server closed the event stream (it shut down)[/yellow]")
            return 0
    except httpx.TransportError as exc:
        console.print(
            f"[red]cannot read {base}/events[/red]: {exc or type(exc).__name__}\n"
            "Is a server running with an admin endpoint? "
            "Start one with: python -m supervisor serve --admin-port 8001"
        )
        return 1


def _status_hint(status: int) -> str:
    if status == 401:
        return "this admin endpoint needs a token: pass --token (or SUPERVISOR_ADMIN_TOKEN)"
    if status == 403:
        return "the admin endpoint refused the Host header; use a loopback address"
    if status == 404:
        return "no admin endpoint here (is this the MCP port? the admin one is --admin-port)"
    return "unexpected answer"
