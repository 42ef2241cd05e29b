"""Interop with the official ``mcp`` client over real transports.

Streamable HTTP and WebSocket: hypercorn's trio worker on a free 127.0.0.1 port in a nursery,
cancelled at the end. stdio and the CLI: ``python -m supervisor serve`` as a subprocess. Real
clocks here (sockets and processes do not mix with MockClock); every wait is bounded.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import trio
from mcp import Client
from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters
from mcp.shared._stream_protocols import ReadStream, WriteStream
from mcp.shared.exceptions import MCPError
from mcp.shared.message import SessionMessage
from mcp_types import jsonrpc_message_adapter
from trio_websocket import ConnectionClosed, WebSocketConnection, open_websocket_url

from supervisor import (
    EventKind,
    SessionState,
    Supervisor,
    Transport,
    open_supervisor,
)
from supervisor.mcp import create_demo_server, serve_http

from ._mcp_helpers import counter, wait_for
from .test_mcp_session import check_drain, sleep_channel, sleep_server

REPO = Path(__file__).resolve().parents[1]

TIMEOUT = 30  # seconds; generous for a loaded 2-core machine


@asynccontextmanager
async def http_server(
    app_options: dict[str, Any] | None = None, **config: Any
) -> AsyncIterator[tuple[Supervisor, str]]:
    config.setdefault("max_sessions", 8)
    async with open_supervisor(**config) as sup, trio.open_nursery() as nursery:
        url: str = await nursery.start(
            partial(serve_http, sup, create_demo_server(), port=0, **(app_options or {}))
        )
        yield sup, url
        nursery.cancel_scope.cancel()


# -- Streamable HTTP ----------------------------------------------------------------------------


async def test_official_client_over_streamable_http() -> None:
    with trio.fail_after(TIMEOUT):
        async with http_server() as (sup, url), sup.subscribe() as events:
            async with Client(url, mode="legacy") as client:
                assert client.protocol_version == "2025-11-25"
                tools = await client.list_tools()
                assert {tool.name for tool in tools.tools} == {
                    "echo",
                    "counter",
                    "open_session",
                    "close_session",
                }
                echoed = await client.call_tool("echo", {"text": "over http"})
                assert echoed.content[0].model_dump()["text"] == "over http"
                assert [await counter(client) for _ in range(3)] == [1, 2, 3]
                [session] = sup.active_sessions()
                assert session.transport is Transport.HTTP
                assert session.state is SessionState.READY
                assert session.protocol_version == "2025-11-25"
                async with Client(url, mode="legacy") as other:
                    assert await counter(other) == 1
                    assert len(sup) == 2
                assert await counter(client) == 4
            # The client ends its session with DELETE when it leaves.
            closed = await wait_for(events, EventKind.CLOSED, session.id)
            assert closed.reason == "client-delete"


async def test_official_client_auto_mode_uses_the_stateless_era() -> None:
    with trio.fail_after(TIMEOUT):
        async with http_server() as (sup, url), Client(url) as client:
            assert client.protocol_version == "2026-07-28"
            assert await counter(client) == 1
            assert await counter(client) == 1  # no session, no per-session state
            assert sup.statistics().created_total == 0


async def test_session_id_is_the_supervisor_id() -> None:
    with trio.fail_after(TIMEOUT):
        async with http_server() as (sup, url), httpx.AsyncClient() as http:
            response = await http.post(
                url,
                json={
                    "jsonrpc": "2.0",
                    "id": 1,
                    "method": "initialize",
                    "params": {
                        "protocolVersion": "2025-11-25",
                        "capabilities": {},
                        "clientInfo": {"name": "httpx", "version": "0"},
                    },
                },
                headers={"accept": "application/json, text/event-stream"},
            )
            assert response.status_code == 200
            session_id = response.headers["mcp-session-id"]
            # Accepted, but READY only once the client has completed the handshake.
            assert sup.get_session(session_id).state is SessionState.INITIALIZING
            notified = await http.post(
                url,
                json={"jsonrpc": "2.0", "method": "notifications/initialized"},
                headers={
                    "accept": "application/json, text/event-stream",
                    "mcp-session-id": session_id,
                    "mcp-protocol-version": "2025-11-25",
                },
            )
            assert notified.status_code == 202
            session = sup.get_session(session_id)
            assert session.state is SessionState.READY
            assert session.client_info == {"name": "httpx", "version": "0"}


INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-11-25",
        "capabilities": {},
        "clientInfo": {"name": "httpx", "version": "0"},
    },
}


# -- WebSocket ----------------------------------------------------------------------------------


@asynccontextmanager
async def websocket_streams(
    url: str,
) -> AsyncIterator[tuple[ReadStream[SessionMessage | Exception], WriteStream[SessionMessage]]]:
    """A minimal client transport: one JSON-RPC message per text frame, subprotocol "mcp"."""
    async with websocket_connection(url) as (_ws, read, write):
        yield read, write


@asynccontextmanager
async def websocket_connection(
    url: str,
) -> AsyncIterator[
    tuple[WebSocketConnection, ReadStream[SessionMessage | Exception], WriteStream[SessionMessage]]
]:
    """`websocket_streams`, and the socket (for its close code)."""
    to_client, from_server = anyio.create_memory_object_stream[SessionMessage | Exception](16)
    to_server, from_client = anyio.create_memory_object_stream[SessionMessage](16)
    ws_url = "ws" + url.removeprefix("http")
    async with (
        open_websocket_url(ws_url, subprotocols=["mcp"]) as ws,
        trio.open_nursery() as nursery,
    ):
        assert ws.subprotocol == "mcp"

        async def pump_in() -> None:
            async with to_client:
                try:
                    while True:
                        text = await ws.get_message()
                        message = jsonrpc_message_adapter.validate_json(text, by_name=False)
                        await to_client.send(SessionMessage(message))
                except ConnectionClosed:
                    return

        async def pump_out() -> None:
            async with from_client:
                async for item in from_client:
                    try:
                        await ws.send_message(
                            item.message.model_dump_json(by_alias=True, exclude_unset=True)
                        )
                    except ConnectionClosed:
                        return

        nursery.start_soon(pump_in)
        nursery.start_soon(pump_out)
        yield ws, from_server, to_server
        nursery.cancel_scope.cancel()


async def test_official_client_session_over_websocket() -> None:
    with trio.fail_after(TIMEOUT):
        async with http_server() as (sup, url), sup.subscribe() as events:
            async with (
                websocket_streams(url) as (read, write),
                ClientSession(read, write) as client,
            ):
                await client.initialize()
                assert [await counter(client) for _ in range(3)] == [1, 2, 3]
                [session] = sup.active_sessions()
                assert session.transport is Transport.WEBSOCKET
                assert session.state is SessionState.READY
                async with (
                    websocket_streams(url) as (read2, write2),
                    ClientSession(read2, write2) as other,
                ):
                    await other.initialize()
                    assert await counter(other) == 1
            closed = await wait_for(events, EventKind.CLOSED, session.id)
            assert closed.reason == "client-disconnected"


async def test_websocket_refuses_bad_origin_and_capacity() -> None:
    from trio_websocket import ConnectionRejected

    with trio.fail_after(TIMEOUT):
        async with http_server(max_sessions=1) as (_sup, url):
            ws_url = "ws" + url.removeprefix("http")
            with pytest.raises(ConnectionRejected) as rejected:
                async with open_websocket_url(
                    ws_url,
                    subprotocols=["mcp"],
                    extra_headers=[(b"origin", b"http://evil.example")],
                ):
                    pass  # pragma: no cover
            assert rejected.value.status_code == 403
            async with websocket_streams(url) as (read, write), ClientSession(read, write) as c:
                await c.initialize()
                with pytest.raises(ConnectionRejected) as full:
                    async with open_websocket_url(ws_url, subprotocols=["mcp"]):
                        pass  # pragma: no cover
                assert full.value.status_code == 503


# -- stdio and the command line -----------------------------------------------------------------


async def test_official_client_over_stdio_subprocess() -> None:
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "supervisor", "serve", "--stdio", "--idle-timeout", "60"],
        cwd=str(REPO),
    )
    with trio.fail_after(TIMEOUT):
        async with Client(params, mode="legacy") as client:
            assert {tool.name for tool in (await client.list_tools()).tools} == {
                "echo",
                "counter",
                "open_session",
                "close_session",
            }
            assert [await counter(client) for _ in range(3)] == [1, 2, 3]
            echoed = await client.call_tool("echo", {"text": "over stdio"})
            assert echoed.content[0].model_dump()["text"] == "over stdio"


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
async def test_cli_serves_http_and_exits_0_on_signal(signum: signal.Signals) -> None:
    with trio.fail_after(TIMEOUT):
        process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "supervisor", "serve", "--port", "0", "--max-sessions", "3"],
            cwd=str(REPO),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        assert process.stdout is not None
        try:
            buffer = b""
            while b"\n" not in buffer:
                chunk = await process.stdout.receive_some(4096)
                assert chunk, "serve exited before printing its URL"
                buffer += chunk
            first_line = buffer.split(b"\n", 1)[0].decode()
            assert first_line.startswith("serving MCP on http://127.0.0.1:")
            url = first_line.rsplit(" ", 1)[1]
            async with Client(url, mode="legacy") as client:
                assert await counter(client) == 1
                assert await counter(client) == 2
            process.send_signal(signum)
            output = buffer
            while chunk := await process.stdout.receive_some(4096):
                output += chunk
            assert await process.wait() == 0
        finally:
            if process.returncode is None:  # pragma: no cover - only when the test failed
                process.kill()
                await process.wait()
        lines = output.decode().strip().splitlines()
        assert lines[-1].startswith("supervisor stopped: 1 sessions created, 1 closed")


async def test_event_store_makes_streams_resumable() -> None:
    from mcp.server.streamable_http import EventCallback, EventMessage, EventStore
    from mcp_types import JSONRPCMessage

    class Store(EventStore):
        def __init__(self) -> None:
            self.events: list[tuple[str, str, JSONRPCMessage | None]] = []

        async def store_event(self, stream_id: str, message: JSONRPCMessage | None) -> str:
            event_id = str(len(self.events) + 1)
            self.events.append((event_id, stream_id, message))
            return event_id

        async def replay_events_after(
            self, last_event_id: str, send_callback: EventCallback
        ) -> str | None:
            stream = next((s for e, s, _ in self.events if e == last_event_id), None)
            after = False
            for event_id, stream_id, message in self.events:
                if after and stream_id == stream and message is not None:
                    await send_callback(EventMessage(message, event_id))
                after = after or event_id == last_event_id
            return stream

    accept = {"accept": "application/json, text/event-stream"}
    options: dict[str, Any] = {"event_store": Store(), "retry_interval": 500}
    with trio.fail_after(TIMEOUT):
        async with http_server(options) as (_sup, url), httpx.AsyncClient() as http:
            opened = await http.post(url, json=INITIALIZE, headers=accept)
            session = {**accept, "mcp-session-id": opened.headers["mcp-session-id"]}
            session["mcp-protocol-version"] = "2025-11-25"
            call = {"jsonrpc": "2.0", "id": 2, "method": "tools/call"}
            call["params"] = {"name": "counter", "arguments": {}}
            response = await http.post(url, json=call, headers=session)
            assert "retry: 500" in response.text
            ids = [line[3:].strip() for line in response.text.splitlines() if line[:3] == "id:"]
            assert len(ids) == 2  # the priming event, then the result
            replay = {**session, "accept": "text/event-stream", "last-event-id": ids[0]}
            async with http.stream("GET", url, headers=replay) as stream:
                assert stream.status_code == 200
                async for line in stream.aiter_lines():
                    if line.startswith("data:") and line[5:].strip():
                        assert '"structuredContent":{"count":1}' in line
                        break


async def test_cli_serves_an_app_over_stdio() -> None:
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "supervisor", "serve", "--stdio", "--app", "examples.mcp_server:build_server"],
        cwd=str(REPO),
    )
    with trio.fail_after(TIMEOUT):
        async with Client(params, mode="legacy") as client:
            first = await client.call_tool("add_note", {"text": "one"})
            second = await client.call_tool("add_note", {"text": "two"})
            assert (first.structured_content, second.structured_content) == (
                {"result": 1},
                {"result": 2},
            )
            notes = await client.call_tool("list_notes", {})
            assert notes.structured_content == {"result": ["one", "two"]}


async def test_last_event_id_without_event_store_opens_a_fresh_stream() -> None:
    accept = {"accept": "application/json, text/event-stream"}
    with trio.fail_after(TIMEOUT):
        async with http_server() as (_sup, url), httpx.AsyncClient() as http:
            opened = await http.post(url, json=INITIALIZE, headers=accept)
            session_id = opened.headers["mcp-session-id"]
            headers = {
                "accept": "text/event-stream",
                "mcp-session-id": session_id,
                "mcp-protocol-version": "2025-11-25",
                "last-event-id": "no-such-event",
            }
            async with http.stream("GET", url, headers=headers) as stream:
                assert stream.status_code == 200
                assert stream.headers["content-type"].startswith("text/event-stream")


async def test_websocket_session_expires_and_closes_the_socket() -> None:
    with trio.fail_after(TIMEOUT):
        async with http_server(idle_timeout=1.0) as (sup, url), sup.subscribe() as events:
            async with (
                websocket_streams(url) as (read, write),
                ClientSession(read, write) as client,
            ):
                await client.initialize()
                [session] = sup.active_sessions()
                expired = await wait_for(events, EventKind.EXPIRED, session.id)
                assert expired.reason == "idle-timeout"
                with pytest.raises(MCPError):
                    await client.call_tool("counter", {})


async def test_websocket_deadline_closes_with_1000_and_the_reason() -> None:
    with trio.fail_after(TIMEOUT):
        async with (
            http_server(idle_timeout=1.0) as (sup, url),
            sup.subscribe() as events,
            websocket_connection(url) as (ws, read, write),
            ClientSession(read, write) as client,
        ):
            await client.initialize()
            [session] = sup.active_sessions()
            expired = await wait_for(events, EventKind.EXPIRED, session.id)
            assert expired.reason == "idle-timeout"
            with pytest.raises(ConnectionClosed) as closed:
                await ws.get_message()
            assert closed.value.reason is not None
            assert (closed.value.reason.code, closed.value.reason.reason) == (1000, "idle-timeout")


async def test_websocket_close_drains_with_the_official_client() -> None:
    send, started = sleep_channel()
    grace = 2.0
    with trio.fail_after(TIMEOUT):
        async with (
            open_supervisor(close_grace=grace) as sup,
            sup.subscribe() as events,
            trio.open_nursery() as nursery,
        ):
            url: str = await nursery.start(partial(serve_http, sup, sleep_server(send), port=0))
            async with (
                websocket_connection(url) as (ws, read, write),
                ClientSession(read, write) as client,
            ):
                await client.initialize()
                [session] = sup.active_sessions()
                await check_drain(
                    client,
                    started,
                    grace=grace,
                    close_at=trio.current_time() + 0.5,
                    close=lambda: sup.close_session(session.id, reason="operator"),
                )
                with pytest.raises(ConnectionClosed) as closed:
                    await ws.get_message()
                assert closed.value.reason is not None
                assert (closed.value.reason.code, closed.value.reason.reason) == (1000, "operator")
            ended = await wait_for(events, EventKind.CLOSED, session.id)
            assert ended.reason == "operator"
            nursery.cancel_scope.cancel()
