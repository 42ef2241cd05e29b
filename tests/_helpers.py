"""Helpers shared by the core tests. Timeouts run on trio's MockClock (``autojump_clock``)."""

from __future__ import annotations

from typing import Any

import trio

from supervisor import Event, Lagged, Message, SessionContext, Subscription


async def echo_actor(ctx: SessionContext[Any]) -> None:
    """Replies to every call with its payload; READY at once."""
    ctx.initialize(client_info={"name": "test", "version": "0"})
    async for msg in ctx.mailbox:
        msg.reply(msg.payload)


async def idle_actor(ctx: SessionContext[Any]) -> None:
    """Never initializes, drains its mailbox until asked to close."""
    async for _msg in ctx.mailbox:
        pass


def drain(sub: Subscription) -> list[Event | Lagged]:
    """Everything buffered in a subscription now, without waiting."""
    items: list[Event | Lagged] = []
    while True:
        try:
            items.append(sub.receive_nowait())
        except (trio.WouldBlock, trio.EndOfChannel):
            return items


def events_only(items: list[Event | Lagged]) -> list[Event]:
    return [item for item in items if isinstance(item, Event)]


def answer(msg: Message[Any], value: Any) -> None:
    assert msg.expects_reply
    assert msg.reply(value)
