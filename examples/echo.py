"""Echo: the smallest supervised server, and what it tells you.

What it shows: an actor (``echo``) that answers every call with its payload; ``send`` vs
``call``; a subscriber printing lifecycle events; an idle session expiring on its own deadline
(no sweep timer); statistics at the end.

Run it: ``python examples/echo.py`` (takes about 2 seconds: one session is left idle to expire).
Copy it as the start of your own actor.
"""

from __future__ import annotations

from typing import Any

import trio

from supervisor import Lagged, SessionContext, Supervisor, open_supervisor


async def echo(ctx: SessionContext[Any]) -> None:
    """The actor: one task per session. Returns (and so ends the session) when asked to close."""
    ctx.initialize(client_info={"name": "echo-example", "version": "1.0"})
    async for msg in ctx.mailbox:
        if msg.expects_reply:
            msg.reply(msg.payload)
        else:
            print(f"  [{ctx.id[:8]}] got a one-way message: {msg.payload!r}")


async def print_events(sup: Supervisor, task_status: trio.TaskStatus[None]) -> None:
    async with sup.subscribe() as events:
        task_status.started()
        async for item in events:
            if isinstance(item, Lagged):
                print(f"  (missed {item.missed} events)")
            elif item.kind.is_terminal:
                print(f"  event: {item.session_id[:8]} {item.kind.value} ({item.reason})")
            elif item.old_state is not None and item.new_state is not None:
                change = f"{item.old_state.value} -> {item.new_state.value}"
                print(f"  event: {item.session_id[:8]} {change}")
            else:
                print(f"  event: {item.session_id[:8]} {item.kind.value}")


async def main(idle_timeout: float = 1.0) -> dict[str, int]:
    """Runs the demo; returns the final totals (the tests check them)."""
    async with trio.open_nursery() as nursery:
        async with open_supervisor(max_sessions=10, idle_timeout=idle_timeout) as sup:
            await nursery.start(print_events, sup)
            sessions = [sup.create_session_nowait(echo) for _ in range(3)]
            for session in sessions:
                reply = await sup.call(session.id, f"hello {session.id[:8]}")
                print(f"call -> {reply!r}")
            await sup.send(sessions[0].id, "fire and forget")
            sup.close_session(sessions[1].id, reason="done with it")
            print(f"leaving session {sessions[2].id[:8]} idle for {idle_timeout} s ...")
            await trio.sleep(idle_timeout * 1.5)  # session 0 and 2 expire; no sweep involved
            stats = sup.statistics()
            print(
                f"created={stats.created_total} closed={stats.closed_total} "
                f"expired={stats.expired_total} live={stats.total}"
            )
        # Leaving the block shut the supervisor down; the subscriber's loop has ended.
    return {
        "created": stats.created_total,
        "closed": stats.closed_total,
        "expired": stats.expired_total,
        "live": stats.total,
    }


if __name__ == "__main__":
    trio.run(main)
