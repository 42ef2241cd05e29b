"""Helpers shared by the MCP adapter tests."""

from __future__ import annotations

from mcp import Client, ClientSession

from supervisor import Event, EventKind, Lagged, Subscription


async def counter(client: Client | ClientSession) -> int:
    """Call the demo server's ``counter`` tool and return its count."""
    result = await client.call_tool("counter", {})
    assert isinstance(result.structured_content, dict)
    count = result.structured_content["count"]
    assert isinstance(count, int)
    return count


async def wait_for(events: Subscription, kind: EventKind, session_id: str) -> Event:
    """The next event of ``kind`` for ``session_id``."""
    async for item in events:
        if isinstance(item, Lagged):  # pragma: no cover
            continue
        if item.kind is kind and item.session_id == session_id:
            return item
    raise AssertionError("subscription ended")  # pragma: no cover
