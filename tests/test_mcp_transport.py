"""The lean Streamable HTTP wire (`supervisor.mcp._transport`) speaks as the SDK's transport does.

Each exchange is sent, as raw ASGI, both to `McpHttpApp` and to the SDK's own
``StreamableHTTPSessionManager`` serving the same server, and what a client sees is compared:
status, headers (names, order, values; session ids and event ids normalised), and bodies (SSE
frames byte for byte but for ids). The pieces of the wire are tested on their own below.
"""

from __future__ import annotations

import json
import re
from collections import OrderedDict
from collections.abc import AsyncIterator, MutableMapping
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
import trio
import trio.testing
from mcp.server.streamable_http import EventCallback, EventMessage, EventStore
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.shared.message import ServerMessageMetadata, SessionMessage
from mcp_types import JSONRPCMessage, JSONRPCNotification, JSONRPCResponse

from supervisor import open_supervisor
from supervisor.mcp import McpHttpApp, create_demo_server
from supervisor.mcp._transport import _frame, _Inbox, _Wire

PROTOCOL = "2025-11-25"


class Store(EventStore):
    """The SDK examples' store: one table, replayed by the stream of the given event."""

    def __init__(self) -> None:
        self.events: OrderedDict[str, tuple[str, JSONRPCMessage | None]] = OrderedDict()

    async def store_event(self, stream_id: str, message: JSONRPCMessage | None) -> str:
        event_id = str(len(self.events) + 1)
        self.events[event_id] = (stream_id, message)
        return event_id

    async def replay_events_after(
        self, last_event_id: str, send_callback: EventCallback
    ) -> str | None:
        entry = self.events.get(last_event_id)
        if entry is None:
            return None
        for event_id, (stream_id, message) in list(self.events.items()):
            if stream_id == entry[0] and int(event_id) > int(last_event_id) and message:
                await send_callback(EventMessage(message, event_id))
        return entry[0]


class SdkApp:
    """The SDK's session manager as an ASGI app (its transport is the reference)."""

    def __init__(self, manager: StreamableHTTPSessionManager) -> None:
        self.manager = manager

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.manager.handle_request(scope, receive, send)


@asynccontextmanager
async def both(**options: Any) -> AsyncIterator[tuple[Any, Any]]:
    """(ours, the SDK's), serving the demo server with the same options."""
    manager = StreamableHTTPSessionManager(app=create_demo_server(), **options)
    async with open_supervisor(idle_timeout=60) as sup, manager.run():
        if "event_store" in options:
            options["event_store"] = Store()
        yield McpHttpApp(sup, create_demo_server(), **options), SdkApp(manager)
        sup.close_all()


async def exchange(
    app: Any,
    method: str,
    body: dict[str, Any] | bytes | None = None,
    session_id: str | None = None,
    **headers: str,
) -> list[MutableMapping[str, Any]]:
    """The ASGI messages ``app`` sends for one request (the client stays until the end)."""
    raw = [
        (b"host", b"127.0.0.1:8000"),
        (b"accept", b"application/json, text/event-stream"),
    ]
    if body is not None:
        raw.append((b"content-type", b"application/json"))
    if session_id is not None:
        raw += [
            (b"mcp-session-id", session_id.encode()),
            (b"mcp-protocol-version", PROTOCOL.encode()),
        ]
    for name, value in headers.items():
        raw = [(k, v) for k, v in raw if k != name.replace("_", "-").encode()]
        raw.append((name.replace("_", "-").encode(), value.encode()))
    payload = body if isinstance(body, bytes) else json.dumps(body).encode() if body else b""
    scope = {
        "type": "http",
        "method": method,
        "path": "/mcp",
        "raw_path": b"/mcp",
        "query_string": b"",
        "headers": raw,
        "http_version": "1.1",
        "scheme": "http",
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 8000),
        "root_path": "",
    }
    sent: list[MutableMapping[str, Any]] = []
    finished = trio.Event()
    delivered = False

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": payload, "more_body": False}
        await finished.wait()
        return {"type": "http.disconnect"}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            finished.set()

    with trio.fail_after(10):
        await app(scope, receive, send)
    return sent


def seen(sent: list[MutableMapping[str, Any]]) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """(status, headers, body) as a client sees them; ids replaced by placeholders."""
    start = sent[0]
    headers = [(k, b"<sid>" if k == b"mcp-session-id" else v) for k, v in start.get("headers", [])]
    body = b"".join(m.get("body", b"") for m in sent[1:])
    body = re.sub(rb"id: [^\r\n]*", b"id: <event>", body)
    return int(start["status"]), headers, body


def session_of(sent: list[MutableMapping[str, Any]]) -> str:
    session_id: bytes = dict(sent[0]["headers"])[b"mcp-session-id"]
    return session_id.decode()


INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": PROTOCOL,
        "capabilities": {},
        "clientInfo": {"name": "t", "version": "0"},
    },
}
INITIALIZED = {"jsonrpc": "2.0", "method": "notifications/initialized"}
ECHO = {
    "jsonrpc": "2.0",
    "id": 2,
    "method": "tools/call",
    "params": {"name": "echo", "arguments": {"text": "hi"}},
}


async def open_both(ours: Any, sdk: Any) -> tuple[str, str]:
    a, b = await exchange(ours, "POST", INIT), await exchange(sdk, "POST", INIT)
    assert seen(a) == seen(b)
    ids = session_of(a), session_of(b)
    a, b = (
        await exchange(ours, "POST", INITIALIZED, ids[0]),
        await exchange(sdk, "POST", INITIALIZED, ids[1]),
    )
    assert seen(a) == seen(b)
    assert seen(a)[0] == 202
    return ids


@pytest.mark.parametrize("json_response", [False, True])
async def test_requests_and_notifications_look_as_the_sdks(json_response: bool) -> None:
    async with both(json_response=json_response) as (ours, sdk):
        mine, theirs = await open_both(ours, sdk)
        a = await exchange(ours, "POST", ECHO, mine)
        b = await exchange(sdk, "POST", ECHO, theirs)
        assert seen(a) == seen(b)
        assert b'"hi"' in seen(a)[2]


@pytest.mark.parametrize(
    "body",
    [b"{not json", b'{"jsonrpc": "2.0", "id": 3}', b"[]", b'{"jsonrpc": "1.0", "method": "x"}'],
)
async def test_parse_and_validation_errors_look_as_the_sdks(body: bytes) -> None:
    async with both() as (ours, sdk):
        mine, theirs = await open_both(ours, sdk)
        a = await exchange(ours, "POST", body, mine)
        b = await exchange(sdk, "POST", body, theirs)
        assert seen(a) == seen(b)
        assert seen(a)[0] == 400


async def test_a_content_type_the_sdk_refuses_is_refused_alike() -> None:
    async with both() as (ours, sdk):
        mine, theirs = await open_both(ours, sdk)
        a = await exchange(ours, "POST", ECHO, mine, content_type="Application/JSON")
        b = await exchange(sdk, "POST", ECHO, theirs, content_type="Application/JSON")
        assert seen(a) == seen(b)
        assert seen(a)[0] == 415


async def test_get_without_event_stream_in_accept_is_a_406_as_the_sdks() -> None:
    async with both() as (ours, sdk):
        mine, theirs = await open_both(ours, sdk)
        a = await exchange(ours, "GET", None, mine, accept="application/json")
        b = await exchange(sdk, "GET", None, theirs, accept="application/json")
        assert seen(a) == seen(b)
        assert seen(a)[0] == 406


async def test_priming_events_and_retry_look_as_the_sdks() -> None:
    async with both(event_store=Store(), retry_interval=250) as (ours, sdk):
        mine, theirs = await open_both(ours, sdk)
        a = await exchange(ours, "POST", ECHO, mine)
        b = await exchange(sdk, "POST", ECHO, theirs)
        assert seen(a) == seen(b)
        assert b"retry: 250\r\n" in seen(a)[2]
        assert seen(a)[2].startswith(b"id: <event>\r\ndata: \r\nretry: 250\r\n\r\n")


async def test_an_open_get_stream_gets_a_keep_alive_comment_every_15_seconds(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with both() as (ours, sdk):
        mine, _ = await open_both(ours, sdk)
        sent: list[MutableMapping[str, Any]] = []
        gone = trio.Event()

        async def receive() -> dict[str, Any]:
            await gone.wait()
            return {"type": "http.disconnect"}

        async def send(message: MutableMapping[str, Any]) -> None:
            sent.append(message)

        scope = {
            "type": "http",
            "method": "GET",
            "path": "/mcp",
            "headers": [
                (b"host", b"127.0.0.1:8000"),
                (b"accept", b"text/event-stream"),
                (b"mcp-session-id", mine.encode()),
            ],
        }
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ours, scope, receive, send)
            await trio.sleep(31)
            pings = [m["body"] for m in sent[1:] if m["body"].startswith(b": ping - ")]
            assert len(pings) == 2
            assert all(ping.endswith(b"\r\n\r\n") for ping in pings)
            gone.set()  # the client leaves: the stream ends without a last chunk
        assert sent[-1].get("more_body") is True


async def test_a_session_opened_through_one_app_serves_through_another() -> None:
    async with open_supervisor(idle_timeout=60) as sup:
        first = McpHttpApp(sup, create_demo_server())
        second = McpHttpApp(sup, create_demo_server(), path=None)
        session_id = session_of(await exchange(first, "POST", INIT))
        assert seen(await exchange(second, "POST", INITIALIZED, session_id))[0] == 202
        status, _, body = seen(await exchange(second, "POST", ECHO, session_id))
        assert (status, b'"hi"' in body) == (200, True)
        assert seen(await exchange(second, "DELETE", None, session_id))[0] == 200
        assert seen(await exchange(first, "POST", ECHO, session_id))[0] == 404


# -- the pieces ------------------------------------------------------------------------------


def test_frames_are_encoded_as_sse_starlette_encodes_them() -> None:
    from sse_starlette.event import ServerSentEvent

    data = '{"jsonrpc":"2.0","id":1,"result":{}}'
    assert _frame(data, "a.1") == ServerSentEvent(id="a.1", event="message", data=data).encode()
    assert _frame(data, None) == ServerSentEvent(event="message", data=data).encode()
    assert (
        _frame("", "p", event=False, retry=5) == ServerSentEvent(id="p", data="", retry=5).encode()
    )
    assert (
        _frame(data, "x\r\ny") == ServerSentEvent(id="x\r\ny", event="message", data=data).encode()
    )


async def test_inbox_hands_messages_over_in_order_then_ends() -> None:
    inbox = _Inbox()
    notes = [SessionMessage(JSONRPCNotification(jsonrpc="2.0", method=f"n{i}")) for i in range(3)]
    got: list[Any] = []

    async def read() -> None:
        async for item in inbox:
            got.append(item)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read)
        await trio.testing.wait_all_tasks_blocked()
        for note in notes:
            await inbox.send(note)  # the first is handed to the parked reader
        await trio.testing.wait_all_tasks_blocked()
        inbox.close()
    assert got == notes
    with pytest.raises(anyio.ClosedResourceError):
        await inbox.send(notes[0])
    with pytest.raises(anyio.EndOfStream):
        await inbox.receive()


async def test_a_cancelled_reader_loses_nothing() -> None:
    inbox = _Inbox()
    note = SessionMessage(JSONRPCNotification(jsonrpc="2.0", method="n"))
    with trio.move_on_after(0.01):
        await inbox.receive()
    inbox.put_nowait(note)
    assert await inbox.receive() is note


async def test_senders_wait_when_the_inbox_is_full() -> None:
    inbox = _Inbox()
    note = SessionMessage(JSONRPCNotification(jsonrpc="2.0", method="n"))
    sent = 0

    async def flood() -> None:
        nonlocal sent
        for _ in range(40):
            await inbox.send(note)
            sent += 1

    async with trio.open_nursery() as nursery:
        nursery.start_soon(flood)
        await trio.testing.wait_all_tasks_blocked()
        assert sent < 40  # waiting for room
        for _ in range(40):
            await inbox.receive()
        await trio.testing.wait_all_tasks_blocked()
    assert sent == 40


async def test_the_router_sends_each_message_to_its_stream_and_drops_orphans() -> None:
    wire = _Wire("sid", json_response=False, event_store=None, retry_interval=None)
    from supervisor.mcp._transport import _Stream

    stream = wire._streams["7"] = _Stream()
    get = wire._streams["_GET_stream"] = _Stream()
    note = JSONRPCNotification(jsonrpc="2.0", method="notifications/progress")
    await wire.route(SessionMessage(note, metadata=ServerMessageMetadata(related_request_id=7)))
    await wire.route(SessionMessage(note))
    await wire.route(SessionMessage(JSONRPCResponse(jsonrpc="2.0", id=7, result={})))
    await wire.route(SessionMessage(JSONRPCResponse(jsonrpc="2.0", id=8, result={})))  # nobody
    assert [e.message for e in stream.events] == [
        note,
        JSONRPCResponse(jsonrpc="2.0", id=7, result={}),
    ]
    assert [e.message for e in get.events] == [note]
    wire.close()
    assert stream.closed and get.closed and wire.inbox.closed


async def test_json_mode_drops_what_only_a_stream_could_carry() -> None:
    wire = _Wire("sid", json_response=True, event_store=Store(), retry_interval=None)
    from supervisor.mcp._transport import _Stream

    stream = wire._streams["7"] = _Stream()
    note = JSONRPCNotification(jsonrpc="2.0", method="notifications/progress")
    await wire.route(SessionMessage(note, metadata=ServerMessageMetadata(related_request_id=7)))
    await wire.route(SessionMessage(JSONRPCResponse(jsonrpc="2.0", id=7, result={})))
    assert [e.message for e in stream.events] == [JSONRPCResponse(jsonrpc="2.0", id=7, result={})]
    assert wire._store is not None and len(wire._store.events) == 1  # type: ignore[attr-defined]


async def test_a_body_queued_on_a_trio_channel_is_read_at_once_and_the_rest_waited_for() -> None:
    from supervisor.mcp._checks import _read_request_body

    sent: list[MutableMapping[str, Any]] = []

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    scope: dict[str, Any] = {"type": "http", "headers": []}
    queue, receive_channel = trio.open_memory_channel[dict[str, Any]](10)
    queue.send_nowait({"type": "http.request", "body": b'{"a":', "more_body": True})
    queue.send_nowait({"type": "http.request", "body": b"1}", "more_body": False})
    body = await _read_request_body(scope, receive_channel.receive, send, limit=100, within=1)
    assert body == b'{"a":1}'
    # Part queued, the rest comes later: read in full.
    queue.send_nowait({"type": "http.request", "body": b"ab", "more_body": True})
    async with trio.open_nursery() as nursery:
        nursery.start_soon(queue.send, {"type": "http.request", "body": b"cd", "more_body": False})
        body = await _read_request_body(scope, receive_channel.receive, send, limit=100, within=1)
    assert body == b"abcd"
    # Too large already in what is queued: 413.
    queue.send_nowait({"type": "http.request", "body": b"x" * 80, "more_body": True})
    queue.send_nowait({"type": "http.request", "body": b"x" * 80, "more_body": False})
    assert (
        await _read_request_body(scope, receive_channel.receive, send, limit=100, within=1) is None
    )
    assert sent[0]["status"] == 413
