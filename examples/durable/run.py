"""Durable sessions on SQLite: a counter that outlives its actor, a crash and its process.

What it shows: a durable counter actor (``create_session(..., durable=True)``) that starts from
``ctx.saved`` and saves each new count with ``await ctx.save(...)`` before replying, on the
embedded `supervisor.durable.SqliteStore` (one file, no server). In order:

1. three increments (1, 2, 3), then the session stays idle past its ``idle_timeout``: it is
   ``PASSIVATED`` (its actor stops, its slot is free, its record stays in the file);
2. ``await sup.activate(id)`` brings it back with the same id: ``ACTIVATED``, and it counts on
   from its saved state (4);
3. the actor raises: the session is ``RESTARTED`` from its last save, same id, and counts on (5);
4. leaving ``open_supervisor`` passivates it (``"shutdown"``); a second process opens the same
   file, activates the session, counts (6) and dies without any cleanup (``os._exit``, as a
   ``kill -9`` would);
5. this process opens the file again (a restarted server) and activates the session once more:
   the count the dead process saved is there (7). Closing the session ends it for good: its
   record is deleted and it can no longer be activated.

Run it: ``python examples/durable/run.py`` (a few seconds; ``--db PATH`` keeps the SQLite file
at PATH instead of a temporary directory). Copy it when sessions must survive idleness, crashes
and restarts. No network; the second process is stopped by its PID if it hangs.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
import tempfile
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import trio

from supervisor import (
    Event,
    EventKind,
    SessionContext,
    SessionNotFound,
    Subscription,
    Supervisor,
    open_supervisor,
)
from supervisor.durable import SqliteStore

IDLE_TIMEOUT = 0.5  # seconds: short, so the demo shows a passivation quickly
CHILD_TIMEOUT = 30.0  # seconds the second process may take on a loaded machine
SHOWN = {EventKind.PASSIVATED, EventKind.ACTIVATED, EventKind.RESTARTED, EventKind.CLOSED}


class Crash(Exception):
    """What the actor raises on ``"crash"``, to show a restart."""


async def counter(ctx: SessionContext[str]) -> None:
    """``"increment"`` -> the new count (saved first); ``"crash"`` raises."""
    count = (ctx.saved or {}).get("count", 0)  # the last confirmed save; None at first
    async for msg in ctx.mailbox:
        if msg.payload == "increment":
            count += 1
            await ctx.save({"count": count})  # write-through: on disk when this returns
            msg.reply(count)  # so the reply acknowledges a state that cannot be lost
        elif msg.payload == "crash":
            raise Crash("the actor failed")


def short(session_id: str) -> str:
    """Session ids are credentials: show only their first characters."""
    return session_id[:8]


async def show(events: Subscription, printed: trio.MemorySendChannel[EventKind]) -> None:
    """Print the lifecycle events, and tell ``printed`` which were."""
    async with events as items, printed:
        async for item in items:
            if isinstance(item, Event) and item.kind in SHOWN:
                why = f" ({item.reason})" if item.reason else ""
                print(f"    event: {item.kind.name} {short(item.session_id)}{why}")
                printed.send_nowait(item.kind)


def open_counter(db: Path) -> AbstractAsyncContextManager[Supervisor]:
    """The supervisor every process of the demo opens on the same file."""
    return open_supervisor(store=SqliteStore(db), idle_timeout=IDLE_TIMEOUT, max_sessions=10)


def setup(sup: Supervisor, nursery: trio.Nursery) -> trio.MemoryReceiveChannel[EventKind]:
    """Register the actor (by name: any process can start it again) and print events."""
    sup.register_durable("counter", counter)
    printed, kinds = trio.open_memory_channel[EventKind](math.inf)
    nursery.start_soon(show, sup.subscribe(SHOWN), printed)
    return kinds


async def first_process(db: Path, seen: list[int]) -> str:
    async with trio.open_nursery() as nursery, open_counter(db) as sup:
        kinds = setup(sup, nursery)
        session = await sup.create_session(counter, durable=True)
        sid = session.id
        print(f"1. session {short(sid)} created")
        seen += [await sup.call(sid, "increment") for _ in range(3)]
        print(f"   counts {seen}; now idle for {IDLE_TIMEOUT} s ...")
        while await kinds.receive() is not EventKind.PASSIVATED:
            pass
        print(f"   passivated; live sessions here: {sup.statistics().total}")
        print("2. activate it again, by its id")
        session = await sup.activate(sid)
        seen.append(await sup.call(sid, "increment"))
        print(f"   same id, count {seen[-1]}")
        print("3. its actor crashes")
        sup.send_nowait(sid, "crash")
        seen.append(await sup.call(sid, "increment"))  # buffered for the restarted actor
        print(f"   restarted {session.restarts} time(s), count {seen[-1]}")
        print("4. shutdown: the session is passivated, not lost")
    return sid


async def second_process(db: Path, sid: str) -> None:
    """Run by ``--second``: activate the session, count once, die without cleanup."""
    async with open_counter(db) as sup:
        sup.register_durable("counter", counter)
        await sup.activate(sid)
        count = await sup.call(sid, "increment")
        print(f"   second process (pid {os.getpid()}): count {count}; now it dies (os._exit)")
        sys.stdout.flush()
        os._exit(3)  # no passivation, no cleanup: as if it were killed


async def run_second(db: Path, sid: str) -> tuple[int, int]:
    """The second process, given the id on its stdin (never on its command line: it is a
    credential), killed if it does not exit in time; its exit status and the count it saw."""
    argv = [sys.executable, __file__, "--second", "--db", str(db)]
    with trio.move_on_after(CHILD_TIMEOUT):
        done = await trio.run_process(argv, stdin=sid.encode(), capture_stdout=True, check=False)
        out = done.stdout.decode()
        print(out, end="")
        found = re.search(r"count (\d+)", out)
        return done.returncode, int(found.group(1)) if found else -1
    raise RuntimeError(f"the second process did not exit within {CHILD_TIMEOUT} s")


async def third_process(db: Path, sid: str, seen: list[int]) -> bool:
    async with trio.open_nursery() as nursery, open_counter(db) as sup:
        setup(sup, nursery)
        print("5. this process opens the file again and activates the session")
        await sup.activate(sid)
        seen.append(await sup.call(sid, "increment"))
        print(f"   count {seen[-1]}: the dead process's save was kept")
        sup.close_session(sid)  # ends it for good: its record is deleted
    # Leaving the block waited for the store's last write (the deletion).
    async with open_counter(db) as sup:
        sup.register_durable("counter", counter)
        try:
            await sup.activate(sid)
        except SessionNotFound:
            print("   closed for good: activate() now raises SessionNotFound")
            return True
    return False


async def main(db: Path | None = None) -> dict[str, Any]:
    """Runs the demo; returns what it saw (the tests check it)."""
    with tempfile.TemporaryDirectory(prefix="durable-demo-") as tmp:
        path = db if db is not None else Path(tmp) / "sessions.db"
        print(f"store: {path}")
        seen: list[int] = []
        sid = await first_process(path, seen)
        code, count = await run_second(path, sid)
        seen.append(count)
        gone = await third_process(path, sid, seen)
    return {"counts": seen, "second_exit": code, "gone": gone}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Durable sessions on SQLite (a demo).")
    parser.add_argument("--db", type=Path, help="the SQLite file (default: a temporary one)")
    parser.add_argument("--second", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.second:
        trio.run(second_process, args.db, sys.stdin.read().strip())
    else:
        trio.run(main, args.db)
