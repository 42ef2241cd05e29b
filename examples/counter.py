"""Counter: state owned by the session actor, one private counter per session.

What it shows: per-session state lives in the actor's local variables (no dict of session
records, no locks: only this task touches it); a small message protocol (``"increment"``,
``"get"``) with replies; a failing request answered with ``msg.fail`` that the caller sees as an
exception while the session carries on; per-session metadata.

Run it: ``python examples/counter.py``. Copy it when your sessions need state of their own.
"""

from __future__ import annotations

from typing import Any

import trio

from supervisor import SessionContext, open_supervisor


class UnknownCommand(Exception):
    pass


async def counter(ctx: SessionContext[str]) -> None:
    count = 0  # this session's state: nobody else can reach it
    ctx.initialize()
    async for msg in ctx.mailbox:
        if msg.payload == "increment":
            count += 1
            ctx.metadata["count"] = count  # visible to operators via sup.get_metadata
            msg.reply(count)
        elif msg.payload == "get":
            msg.reply(count)
        else:
            msg.fail(UnknownCommand(f"unknown command {msg.payload!r}"))


async def main() -> dict[str, Any]:
    """Runs the demo; returns what it saw (the tests check it)."""
    async with open_supervisor(max_sessions=10) as sup:
        alice = sup.create_session_nowait(counter, metadata={"user": "alice"})
        bob = sup.create_session_nowait(counter, metadata={"user": "bob"})
        alice_counts = [await sup.call(alice.id, "increment") for _ in range(3)]
        bob_counts = [await sup.call(bob.id, "increment")]
        print(f"alice: {alice_counts}  bob: {bob_counts}")
        try:
            await sup.call(alice.id, "decrement")
        except UnknownCommand as exc:
            print(f"the actor refused a request: {exc}")
        final = await sup.call(alice.id, "get")
        print(f"alice's counter is still {final}; metadata: {dict(alice.metadata)}")
    return {"alice": alice_counts, "bob": bob_counts, "alice_final": final}


if __name__ == "__main__":
    trio.run(main)
