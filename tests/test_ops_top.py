"""``top``: its layout rendered to text, the frames it is fed, and the command in a terminal."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from io import StringIO
from pathlib import Path
from typing import Any

import trio
import trio.lowlevel
import trio.testing
from rich.console import Console

from supervisor import SessionContext, Supervisor, Transport, open_supervisor
from supervisor._ops._admin import serve_admin
from supervisor._ops._feed import Frame, run_feed, snapshot_frame
from supervisor._ops._top import TopModel, format_duration, render, run_top

REPO = Path(__file__).resolve().parents[1]
TIMEOUT = 30
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][0-9A-Za-z]|\r")


async def ready_actor(ctx: SessionContext[Any]) -> None:
    ctx.initialize(client_info={"name": "top-test", "version": "0"})
    async for msg in ctx.mailbox:
        msg.reply(msg.payload)


def text_of(model: TopModel, now: float, width: int = 120) -> str:
    console = Console(file=StringIO(), width=width, record=True, color_system=None)
    console.print(render(model, now, height=40))
    return console.export_text()


def test_format_duration() -> None:
    assert [format_duration(s) for s in (None, 0.44, 12, 185, 7620, 3 * 86400 + 4 * 3600)] == [
        "-",
        "0.4s",
        "12s",
        "3m05s",
        "2h07m",
        "3d04h",
    ]


def test_render_shows_sessions_counts_totals_and_events() -> None:
    model = TopModel("http://127.0.0.1:8001")
    stats = {
        "total": 2,
        "max_sessions": 100,
        "waiting": 0,
        "by_state": {"ready": 1, "initializing": 1},
        "by_transport": {"http": 1, "websocket": 1},
        "created": 5,
        "closed": 1,
        "expired": 1,
        "failed": 1,
        "rejected": 3,
    }
    rows = [
        {
            "id": "AbCdEfGh",
            "principal": "alice",
            "transport": "http",
            "state": "ready",
            "era": "2025-11-25",
            "state_handle": False,
            "age": 65.0,
            "idle": 2.0,
            "expires_in": 1798.0,
            "in_flight": 0,
            "messages": 12,
        },
        {
            "id": "ZyXwVuTs",
            "principal": None,
            "transport": "websocket",
            "state": "initializing",
            "age": 1.0,
            "idle": 0.0,
            "expires_in": None,
            "in_flight": 2,
            "messages": 3,
        },
    ]
    model.apply({"type": "snapshot", "stats": stats, "sessions": rows}, now=100.0)
    for kind, session, extra in (
        ("created", "AbCdEfGh", {}),
        ("expired", "Qq111111", {"reason": "idle-timeout", "terminal": True}),
        ("failed", "Ff222222", {"reason": "actor-error", "error": "ValueError: boom"}),
    ):
        frame = {"type": "event", "kind": kind, "session": session, "transport": "http"}
        model.apply({**frame, "wall": 0.0, **extra}, now=100.0)
    model.apply({"type": "lagged", "missed": 4}, now=100.0)

    text = text_of(model, now=110.0)  # ten seconds after the snapshot
    assert "supervisor top http://127.0.0.1:8001" in text
    assert "2/100 sessions" in text
    assert re.search(
        r"AbCdEfGh\s+alice\s+http\s+2025-11\s+ready\s+1m15s\s+12s\s+29m48s\s+0\s+12", text
    )
    assert re.search(r"ZyXwVuTs\s+-\s+websocket\s+-\s+initializing\s+11s\s+busy\s+-\s+2\s+3", text)
    assert re.search(r"ready\s+1\b", text) and re.search(r"initializing\s+1\b", text)
    assert re.search(r"websocket\s+1\b", text)
    for name, value in (("created", 5), ("expired", 1), ("failed", 1), ("rejected", 3)):
        assert re.search(rf"{name}\s+{value}\b", text), name
    assert "events dropped  4" in text
    assert "Qq111111 http       expired (idle-timeout)" in text
    assert "Ff222222 http       failed (actor-error) ValueError: boom" in text


def test_rows_follow_events_before_the_next_snapshot() -> None:
    model = TopModel("x")
    model.apply({"type": "snapshot", "stats": {}, "sessions": []}, now=0.0)
    event = {"type": "event", "session": "s1234567", "transport": "http", "wall": 0.0}
    model.apply({**event, "kind": "created", "state": "created"}, now=1.0)
    assert [row["id"] for row in model.rows] == ["s1234567"]
    model.apply({**event, "kind": "state-changed", "new_state": "ready"}, now=1.0)
    assert model.rows[0]["state"] == "ready"
    model.apply({**event, "kind": "closed", "terminal": True, "reason": "done"}, now=2.0)
    assert model.rows == []
    assert "no live sessions" in text_of(model, now=2.0)


async def test_feed_is_event_driven_and_never_carries_a_full_id(
    autojump_clock: trio.testing.MockClock,
) -> None:
    frames: list[Frame] = []
    emitted = trio.Event()

    async def emit(batch: list[Frame]) -> None:
        frames.extend(batch)
        emitted.set()

    async with open_supervisor(idle_timeout=60) as sup, trio.open_nursery() as nursery:
        nursery.start_soon(partial(run_feed, sup, emit, coalesce=0.1, heartbeat=5.0))
        await emitted.wait()
        assert [f["type"] for f in frames] == ["snapshot"]
        start = trio.current_time()
        session = sup.create_session_nowait(ready_actor, transport=Transport.WEBSOCKET)
        await trio.sleep(1.0)
        kinds = [(f["type"], f.get("kind")) for f in frames]
        # The events, then one snapshot (coalesced), then nothing until the heartbeat.
        assert kinds[1:] == [
            ("event", "created"),
            ("event", "state-changed"),
            ("event", "state-changed"),
            ("event", "initialized"),
            ("snapshot", None),
        ]
        [row] = frames[-1]["sessions"]
        assert row["id"] == session.id[:8] and row["state"] == "ready"
        assert row["transport"] == "websocket" and row["expires_in"] == 59.9  # snapshot 0.1 s after
        await trio.sleep(5.0)
        assert frames[-1]["type"] == "snapshot" and len(frames) == 7  # the heartbeat
        sup.close_session(session.id, reason="done")
        await trio.sleep(61.0)
        assert trio.current_time() - start > 60
        closed = [f for f in frames if f.get("kind") == "closed"]
        assert closed[0]["reason"] == "done" and closed[0]["terminal"]
        assert session.id not in json.dumps(frames)
        await sup.shutdown()
    assert frames[-1]["type"] == "snapshot"  # the feed ended with the supervisor


@asynccontextmanager
async def admin_server(**config: Any) -> AsyncIterator[tuple[Supervisor, str]]:
    async with open_supervisor(**config) as sup, trio.open_nursery() as nursery:
        url = await nursery.start(partial(serve_admin, sup, None, port=0, heartbeat=0.5))
        yield sup, url
        nursery.cancel_scope.cancel()


async def test_top_once_against_the_admin_endpoint() -> None:
    with trio.fail_after(TIMEOUT):
        async with admin_server() as (sup, url):
            first = sup.create_session_nowait(ready_actor, principal="alice")
            second = sup.create_session_nowait(ready_actor, transport=Transport.HTTP)
            await sup.call(second.id, "ping")
            sup.close_session(first.id, reason="bye")
            await trio.sleep(0.2)
            console = Console(file=StringIO(), width=120, record=True, color_system=None)
            assert await run_top(url, console=console, once=True) == 0
    text = console.export_text()
    assert re.search(rf"{second.id[:8]}\s+-\s+http\s+-\s+ready", text)  # era: none negotiated
    assert f"{first.id[:8]} in-process closed (bye)" in text  # recent events, seen late
    assert first.id not in text and second.id not in text


async def test_top_follows_the_stream_until_the_server_stops() -> None:
    console = Console(file=StringIO(), width=120, record=True, color_system=None)
    with trio.fail_after(TIMEOUT):
        async with open_supervisor(shutdown_grace=1) as sup, trio.open_nursery() as nursery:
            url = await nursery.start(partial(serve_admin, sup, None, port=0))
            done = trio.Event()
            status: list[int] = []

            async def top() -> None:
                status.append(await run_top(url, console=console))
                done.set()

            nursery.start_soon(top)
            await trio.sleep(0.3)
            session = sup.create_session_nowait(ready_actor, transport=Transport.STDIO)
            await trio.sleep(0.3)
            await sup.shutdown()
            await done.wait()
            nursery.cancel_scope.cancel()
    assert status == [0]
    text = console.export_text()
    assert f"{session.id[:8]} stdio      created" in text
    assert f"{session.id[:8]} stdio      closed (shutdown)" in text
    assert "stopped" in text and "the server closed the event stream" in text


async def test_top_explains_a_wrong_url() -> None:
    console = Console(file=StringIO(), width=120, record=True, color_system=None)
    with trio.fail_after(TIMEOUT):
        async with admin_server() as (_sup, url):
            assert await run_top(url + "/nope", console=console, once=True) == 1
        assert await run_top(url, console=console, once=True) == 1  # nothing listens now
    text = console.export_text()
    assert "answered 404" in text and "--admin-port" in text
    assert "cannot read" in text


async def test_top_command_in_a_pseudo_terminal() -> None:
    """``python -m supervisor top`` on a real (pseudo) terminal draws sessions and events."""
    import fcntl
    import pty
    import struct
    import termios

    with trio.fail_after(TIMEOUT):
        async with admin_server() as (sup, url):
            first = sup.create_session_nowait(ready_actor, principal="carol")
            master, slave = pty.openpty()
            fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
            env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "120", "LINES": "40"}
            process = await trio.lowlevel.open_process(
                [sys.executable, "-m", "supervisor", "top", "--url", url],
                cwd=str(REPO),
                stdin=slave,
                stdout=slave,
                stderr=slave,
                env=env,
            )
            os.close(slave)
            screen = ""
            stream = trio.lowlevel.FdStream(master)
            try:

                async def read_until(*needles: str) -> None:
                    nonlocal screen
                    while not all(needle in screen for needle in needles):
                        chunk = await stream.receive_some(65536)
                        assert chunk, f"top exited; it drew {screen!r}"
                        screen += ANSI.sub("", chunk.decode(errors="replace"))

                await read_until(first.id[:8], "carol", "ready")
                second = sup.create_session_nowait(ready_actor, transport=Transport.HTTP)
                sup.close_session(first.id, reason="operator")
                await read_until(second.id[:8], "closed (operator)")
                process.send_signal(signal.SIGINT)
                assert await process.wait() == 0
            finally:
                if process.returncode is None:  # pragma: no cover - only when the test failed
                    process.kill()
                    await process.wait()
                await stream.aclose()
    assert first.id not in screen and second.id not in screen


def test_snapshot_frame_lists_the_newest_first_and_counts_the_rest() -> None:
    async def main() -> None:
        async with open_supervisor() as sup:
            sessions = [sup.create_session_nowait(ready_actor) for _ in range(5)]
            await trio.lowlevel.checkpoint()
            frame = snapshot_frame(sup, limit=2)
            assert [row["id"] for row in frame["sessions"]] == [s.id[:8] for s in sessions[:2:-1]]
            assert frame["more"] == 3 and frame["stats"]["created"] == 5
            sup.close_all()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_top_parser() -> None:
    from supervisor._cli import build_parser

    args = build_parser().parse_args(["top"])
    assert (args.url, args.token, args.once) == ("http://127.0.0.1:8001", None, False)
    args = build_parser().parse_args(["top", "--url", "http://127.0.0.1:9", "--once"])
    assert (args.url, args.once) == ("http://127.0.0.1:9", True)
    _ = subprocess  # the pseudo-terminal test above spawns the command itself


def test_the_operator_surface_shortens_ids_with_the_core_helper() -> None:
    # One helper for every id that reaches a log or the admin surface: the core's.
    from supervisor import _ids
    from supervisor._ops import _feed, _logging

    assert _feed.short_id is _ids.short_id
    assert vars(_logging)["short_id"] is _ids.short_id
    assert _feed.ID_PREFIX == _ids.ID_PREFIX == 8
