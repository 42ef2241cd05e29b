"""Cancellation everywhere: a call cancelled at every await point leaves nothing behind.

For each actor behaviour, the call is cancelled after k scheduling rounds, for k = 0, 1, 2, ...
until the call completes before the cancellation arrives (several times in a row): so every await
point of the caller (waiting for room in a full mailbox, waiting for the reply, the reply already
sent but the caller not yet resumed) is hit. After each attempt the session has nothing in flight,
expires exactly on its idle deadline (so it is not stuck), and its slot is free again
(``max_sessions=1``: a leaked slot would refuse the next session).

The same sweep runs over HTTP: the ASGI request task is cancelled at every await point (what the
server does when a client disconnects), including while the response is being written.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import pytest
import trio
import trio.lowlevel
import trio.testing

from supervisor import (
    EventKind,
    Lagged,
    Message,
    SessionContext,
    Supervisor,
    open_supervisor,
)
from supervisor.mcp import McpHttpApp

from ._support import (
    ACCEPT,
    INIT,
    INITIALIZED,
    Figures,
    asgi_request,
    http_scope,
    session_headers,
    slow_server,
    tool_call,
)

IDLE = 10.0
SLACK = 0.01
WORK = 5  # checkpoints an actor spends on a message
REPEATS = 3  # attempts per cancellation point


async def rounds(n: int) -> None:
    for _ in range(n):
        await trio.lowlevel.checkpoint()


async def _handle(ctx: SessionContext[Any], msg: Message[Any], behaviour: str) -> None:
    if behaviour == "reply-at-once":
        msg.reply("done")
    elif behaviour == "reply-after-work":
        await rounds(WORK)
        msg.reply("done")
    elif behaviour == "reply-then-work":
        msg.reply("done")  # the reply is in flight while the actor keeps running
        await rounds(WORK)
    elif behaviour == "fail":
        await rounds(2)
        msg.fail(ValueError("refused"))
    elif behaviour == "busy":
        with ctx.busy():
            await rounds(WORK)
        msg.reply("done")
    elif behaviour == "reply-from-task":

        async def later() -> None:
            await rounds(WORK)
            msg.reply("done")

        ctx.start_soon(later)
    elif behaviour == "mailbox-full":
        await rounds(WORK)
        if msg.expects_reply:
            msg.reply("done")
    else:  # pragma: no cover
        raise AssertionError(behaviour)


def make_actor(behaviour: str) -> Callable[[SessionContext[Any]], Awaitable[None]]:
    async def actor(ctx: SessionContext[Any]) -> None:
        ctx.initialize()
        async for msg in ctx.mailbox:
            await _handle(ctx, msg, behaviour)

    return actor


BEHAVIOURS = [
    "reply-at-once",
    "reply-after-work",
    "reply-then-work",
    "fail",
    "busy",
    "reply-from-task",
    "mailbox-full",
]


async def cancel_after(k: int, scope: trio.CancelScope) -> None:
    await rounds(k)
    scope.cancel()


async def sweep(attempt: Callable[[int], Awaitable[bool]], outcomes: Counter[str]) -> int:
    """Run ``attempt(k)`` (cancel after k rounds) for k = 0, 1, ... until the operation completes
    every time for two k in a row; each k several times (trio varies the order within a round)."""
    k = 0
    clean = 0
    total = 0
    while clean < 2:
        assert k < 500, "the operation never completed"
        cancelled = [await attempt(k) for _ in range(REPEATS)]
        total += REPEATS
        outcomes["cancelled"] += sum(cancelled)
        outcomes["completed"] += REPEATS - sum(cancelled)
        clean = 0 if any(cancelled) else clean + 1
        k += 1
    outcomes["rounds"] = k
    return total


async def check_expires_on_time(sup: Supervisor, session_id: str) -> None:
    """Nothing in flight; the session ends by idle timeout exactly on its deadline."""
    await trio.sleep(0.001)  # let the actor finish what it was doing (virtual time)
    session = sup.get_session(session_id)
    assert session.in_flight == 0, "a cancelled call left the session in flight"
    last = session.last_activity
    async with sup.subscribe(kinds=[EventKind.EXPIRED, EventKind.CLOSED, EventKind.FAILED]) as ev:
        with trio.fail_after(IDLE * 3):
            async for item in ev:
                if isinstance(item, Lagged) or item.session_id != session_id:
                    continue
                assert item.kind is EventKind.EXPIRED, item
                assert item.reason == "idle-timeout"
                late = item.at - (last + IDLE)
                assert 0 <= late <= SLACK + 1e-9, late
                break
    assert not sup.has_session(session_id)


@pytest.mark.parametrize("behaviour", BEHAVIOURS)
async def test_call_cancelled_at_every_await_point(
    autojump_clock: trio.testing.MockClock, figures: Figures, behaviour: str
) -> None:
    outcomes = Counter[str]()
    async with open_supervisor(
        max_sessions=1, idle_timeout=IDLE, deadline_slack=SLACK, mailbox_size=1
    ) as sup:

        async def attempt(k: int) -> bool:
            # max_sessions=1: this raises CapacityError if an earlier attempt leaked the slot.
            session = sup.create_session_nowait(make_actor(behaviour))
            await trio.lowlevel.checkpoint()
            if behaviour == "mailbox-full":
                sup.send_nowait(session.id, "first")  # taken by the actor, which works on it
                await rounds(1)
                sup.send_nowait(session.id, "second")  # fills the mailbox: the call must wait
            scope = trio.CancelScope()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(cancel_after, k, scope)
                with scope:
                    try:
                        answer = await sup.call(session.id, "work")
                    except ValueError:
                        answer = "failed"
                nursery.cancel_scope.cancel()
            if not scope.cancelled_caught:
                assert answer == ("failed" if behaviour == "fail" else "done")
            await check_expires_on_time(sup, session.id)
            return scope.cancelled_caught

        attempts = await sweep(attempt, outcomes)
        assert len(sup) == 0
        assert sup.statistics().expired_total == attempts
    figures.update(
        rounds_swept=outcomes["rounds"],
        cancelled=outcomes["cancelled"],
        completed=outcomes["completed"],
        stuck_in_flight=0,
        leaked_slots=0,
    )


async def test_http_request_cancelled_at_every_await_point(
    autojump_clock: trio.testing.MockClock, figures: Figures
) -> None:
    """Cancel the ASGI request task of a tools/call at every await point, reply included."""
    outcomes = Counter[str]()
    async with open_supervisor(max_sessions=1, idle_timeout=IDLE, deadline_slack=SLACK) as sup:
        app = McpHttpApp(sup, slow_server)

        async def attempt(k: int) -> bool:
            opened = await asgi_request(app, "POST", headers=ACCEPT, body=_json(INIT))
            assert opened.status == 200, opened
            session_id = opened.headers["mcp-session-id"]
            headers = session_headers(session_id)
            done = await asgi_request(app, "POST", headers=headers, body=_json(INITIALIZED))
            assert done.status == 202
            status: list[int] = []
            body = [_json(tool_call("sleep", {"seconds": 0}))]

            async def receive() -> dict[str, Any]:
                if body:
                    return {"type": "http.request", "body": body.pop()}
                await trio.sleep_forever()  # the client stays until the request task is cancelled
                raise AssertionError  # pragma: no cover

            async def send(message: MutableMapping[str, Any]) -> None:
                if message["type"] == "http.response.start":
                    status.append(message["status"])
                await rounds(2)  # a slow client: the reply is in flight for a while

            scope = trio.CancelScope()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(cancel_after, k, scope)
                with scope:
                    await app(http_scope("POST", "/mcp", headers), receive, send)
                nursery.cancel_scope.cancel()
            if scope.cancelled_caught and status:
                outcomes["cancelled-while-replying"] += 1
            elif not scope.cancelled_caught:
                assert status == [200]
            await check_expires_on_time(sup, session_id)
            return scope.cancelled_caught

        await sweep(attempt, outcomes)
        assert len(sup) == 0
    figures.update(
        rounds_swept=outcomes["rounds"],
        cancelled=outcomes["cancelled"],
        cancelled_while_replying=outcomes["cancelled-while-replying"],
        completed=outcomes["completed"],
        stuck_in_flight=0,
        leaked_slots=0,
    )


def _json(value: Any) -> bytes:
    return json.dumps(value).encode()
