"""Load: many concurrent Streamable HTTP sessions on loopback, each calling for a bounded period.

The server (hypercorn's trio worker on 127.0.0.1:<free port>, via `serve_http`) runs in this
process; the clients run in subprocesses (raw HTTP/1.1 with h11 over trio sockets, see
`run_load_clients`), so the server's process holds only the server. Afterwards half the sessions
DELETE themselves and the rest are left to expire: every one must end, the expiring ones on time
(idle deadline + slack + a scheduling margin). Real clock (sockets); every wait is bounded.
"""

from __future__ import annotations

import time

import pytest
import trio

from supervisor import Event, EventKind, Lagged

from ._support import (
    Figures,
    http_server,
    open_fds,
    progress,
    rss_bytes,
    run_load_clients,
    size,
)

MARGIN = 1.0  # real-clock scheduling margin on a loaded 2-core machine


async def run_load(
    sessions: int, seconds: float, figures: Figures, idle: float = 3.0, pause: float = 0.05
) -> None:
    """``idle`` must exceed the worst gap between two requests of a session under this load
    (queueing included), or sessions expire while their client is still calling."""
    fds_before = open_fds()
    ramp = sessions / 150  # opening 150 sessions a second stays inside capacity
    processes = 1 if sessions <= 500 else 2
    async with (
        http_server(max_sessions=sessions + 10, idle_timeout=idle, deadline_slack=0.05) as (
            sup,
            url,
        ),
        sup.subscribe(
            kinds=[EventKind.CLOSED, EventKind.EXPIRED, EventKind.FAILED], buffer=4 * sessions
        ) as events,
    ):

        async def report() -> None:
            while True:
                await trio.sleep(5)
                progress(f"load: {len(sup)} sessions live")

        started = time.perf_counter()
        with trio.fail_after(ramp + seconds + 120):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(report)
                result = await run_load_clients(
                    url, sessions, ramp + seconds, pause, ramp=ramp, processes=processes
                )
                nursery.cancel_scope.cancel()
        load_seconds = time.perf_counter() - started
        peak_rss = rss_bytes()
        errors = dict(result.errors)
        ids = result.ids
        # Those not deleted expire idle after their last request.
        last = {s.id: s.last_activity for s in sup.sessions()}
        ended: dict[str, Event] = {}
        with trio.move_on_after(idle + 20 * MARGIN):
            async for item in events:
                if isinstance(item, Lagged):  # pragma: no cover
                    errors["lagged"] = errors.get("lagged", 0) + 1
                    continue
                ended[item.session_id] = item
                if len(ended) == len(ids):
                    break
        late = [
            ended[s].at - (t + idle)
            for s, t in last.items()
            if s in ended and ended[s].kind is EventKind.EXPIRED
        ]
        latencies = sorted(result.latencies)
        stats = sup.statistics()
        figures.update(
            sessions=sessions,
            seconds=seconds,
            client_processes=processes,
            calls=result.calls,
            calls_per_second=result.calls / load_seconds,
            errors=sum(errors.values()),
            error_kinds=errors,
            p50_ms=1000 * latencies[len(latencies) // 2] if latencies else 0.0,
            p99_ms=1000 * latencies[int(len(latencies) * 0.99)] if latencies else 0.0,
            max_ms=1000 * latencies[-1] if latencies else 0.0,
            load_s=load_seconds,
            closed=stats.closed_total,
            expired=stats.expired_total,
            failed=stats.failed_total,
            not_ended=len(sup),
            worst_expiry_late_s=max(late, default=0.0),
            peak_rss_mib=peak_rss / 2**20,
        )
        assert not errors, errors
        assert len(ids) == sessions
        assert len(sup) == 0, f"{len(sup)} sessions did not end"
        assert stats.failed_total == 0
        assert all(e.kind is not EventKind.FAILED for e in ended.values())
        deleted = set(result.deleted)
        assert all(ended[s].kind is EventKind.CLOSED for s in deleted)
        assert all(ended[s].kind is EventKind.EXPIRED for s in set(ids) - deleted)
        assert min(late, default=0.0) >= -1e-6, "a session expired early"
        assert max(late, default=0.0) <= 0.05 + MARGIN
    await trio.sleep(0.5)
    figures["fds_left"] = open_fds() - fds_before


async def test_load_small(figures: Figures) -> None:
    """The fast-suite version: a few dozen sessions for two seconds."""
    await run_load(40, 2.0, figures)


@pytest.mark.soak
async def test_soak_load(figures: Figures) -> None:
    # Demand: each session calls every sessions/200 s, 200 calls a second in all (the server
    # alone serves about 900 a second on one core of a 2-core machine).
    sessions = size(40, 300, 2_000)
    pause = sessions / 200
    await run_load(sessions, float(size(2, 20, 60)), figures, idle=max(3.0, 3 * pause), pause=pause)
