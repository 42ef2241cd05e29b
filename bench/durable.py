"""Durable sessions: what a save, a passivation and an activation cost, beside a baseline
measured in the same run (every figure a median over rounds, subjects interleaved).

For each store (SQLite ``synchronous=FULL`` and ``NORMAL`` on a temporary directory; Redis
without persistence, as the cluster runs in the other benches, and Redis with
``appendfsync always``, which confirms a write only once it is fsynced, as SQLite ``FULL``):

* **save**: ``await sup.call(id, "save")`` to a durable session whose actor does
  ``await ctx.save(state)`` and then replies, against ``await sup.call(id, "get")`` to the
  same session, which replies without saving (the baseline). 1 caller one call after another,
  then 8 and 64 concurrent callers, each on a session of its own (SQLite's group commit puts
  the saves waiting while a commit runs into one transaction). Per call: wall time / calls,
  and this process's CPU time (every thread: SQLite's worker too) / calls, which tells time
  spent waiting (an fsync, a round trip) from time spent computing.
* **passivate**: N durable sessions, each saved once, passivated by a graceful shutdown
  (leaving ``open_supervisor``), timed until the block has been left: every ``PASSIVATED``
  event published and every store write confirmed. Baseline: N sessions that are not durable,
  closed by the same shutdown, with the same store open. Per session.
* **activate**: ``await sup.activate(id)`` for each of those N passivated sessions, one after
  another, by a new supervisor on the same store (the restart case), against
  ``await sup.create_session(actor, durable=True)`` of N new ones in that supervisor (the
  baseline; creating a durable session writes nothing to the store). Per session.

Each store runs in a fresh subprocess: ``python -m bench.durable measure --store KIND``. A Redis
store is skipped, with the reason printed, only when no server binary is found. `run_durable`
is the section of ``python -m bench`` (``--only durable``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from ._util import emit, median

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
START_TIMEOUT = 30.0

#: The stores measured, in order: (kind, label).
STORES: dict[str, str] = {
    "sqlite-full": "SQLite, synchronous=FULL",
    "sqlite-normal": "SQLite, synchronous=NORMAL",
    "redis": "Redis, no persistence",
    "redis-aof": "Redis, appendfsync always",
}

Log = Callable[[str], None]


# -- the actor ---------------------------------------------------------------------------------


async def saver(ctx: Any) -> None:
    """``"save"``: count one more, save it (confirmed by the store), reply the count;
    ``"get"``: reply the count without saving (the baseline)."""
    count = int((ctx.saved or {}).get("count", 0))
    async for msg in ctx.mailbox:
        if msg.payload == "save":
            count += 1
            await ctx.save({"count": count})
        msg.reply(count)


# -- stores ------------------------------------------------------------------------------------

Opened = Callable[[], AbstractAsyncContextManager[Any]]


def _sqlite(path: Path, synchronous: str, sessions: int) -> Opened:
    """A supervisor on ``SqliteStore(path)``, opened anew at each call."""
    from supervisor import open_supervisor
    from supervisor.durable import SqliteStore

    def opened() -> AbstractAsyncContextManager[Any]:
        store = SqliteStore(path, synchronous=synchronous)
        return open_supervisor(store=store, max_sessions=sessions)

    return opened


def _redis(url: str, prefix: str, sessions: int) -> Opened:
    """A supervisor on a new cluster node (its own `Cluster`) with ``store=cluster.store``,
    on the key prefix ``prefix``."""
    from supervisor import open_supervisor
    from supervisor.cluster import Cluster

    def opened() -> AbstractAsyncContextManager[Any]:
        cluster = Cluster(url, prefix=prefix)
        return open_supervisor(cluster=cluster, store=cluster.store, max_sessions=sessions)

    return opened


@asynccontextmanager
async def _supervisor(opened: Opened) -> Any:
    async with opened() as sup:
        sup.register_durable("saver", saver)
        yield sup


# -- measurements ------------------------------------------------------------------------------


async def _workers(level: int, count: int, one: Callable[[int], Awaitable[None]]) -> float:
    """``count`` calls of ``one(worker)`` spread over ``level`` concurrent workers; seconds."""
    ticket = itertools.count()

    async def worker(w: int) -> None:
        while next(ticket) < count:
            await one(w)

    t0 = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for w in range(level):
            nursery.start_soon(worker, w)
    return time.perf_counter() - t0


async def _saves(opened: Opened, levels: list[int], calls: dict[int, int], rep: int) -> Any:
    """µs per call, with a save and without, at each concurrency level."""
    out: dict[str, dict[str, float]] = {}
    async with _supervisor(opened) as sup:
        ids = [(await sup.create_session(saver, durable=True)).id for _ in range(max(levels))]
        for level in levels:
            count = calls[level]

            def one(payload: str) -> Callable[[int], Awaitable[None]]:
                async def call(w: int) -> None:
                    await sup.call(ids[w], payload)

                return call

            await _workers(level, 2 * level, one("save"))  # warm-up
            figures: dict[str, float] = {}
            order = ["save", "get"] if rep % 2 == 0 else ["get", "save"]
            for payload in order:
                cpu = time.process_time()
                seconds = await _workers(level, count, one(payload))
                figures[payload] = seconds / count * 1e6
                figures[f"{payload}_cpu"] = (time.process_time() - cpu) / count * 1e6
            out[str(level)] = figures
    return out


async def _shutdown(opened: Opened, n: int, durable: bool) -> tuple[float, list[str], int]:
    """Seconds from leaving the block with ``n`` idle sessions (each saved once when
    ``durable``) until it has been left; the ids, and how many end events were seen."""
    from supervisor import EventKind

    ended = 0
    kinds = {EventKind.PASSIVATED, EventKind.CLOSED}

    async def count(events: Any) -> None:
        nonlocal ended
        async with events as items:
            async for event in items:
                if getattr(event, "kind", None) in kinds:
                    ended += 1

    async with trio.open_nursery() as nursery:
        async with _supervisor(opened) as sup:
            nursery.start_soon(count, sup.subscribe(kinds, buffer=n + 16))
            ids = []
            for _ in range(n):
                session = await sup.create_session(saver, durable=durable)
                await sup.call(session.id, "save" if durable else "get")
                ids.append(session.id)
            await trio.sleep(0.05)  # let the subscriber start
            t0 = time.perf_counter()
        elapsed = time.perf_counter() - t0
    return elapsed, ids, ended


async def _activations(opened: Opened, ids: list[str], rep: int) -> dict[str, float]:
    """µs per ``activate`` of the passivated ``ids`` and per ``create_session`` of new ones,
    in a new supervisor on the same store; checks every activated session's saved count."""
    out: dict[str, float] = {}
    async with _supervisor(opened) as sup:
        for kind in ("activate", "create") if rep % 2 == 0 else ("create", "activate"):
            t0 = time.perf_counter()
            if kind == "activate":
                for session_id in ids:
                    await sup.activate(session_id)
            else:
                for _ in ids:
                    await sup.create_session(saver, durable=True)
            out[kind] = (time.perf_counter() - t0) / len(ids) * 1e6
        for session_id in ids:
            count = await sup.call(session_id, "get")
            if count != 1:
                raise RuntimeError(f"an activated session counts {count}, not its saved 1")
    return out


def measure(
    kind: str, url: str | None, reps: int, levels: list[int], calls: int, sessions: int
) -> dict[str, Any]:
    """One store's figures (run in a fresh process)."""
    per_level = {level: max(calls, 4 * level) // level * level for level in levels}
    raw: dict[str, Any] = {
        "save": {
            str(level): {"save": [], "get": [], "save_cpu": [], "get_cpu": []} for level in levels
        },
        "passivate": {"durable": [], "plain": []},
        "activate": {"activate": [], "create": []},
    }
    capacity = 2 * sessions + max(levels) + 16
    workdir = Path(tempfile.mkdtemp(prefix="bench-durable-"))
    try:
        for rep in range(reps):

            def fresh(tag: str, rep: int = rep) -> Opened:
                if kind.startswith("sqlite"):
                    path = workdir / f"{tag}-{rep}.db"
                    return _sqlite(path, kind.split("-", 1)[1].upper(), capacity)
                assert url is not None
                return _redis(url, f"bd{tag}{rep}t{time.monotonic_ns()}", capacity)

            saves = trio.run(_saves, fresh("save"), levels, per_level, rep)
            for level, figures in saves.items():
                for payload, us in figures.items():
                    raw["save"][level][payload].append(us)
            durable_store = fresh("passivate")
            order = [True, False] if rep % 2 == 0 else [False, True]
            ids: list[str] = []
            for durable in order:
                target = durable_store if durable else fresh("plain")
                seconds, made, ended = trio.run(_shutdown, target, sessions, durable)
                if ended != sessions:
                    raise RuntimeError(f"{ended} end events for {sessions} sessions")
                raw["passivate"]["durable" if durable else "plain"].append(seconds / sessions * 1e6)
                if durable:
                    ids = made
            act = trio.run(_activations, durable_store, ids, rep)
            for key, us in act.items():
                raw["activate"][key].append(us)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return {"kind": kind, "reps": reps, "sessions": sessions, "calls": per_level, "raw_us": raw}


def summarize(raw: dict[str, Any]) -> dict[str, Any]:
    """Medians (µs) and ratios (subject / baseline) of one store's raw figures."""
    save = {}
    for level, figures in raw["save"].items():
        s, g = median(figures["save"]), median(figures["get"])
        save[level] = {
            "save_us": s,
            "call_us": g,
            "ratio": s / g,
            "save_cpu_us": median(figures["save_cpu"]),
            "call_cpu_us": median(figures["get_cpu"]),
        }
    p, c = median(raw["passivate"]["durable"]), median(raw["passivate"]["plain"])
    a, n = median(raw["activate"]["activate"]), median(raw["activate"]["create"])
    return {
        "save": save,
        "passivate": {"durable_us": p, "plain_us": c, "ratio": p / c, "extra_us": p - c},
        "activate": {"activate_us": a, "create_us": n, "ratio": a / n},
    }


# -- Redis servers -----------------------------------------------------------------------------


# -- the section -------------------------------------------------------------------------------


def _measure_subprocess(
    kind: str, url: str | None, reps: int, levels: list[int], calls: int, sessions: int
) -> Any:
    argv = [sys.executable, "-m", "bench.durable", "measure", "--store", kind]
    argv += ["--reps", str(reps), "--levels", ",".join(map(str, levels))]
    argv += ["--calls", str(calls), "--sessions", str(sessions)]
    if url is not None:
        argv += ["--url", url]
    out = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"bench.durable measure --store {kind} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout)


def table(stores: dict[str, Any]) -> list[str]:
    """The readable tables of the section's medians (µs; ratio = subject / baseline)."""
    lines = [
        f"{'store':28}{'callers':>8}{'call+save µs':>14}{'call µs':>10}{'ratio':>8}"
        f"{'CPU µs: call+save':>19}{'call':>6}",
    ]
    for kind, fig in stores.items():
        for i, (level, f) in enumerate(fig["summary"]["save"].items()):
            name = STORES[kind] if i == 0 else ""
            lines.append(
                f"{name:28}{level:>8}{f['save_us']:>14.1f}{f['call_us']:>10.1f}"
                f"{f['ratio']:>7.1f}x{f['save_cpu_us']:>19.1f}{f['call_cpu_us']:>6.1f}"
            )
    lines += [
        "",
        f"{'store':28}{'passivate':>10}{'close':>8}{'ratio':>7}{'extra':>8}"
        f"{'activate':>10}{'create':>8}{'ratio':>7}   (µs per session)",
    ]
    for kind, fig in stores.items():
        p, a = fig["summary"]["passivate"], fig["summary"]["activate"]
        lines.append(
            f"{STORES[kind]:28}{p['durable_us']:>10.1f}{p['plain_us']:>8.1f}"
            f"{p['ratio']:>6.1f}x{p['extra_us']:>8.1f}"
            f"{a['activate_us']:>10.1f}{a['create_us']:>8.1f}{a['ratio']:>6.1f}x"
        )
    return lines


def run_durable(
    *, reps: int, levels: list[int], calls: int, sessions: int, log: Log
) -> dict[str, Any]:
    """The ``durable`` section of ``python -m bench``."""
    out: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "reps": reps,
        "levels": levels,
        "sessions": sessions,
        "stores": {},
        "skipped": {},
    }
    workdir = Path(tempfile.mkdtemp(prefix="bench-durable-"))
    try:
        from .cluster import _redis_binary, redis_server

        try:
            _redis_binary()
            have_redis = True
        except RuntimeError as exc:
            have_redis = False
            for kind in ("redis", "redis-aof"):
                out["skipped"][kind] = str(exc)
                log(f"  {kind}: skipped: {exc}")
        for kind in STORES:
            if kind.startswith("redis") and not have_redis:
                continue
            t0 = time.perf_counter()
            if kind.startswith("sqlite"):
                fig = _measure_subprocess(kind, None, reps, levels, calls, sessions)
            else:
                with redis_server(workdir, aof=kind == "redis-aof") as url:
                    fig = _measure_subprocess(kind, url, reps, levels, calls, sessions)
            fig["label"] = STORES[kind]
            fig["summary"] = s = summarize(fig["raw_us"])
            out["stores"][kind] = fig
            log(
                f"  {kind}: save "
                + ", ".join(
                    f"c={lv} {f['save_us']:.0f} µs ({f['ratio']:.1f}x)"
                    for lv, f in s["save"].items()
                )
                + f"; passivate {s['passivate']['durable_us']:.0f} µs/session "
                f"({s['passivate']['ratio']:.1f}x); activate {s['activate']['activate_us']:.0f} "
                f"µs/session ({s['activate']['ratio']:.1f}x) ({time.perf_counter() - t0:.0f} s)"
            )
        log("")
        for line in table(out["stores"]):
            log("  " + line)
        return out
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.durable", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    one = commands.add_parser("measure", help="one store's figures (JSON)")
    one.add_argument("--store", choices=list(STORES), required=True)
    one.add_argument("--url", help="the Redis URL (redis stores)")
    one.add_argument("--reps", type=int, default=5)
    one.add_argument("--levels", default="1,8,64")
    one.add_argument("--calls", type=int, default=200)
    one.add_argument("--sessions", type=int, default=200)
    whole = commands.add_parser("run", help="the whole section (JSON; the table on stderr)")
    whole.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    if args.command == "measure":
        if args.store.startswith("redis") and not args.url:
            parser.error("--url is needed for a Redis store")
        levels = [int(v) for v in args.levels.split(",") if v]
        emit(measure(args.store, args.url, args.reps, levels, args.calls, args.sessions))
        return 0
    from .run import _profile

    d = _profile(args.quick)["durable"]
    emit(run_durable(**d, log=lambda msg: print(msg, file=sys.stderr, flush=True)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
