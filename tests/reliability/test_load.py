"""Load: many concurrent Streamable HTTP sessions on loopback, each calling for a bounded period.

Server and clients share this process (hypercorn's trio worker on 127.0.0.1:<free port>, httpx
clients). Afterwards half the sessions DELETE themselves and the rest are left to expire: every
one must end, the expiring ones on time (idle deadline + slack + a scheduling margin).
Real clock (sockets); every wait is bounded.
"""

from __future__ import annotations

import time
from collections import Counter

import httpx
import pytest
import trio

from supervisor import Event, EventKind, Lagged

from ._support import (
    ACCEPT,
    INIT,
    INITIALIZED,
    Figures,
    http_server,
    open_fds,
    progress,
    rpc_messages,
    rss_bytes,
    session_headers,
    size,
    tool_call,
)

MARGIN = 1.0  # real-clock scheduling margin on a loaded 2-core machine


async def run_load(
    sessions: int, seconds: float, figures: Figures, idle: float = 3.0, pause: float = 0.05
) -> None:
    """``idle`` must exceed the worst gap between two requests of a session under this load
    (queueing included), or sessions expire while their client is still calling."""
    errors: Counter[str] = Counter()
    calls = 0
    latencies: list[float] = []
    fds_before = open_fds()
    async with (
        http_server(max_sessions=sessions + 10, idle_timeout=idle, deadline_slack=0.05) as (
            sup,
            url,
        ),
        sup.subscribe(
            kinds=[EventKind.CLOSED, EventKind.EXPIRED, EventKind.FAILED], buffer=4 * sessions
        ) as events,
    ):
        limits = httpx.Limits(max_connections=sessions, max_keepalive_connections=sessions)
        timeout = httpx.Timeout(30.0)
        async with httpx.AsyncClient(limits=limits, timeout=timeout) as http:
            ids: list[str] = []
            stop_at = trio.current_time() + seconds
            ramp = sessions / 150  # opening 150 sessions a second stays inside capacity

            async def client(i: int) -> None:
                nonlocal calls
                await trio.sleep(ramp * i / sessions)
                try:
                    opened = await http.post(url, json=INIT, headers=ACCEPT)
                    if opened.status_code != 200:
                        errors[f"initialize {opened.status_code}"] += 1
                        return
                    session_id = opened.headers["mcp-session-id"]
                    ids.append(session_id)
                    headers = session_headers(session_id)
                    done = await http.post(url, json=INITIALIZED, headers=headers)
                    if done.status_code != 202:
                        errors[f"initialized {done.status_code}"] += 1
                    n = 0
                    while trio.current_time() < stop_at:
                        n += 1
                        start = trio.current_time()
                        response = await http.post(
                            url, json=tool_call("counter", {}, request_id=n), headers=headers
                        )
                        latencies.append(trio.current_time() - start)
                        if response.status_code != 200:
                            errors[f"call {response.status_code}"] += 1
                            continue
                        [message] = rpc_messages(
                            response.headers.get("content-type", ""), response.content
                        )
                        if message.get("result", {}).get("structuredContent") != {"count": n}:
                            errors["wrong answer"] += 1
                        calls += 1
                        await trio.sleep(pause)
                    if i % 2 == 0:
                        deleted = await http.delete(url, headers=headers)
                        if deleted.status_code != 200:
                            errors[f"delete {deleted.status_code}"] += 1
                except (httpx.HTTPError, OSError, ValueError, KeyError) as exc:
                    errors[type(exc).__name__] += 1

            async def report() -> None:
                while True:
                    await trio.sleep(5)
                    failed = sum(errors.values())
                    progress(f"load: {len(sup)} sessions live, {calls} calls, {failed} errors")

            started = time.perf_counter()
            with trio.fail_after(seconds + 120):
                async with trio.open_nursery() as nursery:
                    reporter = trio.CancelScope()

                    async def reporting() -> None:
                        with reporter:
                            await report()

                    nursery.start_soon(reporting)
                    async with trio.open_nursery() as clients:
                        for i in range(sessions):
                            clients.start_soon(client, i)
                    reporter.cancel()
            load_seconds = time.perf_counter() - started
            peak_rss = rss_bytes()
            # Those not deleted expire idle after their last request.
            last = {s.id: s.last_activity for s in sup.sessions()}
            ended: dict[str, Event] = {}
            with trio.move_on_after(idle + 20 * MARGIN):
                async for item in events:
                    if isinstance(item, Lagged):  # pragma: no cover
                        errors["lagged"] += 1
                        continue
                    ended[item.session_id] = item
                    if len(ended) == len(ids):
                        break
            late = [
                ended[s].at - (t + idle)
                for s, t in last.items()
                if s in ended and ended[s].kind is EventKind.EXPIRED
            ]
            stats = sup.statistics()
            figures.update(
                sessions=sessions,
                seconds=seconds,
                calls=calls,
                calls_per_second=calls / load_seconds,
                errors=sum(errors.values()),
                error_kinds=dict(errors),
                p50_ms=1000 * sorted(latencies)[len(latencies) // 2] if latencies else 0.0,
                p99_ms=1000 * sorted(latencies)[int(len(latencies) * 0.99)] if latencies else 0.0,
                closed=stats.closed_total,
                expired=stats.expired_total,
                failed=stats.failed_total,
                not_ended=len(sup),
                worst_expiry_late_s=max(late, default=0.0),
                peak_rss_mib=peak_rss / 2**20,
            )
            assert not errors, dict(errors)
            assert len(ids) == sessions
            assert len(sup) == 0, f"{len(sup)} sessions did not end"
            assert stats.failed_total == 0
            assert all(e.kind is not EventKind.FAILED for e in ended.values())
            assert min(late, default=0.0) >= -1e-6, "a session expired early"
            assert max(late, default=0.0) <= 0.05 + MARGIN
    await trio.sleep(0.5)
    figures["fds_left"] = open_fds() - fds_before


async def test_load_small(figures: Figures) -> None:
    """The fast-suite version: a few dozen sessions for two seconds."""
    await run_load(40, 2.0, figures)


@pytest.mark.soak
async def test_soak_load(figures: Figures) -> None:
    # Demand stays under what one process on 2 cores serves (~250 requests/s with clients
    # in the same process): each session calls every sessions/200 s.
    sessions = size(40, 300, 2_000)
    pause = sessions / 200
    await run_load(sessions, float(size(2, 20, 60)), figures, idle=max(3.0, 3 * pause), pause=pause)
