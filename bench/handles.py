"""State-handle benchmarks: a handle beside a plain core session, measured in the same process.

Run as ``python -m bench.handles MODE [options]``; it prints one JSON document on stdout. The
orchestrator (`bench.run`) starts one fresh subprocess per configuration.

A state handle (`supervisor.mcp.state_handles`) is a session of the core whose actor runs tool
bodies. The baseline ("base") is what a handle is built on: a plain core session with an echo
actor (``create_session_nowait``, ``sup.call``). So every ratio is the price of the handle layer
over the core, not over bare trio (see `bench.core` for that).

Modes:

``ops --n N``
    With N live handles *and* N live plain sessions in one supervisor (one trio run), repeat
    (alternating which goes first): open a batch (`StateHandles.open`, until every new actor
    blocks) beside ``create_session_nowait(echo_actor)``; the same through the ``open_session``
    tool (``call_session_tool("open_session", None)``, as a low-level server's handler calls
    it); a call through a handle along the path a tool call takes, without the wire
    (``call_with_session({"session": h}, body)`` inside `serving_stateless`, the body returning
    a prebuilt result) beside ``await sup.call(sid, None)``; close the batch
    (`StateHandles.close` beside ``close_session``). Nanoseconds per operation.
``mass-expiry --n N``
    N handles (or N plain sessions) whose idle deadlines all pass at once (trio's `MockClock` at
    rate 1 jumped past them); the time until all have ended, per handle. One trio run per
    repetition, handles and sessions alternating.
``memory --n N --kind ours|base --method rss|tracemalloc``
    Bytes per idle handle (or plain session): the RSS or tracemalloc delta of opening N in this
    fresh process.
"""

from __future__ import annotations

import argparse
import gc
import math
import random
import time
import tracemalloc
from collections import defaultdict
from typing import Any

import mcp_types as types
import trio
import trio.testing

from supervisor import Transport, open_supervisor
from supervisor.mcp import (
    call_session_tool,
    call_with_session,
    serving_stateless,
    state_handles,
)

from ._util import emit, median, rss_bytes
from .core import CHUNK, IDLE, echo_actor

_ns = time.perf_counter_ns
_wait = trio.testing.wait_all_tasks_blocked
KINDS = ("ours", "base")

_RESULT = types.CallToolResult(content=[types.TextContent(text="ok")])


async def _body(arguments: dict[str, Any]) -> types.CallToolResult:
    """The trivial tool body: returns a prebuilt result."""
    return _RESULT


# -- ops ---------------------------------------------------------------------------------------


async def _ops(n: int, reps: int, batch: int, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    raw: dict[str, dict[str, list[float]]] = defaultdict(lambda: {"ours": [], "base": []})
    async with open_supervisor(max_sessions=2 * n + 3 * batch + 16, idle_timeout=IDLE) as sup:
        handles = state_handles(sup)
        create = sup.create_session_nowait
        http = Transport.HTTP

        def open_handle() -> str:
            return handles.open(principal=None, transport=http).id

        handle_ids: list[str] = []
        session_ids: list[str] = []
        for start in range(0, n, CHUNK):
            k = min(CHUNK, n - start)
            handle_ids.extend(open_handle() for _ in range(k))
            session_ids.extend(create(echo_actor).id for _ in range(k))
            await _wait()
        await _wait()

        async def open_ours() -> tuple[float, list[str]]:
            t0 = _ns()
            new = [open_handle() for _ in range(batch)]
            await _wait()
            return (_ns() - t0) / batch, new

        async def open_tool() -> tuple[float, list[str]]:
            t0 = _ns()
            results = [await call_session_tool("open_session", None) for _ in range(batch)]
            await _wait()
            elapsed = (_ns() - t0) / batch
            new = []
            for r in results:
                assert r is not None and not r.is_error and r.structured_content, r
                new.append(r.structured_content["session"])
            return elapsed, new

        async def open_base() -> tuple[float, list[str]]:
            t0 = _ns()
            new = [create(echo_actor).id for _ in range(batch)]
            await _wait()
            return (_ns() - t0) / batch, new

        async def close_ours(new: list[str]) -> float:
            close = handles.close
            t0 = _ns()
            for h in new:
                close(h, principal=None)
            await _wait()
            return (_ns() - t0) / len(new)

        async def close_base(new: list[str]) -> float:
            close = sup.close_session
            t0 = _ns()
            for sid in new:
                close(sid)
            await _wait()
            return (_ns() - t0) / len(new)

        async def call_ours(sample: list[str]) -> float:
            args = [{"session": h} for h in sample]
            t0 = _ns()
            for a in args:
                result = await call_with_session(a, _body)
            elapsed = (_ns() - t0) / len(sample)
            assert result is _RESULT, result
            return elapsed

        async def call_base(sample: list[str]) -> float:
            call = sup.call
            t0 = _ns()
            for sid in sample:
                await call(sid, None)
            return (_ns() - t0) / len(sample)

        with serving_stateless(sup, None, http):
            for rep in range(reps):
                ours_first = rep % 2 == 1
                h_sample = rng.sample(handle_ids, min(batch, n))
                s_sample = rng.sample(session_ids, min(batch, n))
                if ours_first:
                    o, new_o = await open_ours()
                    b, new_b = await open_base()
                    t, new_t = await open_tool()
                else:
                    t, new_t = await open_tool()
                    b, new_b = await open_base()
                    o, new_o = await open_ours()
                raw["open"]["ours"].append(o)
                raw["open"]["base"].append(b)
                raw["open_tool"]["ours"].append(t)
                raw["open_tool"]["base"].append(b)
                await close_ours(new_t)
                if ours_first:
                    raw["close"]["ours"].append(await close_ours(new_o))
                    raw["close"]["base"].append(await close_base(new_b))
                else:
                    raw["close"]["base"].append(await close_base(new_b))
                    raw["close"]["ours"].append(await close_ours(new_o))
                await trio.sleep(0.02)  # > deadline_slack, as in bench.core
                if ours_first:
                    raw["call"]["ours"].append(await call_ours(h_sample))
                    raw["call"]["base"].append(await call_base(s_sample))
                else:
                    raw["call"]["base"].append(await call_base(s_sample))
                    raw["call"]["ours"].append(await call_ours(h_sample))
                await trio.sleep(0.02)
        assert len(sup) == 2 * n, len(sup)
        sup.close_all()
    return {"n": n, "reps": reps, "batch": batch, "raw": dict(raw)}


# -- mass expiry -------------------------------------------------------------------------------


async def _mass_once(kind: str, n: int, clock: trio.testing.MockClock) -> float:
    timeout = 10.0
    async with open_supervisor(max_sessions=n, idle_timeout=timeout) as sup:
        handles = state_handles(sup)
        for start in range(0, n, CHUNK):
            for _ in range(min(CHUNK, n - start)):
                if kind == "ours":
                    handles.open(principal=None, transport=Transport.HTTP)
                else:
                    sup.create_session_nowait(echo_actor)
            await _wait()
        gc.collect()
        clock.jump(timeout + 1.0)
        t0 = _ns()
        await _wait()
        elapsed = _ns() - t0
        assert len(sup) == 0, len(sup)
        assert sup.statistics().expired_total == n
        if kind == "ours":
            assert handles.remembered == min(n, handles.remember)
    return elapsed / n


def _mass(n: int, reps: int) -> dict[str, Any]:
    out: dict[str, list[float]] = {"ours": [], "base": []}
    for rep in range(reps):
        for kind in ("ours", "base") if rep % 2 else ("base", "ours"):
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

    async with open_supervisor(max_sessions=n + 200, idle_timeout=IDLE) as sup:
        handles = state_handles(sup, remember=0)  # closing the warm-up handles keeps no memory
        # Warm up both paths (lazy imports, free lists, the registry's first resizes).
        for _ in range(100):
            handles.close(handles.open(principal=None, transport=Transport.HTTP).id, principal=None)
            sup.close_session(sup.create_session_nowait(echo_actor).id)
        await _wait()
        before = measure()
        for start in range(0, n, CHUNK):
            for _ in range(min(CHUNK, n - start)):
                if kind == "ours":
                    handles.open(principal=None, transport=Transport.HTTP)
                else:
                    sup.create_session_nowait(echo_actor)
            await _wait()
        after = measure()
        assert len(sup) == n
        sup.close_all()
    return {"n": n, "kind": kind, "method": method, "bytes_per_session": (after - before) / n}


# -- entry point -------------------------------------------------------------------------------


def summarize(raw: dict[str, dict[str, list[float]]]) -> dict[str, dict[str, float]]:
    """Medians and the ratio handle / plain session for each operation."""
    out = {}
    for op, by_kind in raw.items():
        ours, base = median(by_kind["ours"]), median(by_kind["base"])
        out[op] = {"ours": ours, "base": base, "ratio": ours / base if base else math.nan}
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.handles", description=__doc__)
    parser.add_argument("mode", choices=["ops", "mass-expiry", "memory"])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--kind", choices=KINDS, default="ours")
    parser.add_argument("--method", choices=["rss", "tracemalloc"], default="rss")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    if args.mode == "ops":
        emit(trio.run(_ops, args.n, args.reps, args.batch, args.seed))
    elif args.mode == "mass-expiry":
        emit(_mass(args.n, args.reps))
    else:
        if args.method == "tracemalloc":
            tracemalloc.start()
        emit(trio.run(_memory, args.n, args.kind, args.method))


if __name__ == "__main__":
    main()
