"""Leaks: sessions created and closed, or left to expire, leave nothing behind.

After every cycle the registry is empty, the task tree is back to what it was, no file
descriptor is left open, and (soak sizes) RSS stays within 10 % of its level after the first
10 % of the run. Runs on trio's MockClock, so expiry costs no real time.
"""

from __future__ import annotations

import gc
import json
import time
from typing import Any

import pytest
import trio
import trio.testing

from supervisor import SessionContext, open_supervisor

from ._support import (
    ACCEPT,
    INIT,
    INITIALIZED,
    Figures,
    asgi_app,
    asgi_request,
    count_tasks,
    open_fds,
    progress,
    rss_bytes,
    session_headers,
    size,
    tool_call,
)

BATCH = 1_000


async def actor(ctx: SessionContext[Any]) -> None:
    ctx.initialize()
    ctx.metadata["blob"] = "x" * 256  # something per session to leak, if anything leaks

    async def helper() -> None:
        await trio.sleep_forever()

    ctx.start_soon(helper)
    async for msg in ctx.mailbox:
        msg.reply(msg.payload)


def settled_rss() -> int:
    gc.collect()
    return rss_bytes()


async def cycle_in_process(total: int, how: str, figures: Figures) -> None:
    tasks_before = count_tasks()
    fds_before = open_fds()
    started = time.perf_counter()
    rss_warm = None
    async with open_supervisor(max_sessions=BATCH, idle_timeout=5.0) as sup:
        done = 0
        while done < total:
            ids = [sup.create_session_nowait(actor).id for _ in range(BATCH)]
            for session_id in ids[:: BATCH // 10]:
                assert await sup.call(session_id, session_id) == session_id
            if how == "close":
                for session_id in ids:
                    sup.close_session(session_id)
                await trio.sleep(0.001)
            else:
                await trio.sleep(6.0)  # virtual: every one of them expires
            assert len(sup) == 0, f"{len(sup)} sessions left after a {how} batch"
            done += BATCH
            if rss_warm is None and done >= max(total // 10, BATCH):
                rss_warm = settled_rss()
            if done % (total // 5 or BATCH) == 0:
                progress(f"{how}: {done}/{total} sessions, rss {rss_bytes() / 2**20:.0f} MiB")
        stats = sup.statistics()
        assert stats.created_total == total
        if how == "close":
            assert stats.closed_total == total
        else:
            assert stats.expired_total == total
    rss_end = settled_rss()
    assert rss_warm is not None
    growth = rss_end / rss_warm - 1
    figures.update(
        sessions=total,
        registry_left=0,
        tasks_left=count_tasks() - tasks_before,
        fds_left=open_fds() - fds_before,
        rss_after_first_10pct_mib=rss_warm / 2**20,
        rss_end_mib=rss_end / 2**20,
        rss_growth_pct=100 * growth,
        wall_seconds=time.perf_counter() - started,
    )
    assert count_tasks() == tasks_before
    assert open_fds() == fds_before
    if total >= 50_000:  # small runs are dominated by allocator noise
        assert growth <= 0.10, f"RSS grew {100 * growth:.1f} %"


@pytest.mark.parametrize("how", ["close", "expire"])
async def test_in_process_sessions_leave_nothing(
    autojump_clock: trio.testing.MockClock, figures: Figures, how: str
) -> None:
    await cycle_in_process(size(10_000), how, figures)


@pytest.mark.soak
@pytest.mark.parametrize("how", ["close", "expire"])
async def test_soak_in_process_sessions_leave_nothing(
    autojump_clock: trio.testing.MockClock, figures: Figures, how: str
) -> None:
    await cycle_in_process(size(10_000, 20_000, 100_000), how, figures)


async def cycle_http(total: int, figures: Figures) -> None:
    """HTTP sessions (in memory): initialize, one call, then DELETE (even) or expire (odd)."""
    tasks_before = count_tasks()
    fds_before = open_fds()
    started = time.perf_counter()
    rss_warm = None
    batch = 100
    async with asgi_app(max_sessions=batch, idle_timeout=5.0) as (sup, app):
        done = 0
        while done < total:
            ids = []
            for _ in range(batch):
                opened = await asgi_request(app, "POST", headers=ACCEPT, body=_json(INIT))
                assert opened.status == 200
                session_id = opened.headers["mcp-session-id"]
                headers = session_headers(session_id)
                await asgi_request(app, "POST", headers=headers, body=_json(INITIALIZED))
                called = await asgi_request(
                    app, "POST", headers=headers, body=_json(tool_call("counter", {}))
                )
                assert called.status == 200
                ids.append(session_id)
            for session_id in ids[::2]:
                deleted = await asgi_request(app, "DELETE", headers=session_headers(session_id))
                assert deleted.status == 200
            await trio.sleep(6.0)  # the others expire
            assert len(sup) == 0
            done += batch
            if rss_warm is None and done >= max(total // 10, batch):
                rss_warm = settled_rss()
            if done % (total // 5 or batch) == 0:
                progress(f"http: {done}/{total} sessions, rss {rss_bytes() / 2**20:.0f} MiB")
        stats = sup.statistics()
        assert stats.created_total == total
        assert stats.failed_total == 0
    rss_end = settled_rss()
    assert rss_warm is not None
    growth = rss_end / rss_warm - 1
    figures.update(
        sessions=total,
        deleted=stats.closed_total,
        expired=stats.expired_total,
        registry_left=0,
        tasks_left=count_tasks() - tasks_before,
        fds_left=open_fds() - fds_before,
        rss_after_first_10pct_mib=rss_warm / 2**20,
        rss_end_mib=rss_end / 2**20,
        rss_growth_pct=100 * growth,
        wall_seconds=time.perf_counter() - started,
    )
    assert count_tasks() == tasks_before
    assert open_fds() == fds_before
    if total >= 10_000:
        assert growth <= 0.10, f"RSS grew {100 * growth:.1f} %"


async def test_http_sessions_leave_nothing(
    autojump_clock: trio.testing.MockClock, figures: Figures
) -> None:
    await cycle_http(size(1_000), figures)


@pytest.mark.soak
async def test_soak_http_sessions_leave_nothing(
    autojump_clock: trio.testing.MockClock, figures: Figures
) -> None:
    await cycle_http(size(1_000, 5_000, 20_000), figures)


def _json(value: Any) -> bytes:
    return json.dumps(value).encode()
