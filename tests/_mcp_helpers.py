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


async def count(client: Client, handle: str | None = None) -> int:
    """``counter``, through the state handle ``handle`` if one is given; it must succeed."""
    result = await client.call_tool("counter", {} if handle is None else {"session": handle})
    assert not result.is_error, result
    assert isinstance(result.structured_content, dict)
    value = result.structured_content["count"]
    assert isinstance(value, int)
    return value


async def open_handle(client: Client) -> str:
    """A new state handle from the demo's ``open_session``."""
    opened = await client.call_tool("open_session", {})
    assert not opened.is_error, opened
    assert isinstance(opened.structured_content, dict)
    handle = opened.structured_content["session"]
    assert isinstance(handle, str)
    return handle


async def wait_for(events: Subscription, kind: EventKind, session_id: str) -> Event:
    """The next event of ``kind`` for ``session_id``."""
    async for item in events:
        if isinstance(item, Lagged):  # pragma: no cover
            continue
        if item.kind is kind and item.session_id == session_id:
            return item
    raise AssertionError("subscription ended")  # pragma: no cover
