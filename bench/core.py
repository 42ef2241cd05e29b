"""Core benchmarks: the supervisor beside the bare trio floor, measured in the same process.

Run as ``python -m bench.core MODE [options]``; it prints one JSON document on stdout. The
orchestrator (`bench.run`) starts one fresh subprocess per configuration, so no run inherits
another's heap.

Modes:

``ops --n N``
    With N live sessions *and* N live bare actors in one trio run, repeat (alternating which
    goes first): create a batch and let the tasks block, look up, touch, send, call, close the
    batch. Each figure is nanoseconds per operation; the orchestrator takes medians.
``mass-expiry --n N``
    N sessions (or N bare task + channel + deadline scopes) whose deadlines all pass at once
    (trio's `MockClock` at rate 1 is jumped past them); the time until all have ended, per
    session. One trio run per repetition, ours and bare alternating.
``memory --n N --kind ours|bare --method rss|tracemalloc``
    Bytes per idle session: the RSS or tracemalloc delta of creating N idle sessions (or bare
    task + channel + CancelScope) in this fresh process.
``fanout``
    Event fan-out cost per subscriber (K = 1, 10, 100) beside K bare memory channels.
``expiry --n N``
    Expiry precision: (actual expiry - deadline) for N sessions created over about a second
    with a one-second idle timeout, with real time; beside bare ``move_on_after`` tasks.
"""

from __future__ import annotations

import argparse
import gc
import math
import random
import time
import tracemalloc
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Any

import trio
import trio.testing

from supervisor import Event, EventKind, SessionContext, SupervisorConfig, open_supervisor

from ._util import emit, median, percentile, rss_bytes

_ns = time.perf_counter_ns
_wait = trio.testing.wait_all_tasks_blocked
IDLE = 3600.0
CHUNK = 1000  # sessions created between two waits while populating


# -- actors ------------------------------------------------------------------------------------


async def echo_actor(ctx: SessionContext[Any]) -> None:
    """Our session: answer calls, ignore one-way messages."""
    async for msg in ctx.mailbox:
        if msg.expects_reply:
            msg.reply(None)


async def bare_actor(recv: trio.MemoryReceiveChannel[Any]) -> None:
    """The bare floor: a task blocked on its channel; a message that is a channel gets a reply."""
    async for item in recv:
        if item is not None:
            item.send_nowait(None)


async def bare_scoped_actor(recv: trio.MemoryReceiveChannel[Any], scope: trio.CancelScope) -> None:
    """The bare floor with a deadline: task + channel + CancelScope."""
    with scope:
        async for item in recv:
            if item is not None:
                item.send_nowait(None)


# -- ops ---------------------------------------------------------------------------------------


async def _ops(n: int, reps: int, batch: int, lookups: int, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    raw: dict[str, dict[str, list[float]]] = defaultdict(lambda: {"ours": [], "bare": []})
    extra: dict[str, list[float]] = defaultdict(list)
    async with (
        open_supervisor(max_sessions=n + 2 * batch + 16, idle_timeout=IDLE) as sup,
        trio.open_nursery() as nursery,
    ):
        create = sup.create_session_nowait
        # Populate: N sessions and N bare scoped actors (keyed by the same ids).
        ids: list[str] = []
        for start in range(0, n, CHUNK):
            ids.extend(create(echo_actor).id for _ in range(min(CHUNK, n - start)))
            await _wait()
        bare_send: dict[str, trio.MemorySendChannel[Any]] = {}
        bare_scope: dict[str, trio.CancelScope] = {}
        now = trio.current_time()
        for i, sid in enumerate(ids):
            send, recv = trio.open_memory_channel[Any](64)
            scope = trio.CancelScope(deadline=now + IDLE)
            nursery.start_soon(bare_scoped_actor, recv, scope)
            bare_send[sid] = send
            bare_scope[sid] = scope
            if i % CHUNK == CHUNK - 1:
                await _wait()
        await _wait()
        reply_send, reply_recv = trio.open_memory_channel[Any](1)

        async def create_ours() -> tuple[float, list[str]]:
            t0 = _ns()
            new = [create(echo_actor).id for _ in range(batch)]
            await _wait()
            return (_ns() - t0) / batch, new

        async def create_bare() -> tuple[float, list[Any]]:
            t0 = _ns()
            chans = []
            for _ in range(batch):
                send, recv = trio.open_memory_channel[Any](64)
                nursery.start_soon(bare_actor, recv)
                chans.append(send)
            await _wait()
            return (_ns() - t0) / batch, chans

        async def create_bare_scoped() -> tuple[float, list[Any]]:
            t0 = _ns()
            chans = []
            deadline = trio.current_time() + IDLE
            for _ in range(batch):
                send, recv = trio.open_memory_channel[Any](64)
                nursery.start_soon(bare_scoped_actor, recv, trio.CancelScope(deadline=deadline))
                chans.append(send)
            await _wait()
            return (_ns() - t0) / batch, chans

        async def close_ours(new: list[str]) -> float:
            close = sup.close_session
            t0 = _ns()
            for sid in new:
                close(sid)
            await _wait()
            return (_ns() - t0) / len(new)

        async def close_bare(chans: list[Any]) -> float:
            t0 = _ns()
            for send in chans:
                send.close()
            await _wait()
            return (_ns() - t0) / len(chans)

        def lookup_ours(sample: list[str]) -> float:
            get = sup.get_session
            t0 = _ns()
            for sid in sample:
                get(sid)
            return (_ns() - t0) / len(sample)

        def lookup_bare(sample: list[str]) -> float:
            get = bare_send.get
            t0 = _ns()
            for sid in sample:
                get(sid)
            return (_ns() - t0) / len(sample)

        def touch_ours(sample: list[str]) -> float:
            touch = sup.touch
            t0 = _ns()
            for sid in sample:
                touch(sid)
            return (_ns() - t0) / len(sample)

        def touch_bare(sample: list[str]) -> float:
            get = bare_scope.get
            clock = trio.current_time
            t0 = _ns()
            for sid in sample:
                get(sid).deadline = clock() + IDLE  # type: ignore[union-attr]
            return (_ns() - t0) / len(sample)

        async def send_ours(sample: list[str]) -> float:
            send = sup.send_nowait
            t0 = _ns()
            for sid in sample:
                send(sid, None)
            await _wait()
            return (_ns() - t0) / len(sample)

        async def send_bare(sample: list[str]) -> float:
            get = bare_send.__getitem__
            scopes = bare_scope.__getitem__
            clock = trio.current_time
            t0 = _ns()
            for sid in sample:
                get(sid).send_nowait(None)
                scopes(sid).deadline = clock() + IDLE
            await _wait()
            return (_ns() - t0) / len(sample)

        async def call_ours(sample: list[str]) -> float:
            call = sup.call
            t0 = _ns()
            for sid in sample:
                await call(sid, None)
            return (_ns() - t0) / len(sample)

        async def call_bare(sample: list[str]) -> float:
            get = bare_send.__getitem__
            receive = reply_recv.receive
            t0 = _ns()
            for sid in sample:
                get(sid).send_nowait(reply_send)
                await receive()
            return (_ns() - t0) / len(sample)

        for rep in range(reps):
            ours_first = rep % 2 == 1
            sample = rng.sample(ids, min(batch, n))
            many = rng.choices(ids, k=lookups)
            # create + close
            if ours_first:
                c_o, new_o = await create_ours()
                c_b, new_b = await create_bare()
            else:
                c_b, new_b = await create_bare()
                c_o, new_o = await create_ours()
            c_s, new_s = await create_bare_scoped()
            extra["create_bare_scoped"].append(c_s)
            raw["create"]["ours"].append(c_o)
            raw["create"]["bare"].append(c_b)
            await close_bare(new_s)
            if ours_first:
                raw["close"]["ours"].append(await close_ours(new_o))
                raw["close"]["bare"].append(await close_bare(new_b))
            else:
                raw["close"]["bare"].append(await close_bare(new_b))
                raw["close"]["ours"].append(await close_ours(new_o))
            # the rest, each pair in alternating order
            pairs: list[tuple[str, list[str], Callable[[Any], Any], Callable[[Any], Any]]] = [
                ("lookup", many, lookup_ours, lookup_bare),
                ("touch", sample, touch_ours, touch_bare),
                ("send", sample, send_ours, send_bare),
                ("call", sample, call_ours, call_bare),
            ]
            for name, arg, ours, bare in pairs:
                for kind, fn in (
                    (("ours", ours), ("bare", bare))
                    if ours_first
                    else (
                        ("bare", bare),
                        ("ours", ours),
                    )
                ):
                    value = fn(arg)
                    if isinstance(value, Awaitable):
                        value = await value
                    raw[name][kind].append(float(value))
                await trio.sleep(0.02)  # > deadline_slack: the next touch pushes the deadline
        assert len(sup) == n
        for send in bare_send.values():
            send.close()
        sup.close_all()
    return {"n": n, "reps": reps, "batch": batch, "raw": dict(raw), "extra": dict(extra)}


# -- mass expiry -------------------------------------------------------------------------------


async def _mass_once(kind: str, n: int, clock: trio.testing.MockClock) -> float:
    timeout = 10.0
    if kind == "ours":
        async with open_supervisor(max_sessions=n, idle_timeout=timeout) as sup:
            for start in range(0, n, CHUNK):
                for _ in range(min(CHUNK, n - start)):
                    sup.create_session_nowait(echo_actor)
                await _wait()
            gc.collect()
            clock.jump(timeout + 1.0)
            t0 = _ns()
            await _wait()
            elapsed = _ns() - t0
            assert len(sup) == 0, len(sup)
            assert sup.statistics().expired_total == n
        return elapsed / n
    async with trio.open_nursery() as nursery:
        for start in range(0, n, CHUNK):
            for _ in range(min(CHUNK, n - start)):
                # Distinct deadlines in creation order, as the sessions' idle deadlines are.
                deadline = trio.current_time() + timeout
                _send, recv = trio.open_memory_channel[Any](64)
                nursery.start_soon(bare_scoped_actor, recv, trio.CancelScope(deadline=deadline))
            await _wait()
        gc.collect()
        clock.jump(timeout + 1.0)
        t0 = _ns()
        await _wait()
        elapsed = _ns() - t0
        assert not nursery.child_tasks
    return elapsed / n


def _mass(n: int, reps: int) -> dict[str, Any]:
    out: dict[str, list[float]] = {"ours": [], "bare": []}
    for rep in range(reps):
        order = ("ours", "bare") if rep % 2 else ("bare", "ours")
        for kind in order:
            clock = trio.testing.MockClock(rate=1.0)
            out[kind].append(trio.run(_mass_once, kind, n, clock, clock=clock))
            gc.collect()
    return {"n": n, "reps": reps, "raw": {"mass_expiry": out}}


# -- memory ------------------------------------------------------------------------------------


async def _memory(n: int, kind: str, method: str) -> dict[str, Any]:
    def measure() -> int:
        gc.collect()
        if method == "tracemalloc":
            return tracemalloc.get_traced_memory()[0]
        return rss_bytes()

    keep: list[Any] = []
    async with open_supervisor(max_sessions=n + 200, idle_timeout=IDLE) as sup:
        async with trio.open_nursery() as nursery:
            # Warm up both paths (lazy imports, free lists, the registry's first resizes).
            for _ in range(100):
                sup.close_session(sup.create_session_nowait(echo_actor).id)
                send, recv = trio.open_memory_channel[Any](64)
                nursery.start_soon(bare_scoped_actor, recv, trio.CancelScope(deadline=math.inf))
                send.close()
            await _wait()
            before = measure()
            now = trio.current_time()
            for start in range(0, n, CHUNK):
                for _ in range(min(CHUNK, n - start)):
                    if kind == "ours":
                        sup.create_session_nowait(echo_actor)
                    else:
                        send, recv = trio.open_memory_channel[Any](64)
                        scope = trio.CancelScope(deadline=now + IDLE)
                        nursery.start_soon(bare_scoped_actor, recv, scope)
                        keep.append(send)
                await _wait()
            after = measure()
            for send in keep:
                send.close()
            sup.close_all()
    return {"n": n, "kind": kind, "method": method, "bytes_per_session": (after - before) / n}


# -- event fan-out -----------------------------------------------------------------------------

EVENTS_PER_SESSION = 4  # CREATED, STATE_CHANGED (closing), STATE_CHANGED (closed), CLOSED


async def _fanout(ks: list[int], reps: int, batch: int) -> dict[str, Any]:
    raw: dict[str, dict[str, list[float]]] = {f"fanout_k{k}": {"ours": [], "bare": []} for k in ks}
    buffer = EVENTS_PER_SESSION * batch + 16
    received = [0]
    async with (
        open_supervisor(max_sessions=batch + 16, idle_timeout=IDLE) as sup,
        trio.open_nursery() as nursery,
    ):

        async def consume(sub: Any) -> None:
            async for _ in sub:
                received[0] += 1

        async def cycle() -> float:
            t0 = _ns()
            new = [sup.create_session_nowait(echo_actor).id for _ in range(batch)]
            await _wait()
            for sid in new:
                sup.close_session(sid)
            await _wait()
            return float(_ns() - t0)

        async def ours(k: int) -> float:
            subs = [sup.subscribe(buffer=buffer) for _ in range(k)]
            for sub in subs:
                nursery.start_soon(consume, sub)
            await _wait()
            received[0] = 0
            with_k = await cycle()
            assert received[0] == EVENTS_PER_SESSION * batch * k, received[0]
            for sub in subs:
                sub.close()
            await _wait()
            without = await cycle()
            return (with_k - without) / (EVENTS_PER_SESSION * batch * k)

        async def bare(k: int) -> float:
            chans = []
            for _ in range(k):
                send, recv = trio.open_memory_channel[Any](buffer)
                nursery.start_soon(consume, recv)
                chans.append(send)
            await _wait()
            events = EVENTS_PER_SESSION * batch
            t0 = _ns()
            for i in range(events):
                event = (i, None)
                for send in chans:
                    send.send_nowait(event)
                if i % batch == batch - 1:
                    await _wait()
            await _wait()
            elapsed = _ns() - t0
            for send in chans:
                send.close()
            await _wait()
            return elapsed / (events * k)

        for rep in range(reps):
            for k in ks:
                first, second = (ours, bare) if rep % 2 else (bare, ours)
                for fn in (first, second):
                    raw[f"fanout_k{k}"]["ours" if fn is ours else "bare"].append(await fn(k))
    return {"ks": ks, "reps": reps, "batch": batch, "raw": raw}


# -- expiry precision --------------------------------------------------------------------------


async def _expiry_once(kind: str, n: int, idle: float, spread: float) -> list[float]:
    steps = 100
    per_step = max(1, n // steps)
    late: list[float] = []
    if kind == "ours":
        deadlines: dict[str, float] = {}
        async with open_supervisor(max_sessions=n, idle_timeout=idle) as sup:
            async with sup.subscribe(kinds=[EventKind.EXPIRED], buffer=n + 16) as events:
                made = 0
                while made < n:
                    for _ in range(min(per_step, n - made)):
                        session = sup.create_session_nowait(echo_actor)
                        deadlines[session.id] = session.deadline
                        made += 1
                    await trio.sleep(spread / steps)
                async for item in events:
                    assert isinstance(item, Event), item  # no Lagged: the buffer holds all
                    late.append(item.at - deadlines[item.session_id])
                    if len(late) == n:
                        break
        return late

    async def one(deadline: float) -> None:
        _send, recv = trio.open_memory_channel[Any](64)
        with trio.CancelScope(deadline=deadline):
            await recv.receive()
        late.append(trio.current_time() - deadline)

    async with trio.open_nursery() as nursery:
        made = 0
        while made < n:
            for _ in range(min(per_step, n - made)):
                nursery.start_soon(one, trio.current_time() + idle)
                made += 1
            await trio.sleep(spread / steps)
    return late


def _expiry(n: int, reps: int) -> dict[str, Any]:
    timeout, spread = 1.0, 1.0
    pooled: dict[str, list[float]] = {"ours": [], "bare": []}
    per_rep: dict[str, list[dict[str, float]]] = {"ours": [], "bare": []}
    for rep in range(reps):
        for kind in ("ours", "bare") if rep % 2 == 0 else ("bare", "ours"):
            late = trio.run(_expiry_once, kind, n, timeout, spread)
            assert len(late) == n
            pooled[kind].extend(late)
            per_rep[kind].append(_summary(late))
    slack = _default_slack()
    return {
        "n": n,
        "reps": reps,
        "timeout": timeout,
        "deadline_slack": slack,
        "per_rep": per_rep,
        "summary": {kind: _summary(v) for kind, v in pooled.items()},
        "samples": {kind: _thin(sorted(v), 2000) for kind, v in pooled.items()},
    }


def _default_slack() -> float:
    return SupervisorConfig().deadline_slack


def _summary(late: list[float]) -> dict[str, float]:
    return {
        "min": min(late),
        "p50": percentile(late, 50),
        "p90": percentile(late, 90),
        "p99": percentile(late, 99),
        "max": max(late),
        "early": float(sum(1 for x in late if x < 0)),
    }


def _thin(values: list[float], k: int) -> list[float]:
    if len(values) <= k:
        return values
    step = len(values) / k
    return [values[int(i * step)] for i in range(k)] + [values[-1]]


# -- entry point -------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.core", description=__doc__)
    parser.add_argument("mode", choices=["ops", "mass-expiry", "memory", "fanout", "expiry"])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--lookups", type=int, default=20000)
    parser.add_argument("--kind", choices=["ours", "bare"], default="ours")
    parser.add_argument("--method", choices=["rss", "tracemalloc"], default="rss")
    parser.add_argument("--ks", default="1,10,100")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    if args.mode == "ops":
        emit(trio.run(_ops, args.n, args.reps, args.batch, args.lookups, args.seed))
    elif args.mode == "mass-expiry":
        emit(_mass(args.n, args.reps))
    elif args.mode == "memory":
        if args.method == "tracemalloc":
            tracemalloc.start()
        emit(trio.run(_memory, args.n, args.kind, args.method))
    elif args.mode == "fanout":
        ks = [int(k) for k in args.ks.split(",")]
        emit(trio.run(_fanout, ks, args.reps, args.batch))
    else:
        emit(_expiry(args.n, args.reps))


def summarize(raw: dict[str, dict[str, list[float]]]) -> dict[str, dict[str, float]]:
    """Medians and the ratio ours / bare for each operation."""
    out = {}
    for op, by_kind in raw.items():
        ours, bare = median(by_kind["ours"]), median(by_kind["bare"])
        out[op] = {"ours": ours, "bare": bare, "ratio": ours / bare if bare else math.nan}
    return out


if __name__ == "__main__":
    main()
