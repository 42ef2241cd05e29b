"""One million live sessions in one process: memory, creation time, cost growth, stalls, expiry.

Run as ``python -m bench.million [--n N] [--gc default|freeze] [--json]``; bounded (it stops by
itself, in about three minutes at a million on the 2-core machine). One trio run on a `MockClock`
whose rate is 0 while sessions are created (so all of them get the same idle deadline, as
after a reconnect storm), then 1 (real time) for the idle and expiry phases:

1. Per-operation cost with 1,000 live sessions: create, look up, touch, send, call, close, each
   over a batch of 1,000, medians of a few repetitions.
2. Create N sessions through the public API (`Supervisor.create_session_nowait`), timed, with the
   time CPython's collector spent (``gc.callbacks``) and RSS per session.
3. The same per-operation costs with N live sessions.
4. Idle: a probe task that yields in a loop records the longest gap between its turns (the
   event loop's longest stall) for a few seconds.
5. Expiry: the clock reaches the common deadline; every session expires at that moment. The
   probe records the stalls until the last has ended; each actor records when it ended, so
   lateness = end - deadline (none may be early).

``--gc freeze`` calls `gc.freeze()` after every chunk of creations (what a server that holds
this many long-lived sessions would do after warm-up): the collector no longer walks them.
"""

from __future__ import annotations

import argparse
import gc
import math
import time
from typing import Any

import trio
import trio.testing

from supervisor import SessionContext, open_supervisor

from ._util import emit, median, percentile, rss_bytes

_ns = time.perf_counter_ns
_wait = trio.testing.wait_all_tasks_blocked
IDLE = 600.0  # the common idle timeout (trio clock)
CHUNK = 10_000
BATCH = 1_000
REPS = 5
IDLE_WINDOW = 3.0  # seconds of idle probing (real time)


class _Probe:
    """A task that yields in a loop; the gaps between its turns are the event loop's stalls."""

    def __init__(self) -> None:
        self.gaps: list[float] = []
        self.recording = False
        #: The longest gap so far and the CPU time this process used in it: a gap with little
        #: CPU time is the machine's (another process ran), not the event loop's.
        self.longest = (0.0, 0.0)

    async def run(self) -> None:
        wall, cpu = time.perf_counter, time.thread_time
        last, last_cpu = wall(), cpu()
        while True:
            await trio.lowlevel.checkpoint()
            now, now_cpu = wall(), cpu()
            if self.recording:
                gap = now - last
                self.gaps.append(gap)
                if gap > self.longest[0]:
                    self.longest = (gap, now_cpu - last_cpu)
            last, last_cpu = now, now_cpu

    def take(self) -> tuple[list[float], tuple[float, float]]:
        gaps, self.gaps = self.gaps, []
        longest, self.longest = self.longest, (0.0, 0.0)
        return gaps, longest


class _GcTimer:
    """Seconds CPython's collector ran (``gc.callbacks``), and how many collections."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.collections = [0, 0, 0]
        self.longest = 0.0
        self._t0 = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._t0 = time.perf_counter()
        else:
            took = time.perf_counter() - self._t0
            self.seconds += took
            self.longest = max(self.longest, took)
            self.collections[info["generation"]] += 1


async def _ops(sup: Any, ids: list[str], actor: Any) -> dict[str, float]:
    """Nanoseconds per operation, medians over REPS batches of BATCH, with the given live set."""
    out: dict[str, list[float]] = {k: [] for k in ("create", "lookup", "touch", "send", "call")}
    out["close"] = []
    out["lookup_bare_dict"] = []  # the floor of a lookup: a plain dict of the same ids
    step = max(1, len(ids) // BATCH)
    sample = ids[::step][:BATCH]
    bare = {sid: sup.get_session(sid) for sid in ids}
    for _ in range(REPS):
        t0 = _ns()
        new = [sup.create_session_nowait(actor).id for _ in range(BATCH)]
        await _wait()
        out["create"].append((_ns() - t0) / BATCH)
        get, touch, send, call = sup.get_session, sup.touch, sup.send_nowait, sup.call
        t0 = _ns()
        for sid in sample:
            get(sid)
        out["lookup"].append((_ns() - t0) / len(sample))
        get_bare = bare.__getitem__
        t0 = _ns()
        for sid in sample:
            get_bare(sid)
        out["lookup_bare_dict"].append((_ns() - t0) / len(sample))
        t0 = _ns()
        for sid in sample:
            touch(sid)
        out["touch"].append((_ns() - t0) / len(sample))
        t0 = _ns()
        for sid in sample:
            send(sid, None)
        await _wait()
        out["send"].append((_ns() - t0) / len(sample))
        t0 = _ns()
        for sid in sample:
            await call(sid, None)
        out["call"].append((_ns() - t0) / len(sample))
        close = sup.close_session
        t0 = _ns()
        for sid in new:
            close(sid)
        await _wait()
        out["close"].append((_ns() - t0) / BATCH)
    return {k: median(v) for k, v in out.items()}


async def _million(n: int, gc_mode: str, clock: trio.testing.MockClock) -> dict[str, Any]:
    ended: list[float] = []
    all_ended = trio.Event()

    async def actor(ctx: SessionContext[Any]) -> None:
        try:
            async for msg in ctx.mailbox:
                if msg.expects_reply:
                    msg.reply(None)
        finally:
            ended.append(trio.current_time())
            if len(ended) == n and expiring:
                all_ended.set()

    expiring = False

    gc_timer = _GcTimer()
    probe = _Probe()
    result: dict[str, Any] = {"n": n, "gc": gc_mode, "idle_timeout": IDLE}
    async with (
        trio.open_nursery() as nursery,
        open_supervisor(max_sessions=n + 2 * BATCH, idle_timeout=IDLE) as sup,
    ):
        create = sup.create_session_nowait
        small = [create(actor).id for _ in range(BATCH)]
        await _wait()
        result["ops_1k"] = await _ops(sup, small, actor)

        gc.collect()
        rss0 = rss_bytes()
        gc.callbacks.append(gc_timer)
        ids: list[str] = list(small)
        t0 = time.perf_counter()
        for start in range(len(ids), n, CHUNK):
            ids.extend(create(actor).id for _ in range(min(CHUNK, n - start)))
            await _wait()
            if gc_mode == "freeze":
                gc.freeze()
        created = time.perf_counter() - t0
        gc.callbacks.remove(gc_timer)
        assert len(sup) == n, len(sup)
        result["create_seconds"] = created
        result["create_us_per_session"] = created / (n - BATCH) * 1e6
        result["gc_seconds"] = gc_timer.seconds
        result["gc_longest_ms"] = gc_timer.longest * 1e3
        result["gc_collections"] = gc_timer.collections
        result["rss_bytes"] = rss_bytes()
        result["per_session_rss_bytes"] = (result["rss_bytes"] - rss0) / (n - BATCH)

        result["ops_1m"] = await _ops(sup, ids, actor)
        result["ops_ratio"] = {
            k: result["ops_1m"][k] / result["ops_1k"][k]
            for k in result["ops_1k"]
            if k != "lookup_bare_dict"
        }
        result["bare_dict_lookup_growth"] = (
            result["ops_1m"]["lookup_bare_dict"] / result["ops_1k"]["lookup_bare_dict"]
        )
        deadline = max(sup.get_session(sid).deadline for sid in ids)
        earliest = min(sup.get_session(sid).deadline for sid in ids)
        result["deadline_spread_s"] = deadline - earliest

        # Idle: real time flows; nothing is due for a while. (The probe never blocks, so it
        # starts only now: `wait_all_tasks_blocked` above would wait for it forever.)
        nursery.start_soon(probe.run)
        clock.rate = 1.0
        clock.jump(deadline - IDLE_WINDOW - 2.0 - trio.current_time())
        probe.recording = True
        await trio.sleep(IDLE_WINDOW)
        idle_gaps, idle_longest = probe.take()
        probe.recording = False
        await trio.sleep_until(deadline - 0.5)
        ended.clear()  # the ops' own closed sessions
        expiring = True
        gc_timer.seconds = 0.0
        gc_timer.longest = 0.0
        gc.callbacks.append(gc_timer)
        probe.recording = True
        t0 = time.perf_counter()
        with trio.fail_after(600):
            await all_ended.wait()
        expiry_seconds = time.perf_counter() - t0 - 0.5
        probe.recording = False
        gc.callbacks.remove(gc_timer)
        expiry_gaps, expiry_longest = probe.take()
        stats = sup.statistics()
        nursery.cancel_scope.cancel()

    lateness = [t - deadline for t in ended]
    result["stall_idle_ms"] = max(idle_gaps, default=math.nan) * 1e3
    result["stall_idle_p99_ms"] = percentile(idle_gaps, 99) * 1e3
    result["stall_idle_cpu_ms"] = idle_longest[1] * 1e3
    result["stall_expiry_ms"] = max(expiry_gaps, default=math.nan) * 1e3
    result["stall_expiry_p99_ms"] = percentile(expiry_gaps, 99) * 1e3
    result["stall_expiry_cpu_ms"] = expiry_longest[1] * 1e3
    result["probe_turns_expiry"] = len(expiry_gaps)
    result["expiry_seconds"] = expiry_seconds
    result["expired"] = stats.expired_total
    result["early"] = sum(1 for late in lateness if late < 0)
    result["lateness_s"] = {f"p{q}": percentile(lateness, q) for q in (0, 1, 10, 50, 90, 99, 100)}
    result["expiry_gc_seconds"] = gc_timer.seconds
    result["expiry_gc_longest_ms"] = gc_timer.longest * 1e3
    return result


def run(n: int, gc_mode: str) -> dict[str, Any]:
    clock = trio.testing.MockClock(rate=0.0)
    return trio.run(_million, n, gc_mode, clock, clock=clock)


def _print(result: dict[str, Any]) -> None:
    n = result["n"]
    print(f"{n:,} sessions, gc={result['gc']}")
    print(
        f"  create: {result['create_seconds']:.1f} s "
        f"({result['create_us_per_session']:.1f} us each; collector "
        f"{result['gc_seconds']:.1f} s, longest {result['gc_longest_ms']:.0f} ms)"
    )
    print(f"  RSS per session: {result['per_session_rss_bytes']:,.0f} B")
    for op in result["ops_ratio"]:
        print(
            f"  {op:7s} {result['ops_1k'][op] / 1e3:7.2f} us at 1k, "
            f"{result['ops_1m'][op] / 1e3:7.2f} us at {n:,}: {result['ops_ratio'][op]:.2f}x"
        )
    print(f"  (a plain dict's lookup grows {result['bare_dict_lookup_growth']:.2f}x)")
    print(
        f"  longest stall: idle {result['stall_idle_ms']:.1f} ms "
        f"(CPU {result['stall_idle_cpu_ms']:.1f} ms), "
        f"all expiring {result['stall_expiry_ms']:.1f} ms "
        f"(CPU {result['stall_expiry_cpu_ms']:.1f} ms; "
        f"p99 {result['stall_expiry_p99_ms']:.2f} ms, {result['probe_turns_expiry']:,} turns)"
    )
    late = result["lateness_s"]
    print(
        f"  expiry: {result['expired']:,} expired in {result['expiry_seconds']:.1f} s, "
        f"{result['early']} early; lateness p50 {late['p50']:.2f} s, p99 {late['p99']:.2f} s, "
        f"max {late['p100']:.2f} s"
    )
    print(
        f"  collector while expiring: {result['expiry_gc_seconds']:.2f} s, "
        f"longest {result['expiry_gc_longest_ms']:.0f} ms"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.million", description=__doc__)
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--gc", choices=["default", "freeze"], default="default")
    parser.add_argument("--json", action="store_true", help="print one JSON document only")
    args = parser.parse_args(argv)
    if args.n < 2 * BATCH:
        parser.error(f"--n must be at least {2 * BATCH}")
    result = run(args.n, args.gc)
    if args.json:
        emit(result)
    else:
        _print(result)


if __name__ == "__main__":
    main()
