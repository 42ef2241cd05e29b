"""Floods: a full mailbox, a stuck subscriber, half-open initialize storms and slow bodies.

In-process and in-memory HTTP (the ASGI app driven directly), on trio's MockClock where time
matters, so a 30-minute idle timeout or a 1-byte-per-second body costs no real time.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from typing import Any

import trio
import trio.lowlevel
import trio.testing

from supervisor import (
    EventKind,
    Lagged,
    MailboxFull,
    SessionContext,
    open_supervisor,
)

from ._support import (
    ACCEPT,
    INIT,
    INITIALIZED,
    AsgiResponse,
    Figures,
    asgi_app,
    asgi_request,
    http_scope,
    session_headers,
    size,
    slow_server,
    tool_call,
)

BACKPRESSURE = (429, 503)


def _json(value: Any) -> bytes:
    return json.dumps(value).encode()


async def open_session(app: Any) -> str:
    opened = await asgi_request(app, "POST", headers=ACCEPT, body=_json(INIT))
    assert opened.status == 200, opened
    session_id = opened.headers["mcp-session-id"]
    done = await asgi_request(
        app, "POST", headers=session_headers(session_id), body=_json(INITIALIZED)
    )
    assert done.status == 202, done
    return session_id


def assert_backpressure(response: AsgiResponse) -> None:
    assert response.status in BACKPRESSURE, response
    assert int(response.headers["retry-after"]) >= 0
    assert "error" in response.json()


# -- in-process mailbox ---------------------------------------------------------------------------


async def slow_reader(ctx: SessionContext[Any]) -> None:
    ctx.initialize()
    async for msg in ctx.mailbox:
        await trio.sleep(1.0)
        if msg.expects_reply:
            msg.reply(msg.payload)


async def quick(ctx: SessionContext[Any]) -> None:
    ctx.initialize()
    async for msg in ctx.mailbox:
        msg.reply(msg.payload)


async def test_full_mailbox_is_mailbox_full_and_others_unaffected(
    autojump_clock: trio.testing.MockClock, figures: Figures
) -> None:
    mailbox = 16
    async with open_supervisor(max_sessions=8, mailbox_size=mailbox) as sup:
        flooded = sup.create_session_nowait(slow_reader)
        others = [sup.create_session_nowait(quick) for _ in range(4)]
        accepted = refused = 0
        for i in range(10 * mailbox):
            try:
                sup.send_nowait(flooded.id, i)
                accepted += 1
            except MailboxFull:
                refused += 1
        # The actor may take one message before the buffer fills; never more than that.
        assert mailbox <= accepted <= mailbox + 1
        assert flooded.mailbox_depth <= mailbox
        start = trio.current_time()
        for other in others:
            assert await sup.call(other.id, "hi") == "hi"
        assert trio.current_time() == start  # not one virtual tick of delay
        # A blocking sender waits (backpressure) and is served once the mailbox drains.
        with trio.fail_after(2 * mailbox + 5):
            assert await sup.call(flooded.id, "last") == "last"
        assert sup.statistics().failed_total == 0
    figures.update(mailbox_size=mailbox, accepted=accepted, refused_mailbox_full=refused)


# -- HTTP flood of one session --------------------------------------------------------------------


async def test_http_flood_of_one_session_gets_backpressure(
    autojump_clock: trio.testing.MockClock, figures: Figures
) -> None:
    """A client firing many concurrent requests at one session gets 429/503 + Retry-After."""
    mailbox = 8
    flood = 8 * mailbox
    async with asgi_app(slow_server, max_sessions=4, mailbox_size=mailbox) as (sup, app):
        victim = await open_session(app)
        bystander = await open_session(app)
        statuses: Counter[int] = Counter()
        responses: list[AsgiResponse] = []

        async def one(i: int) -> None:
            response = await asgi_request(
                app,
                "POST",
                headers=session_headers(victim),
                body=_json(tool_call("sleep", {"seconds": 5}, request_id=100 + i)),
                answer_within=600,
            )
            statuses[response.status or 0] += 1
            responses.append(response)

        async with trio.open_nursery() as nursery:
            for i in range(flood):
                nursery.start_soon(one, i)
            await trio.sleep(0.5)
            # The bystander is served at once while the victim is flooded.
            start = trio.current_time()
            answer = await asgi_request(
                app, "POST", headers=session_headers(bystander), body=_json(tool_call("echo", {}))
            )
            assert answer.status == 200
            bystander_latency = trio.current_time() - start
        assert bystander_latency < 0.1
        assert 500 not in statuses
        figures.update(
            concurrent_requests=flood,
            mailbox_size=mailbox,
            answered_200=statuses[200],
            backpressure_429_503=sum(statuses[s] for s in BACKPRESSURE),
            bystander_latency_s=bystander_latency,
        )
        refused = [r for r in responses if r.status in BACKPRESSURE]
        assert refused, f"no backpressure: {dict(statuses)}"
        for response in refused:
            assert_backpressure(response)
        assert statuses[200] + len(refused) == flood
        assert sup.has_session(victim)


# -- a subscriber that never reads ----------------------------------------------------------------


async def test_stuck_subscriber_never_slows_the_supervisor(figures: Figures) -> None:
    n = size(10_000, 50_000, 100_000)
    # Baseline: the same churn with a subscriber that keeps up.
    baseline_start = time.perf_counter()
    async with open_supervisor(max_sessions=1000) as sup, sup.subscribe(buffer=16) as reader:
        received = 0

        async def read() -> None:
            nonlocal received
            async for _item in reader:
                received += 1

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read)
            for _ in range(n // 1000):
                ids = [sup.create_session_nowait(quick).id for _ in range(1000)]
                await trio.lowlevel.checkpoint()
                for session_id in ids:
                    sup.close_session(session_id)
                while len(sup):
                    await trio.lowlevel.checkpoint()
            await sup.shutdown()
    baseline = time.perf_counter() - baseline_start

    start = time.perf_counter()
    async with open_supervisor(max_sessions=1000) as sup:
        stuck = sup.subscribe(buffer=16)
        for _ in range(n // 1000):
            ids = [sup.create_session_nowait(quick).id for _ in range(1000)]
            await trio.lowlevel.checkpoint()
            for session_id in ids:
                sup.close_session(session_id)
            while len(sup):
                await trio.lowlevel.checkpoint()
        stats = sup.statistics()
        # Memory stays bounded: only `buffer` events are held, the rest counted as dropped.
        published = stuck.dropped_total + 16
        assert stats.events_dropped_total == stuck.dropped_total
        assert stuck.dropped_total > n
        with trio.fail_after(5):
            await sup.shutdown()  # never waits for the stuck reader
    stuck_time = time.perf_counter() - start
    first = stuck.receive_nowait()
    assert isinstance(first, Lagged) and first.missed == stuck.dropped_total
    later = [stuck.receive_nowait() for _ in range(16)]
    assert all(not isinstance(item, Lagged) for item in later)
    assert later[-1].kind is EventKind.CLOSED  # type: ignore[union-attr]
    stuck.close()
    # Generous bound for a shared 2-core machine; typically within 10-20 % of the baseline.
    assert stuck_time <= 2.0 * baseline + 0.5, (stuck_time, baseline)
    figures.update(
        sessions=n,
        events_published=published,
        events_dropped=stuck.dropped_total,
        baseline_s=baseline,
        with_stuck_subscriber_s=stuck_time,
        ratio=stuck_time / baseline,
    )


# -- half-open initialize storms ------------------------------------------------------------------


async def test_half_open_initialize_flood_cannot_lock_out_a_client(
    autojump_clock: trio.testing.MockClock, figures: Figures
) -> None:
    """10,000 initialize requests that never finish the handshake (no notifications/initialized,
    never another request) must not keep a legitimate client out longer than the init deadline."""
    attackers = size(10_000)
    capacity = 100
    init_timeout = 5.0
    async with asgi_app(max_sessions=capacity, init_timeout=init_timeout, idle_timeout=1800.0) as (
        sup,
        app,
    ):
        statuses: Counter[int] = Counter()
        start = trio.current_time()
        for _ in range(attackers):
            response = await asgi_request(app, "POST", headers=ACCEPT, body=_json(INIT))
            statuses[response.status or 0] += 1
            if response.status == 503:
                assert "retry-after" in response.headers
        flood_done = trio.current_time()
        assert 500 not in statuses
        # The legitimate client: retries on 503, honouring Retry-After.
        attempts = 0
        with trio.move_on_after(3600) as gave_up:
            while True:
                attempts += 1
                response = await asgi_request(app, "POST", headers=ACCEPT, body=_json(INIT))
                if response.status == 200:
                    break
                assert response.status == 503, response
                await trio.sleep(float(response.headers["retry-after"]))
        locked_out = trio.current_time() - start
        figures.update(
            half_open_requests=attackers,
            capacity=capacity,
            admitted=statuses[200],
            refused_503=statuses[503],
            init_timeout_s=init_timeout,
            legit_locked_out_s=locked_out,
            legit_attempts=attempts,
        )
        assert not gave_up.cancelled_caught, "locked out for an hour"
        assert flood_done - start < init_timeout  # the flood itself is quick (virtual time)
        assert locked_out <= init_timeout + 1.0 + sup.config.deadline_slack, locked_out


# -- slow bodies (slowloris) ----------------------------------------------------------------------


async def test_slow_body_is_cut_off_by_a_read_timeout(
    autojump_clock: trio.testing.MockClock, figures: Figures
) -> None:
    """A POST whose body trickles in (1 byte a second) or stalls is cut off, not read forever."""
    async with asgi_app() as (sup, app):
        results = {variant: await slow_post(app, variant) for variant in ("trickle", "stall")}
        figures.update(trickle_cut_after_s=results["trickle"], stall_cut_after_s=results["stall"])
        assert len(sup) == 0
        for variant, seconds in results.items():
            assert seconds < 120, f"{variant}: body still being read after {seconds:.0f} s"


async def slow_post(app: Any, variant: str) -> float:
    """POST with a declared 100 kB body that trickles (1 byte/s) or stalls; returns how long
    (virtual seconds, at most an hour) the app kept reading it."""
    sent = 0
    started = trio.current_time()

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if variant == "stall" and sent >= 10:
            await trio.sleep_forever()
        await trio.sleep(1.0)
        sent += 1
        return {"type": "http.request", "body": b" ", "more_body": True}

    async def send(message: Any) -> None:
        pass

    headers = {**ACCEPT, "content-length": "100000"}
    with trio.move_on_after(3600):
        await app(http_scope("POST", "/mcp", headers), receive, send)
    return trio.current_time() - started
