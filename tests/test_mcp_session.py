"""MCP sessions as session actors: in-process and stdio transports, the handshake, deadlines.

All in memory (anyio/trio memory streams), so trio's MockClock runs the deadlines instantly.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import mcp_types as types
import pytest
import trio
import trio.testing
from mcp import Client
from mcp.client.session import ClientSession
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel.server import Server
from mcp.shared._stream_protocols import ReadStream, WriteStream
from mcp.shared.exceptions import MCPError
from mcp.shared.message import SessionMessage

from supervisor import (
    EventKind,
    SessionState,
    Supervisor,
    Transport,
    open_supervisor,
)
from supervisor.mcp import (
    McpSession,
    create_demo_server,
    current_session,
    open_in_process_client,
    open_in_process_streams,
    serve_stdio,
)

from ._mcp_helpers import counter, wait_for


def tool_server(name: str, handler: Any) -> Server[Any]:
    """A low-level server with one tool ``name`` answered by ``await handler()`` (a string)."""

    async def list_tools(
        ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        return types.ListToolsResult(tools=[types.Tool(name=name, input_schema={"type": "object"})])

    async def call_tool(
        ctx: ServerRequestContext[Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        return types.CallToolResult(content=[types.TextContent(text=str(await handler()))])

    return Server(name, on_list_tools=list_tools, on_call_tool=call_tool)


def text(result: types.CallToolResult) -> str:
    block = result.content[0]
    assert isinstance(block, types.TextContent)
    return block.text


# -- in-process ---------------------------------------------------------------------------------


async def test_in_process_client_tools_and_counter() -> None:
    server = create_demo_server()
    async with open_supervisor(max_sessions=4) as sup:
        async with open_in_process_client(sup, server) as client:
            tools = await client.list_tools()
            assert {tool.name for tool in tools.tools} == {
                "echo",
                "counter",
                "open_session",
                "close_session",
            }
            assert text(await client.call_tool("echo", {"text": "hi"})) == "hi"
            assert [await counter(client) for _ in range(3)] == [1, 2, 3]
            [session] = sup.active_sessions()
            assert session.transport is Transport.IN_PROCESS
            assert session.state is SessionState.READY
            assert session.protocol_version == "2025-11-25"
            assert session.client_info == {"name": "mcp", "version": "0.1.0"}
            async with open_in_process_client(sup, server) as other:
                assert await counter(other) == 1
            assert await counter(client) == 4
        assert len(sup) == 0


async def test_in_process_events() -> None:
    async with open_supervisor() as sup, sup.subscribe() as events:
        async with open_in_process_streams(sup, create_demo_server()) as connection:
            session_id = connection.session_id
            async with ClientSession(connection.read_stream, connection.write_stream) as client:
                await client.initialize()
                initialized = await wait_for(events, EventKind.INITIALIZED, session_id)
                assert initialized.session.protocol_version == "2025-11-25"
        closed = await wait_for(events, EventKind.CLOSED, session_id)
        assert closed.reason == "client-disconnected"


async def test_factory_is_called_per_session() -> None:
    calls = 0

    def factory() -> Server[Any]:
        nonlocal calls
        calls += 1
        count = 0

        async def bump() -> int:
            nonlocal count
            count += 1
            return count

        return tool_server("bump", bump)

    async with open_supervisor() as sup:
        async with open_in_process_client(sup, factory) as first:
            assert text(await first.call_tool("bump", {})) == "1"
            assert text(await first.call_tool("bump", {})) == "2"
            async with open_in_process_client(sup, factory) as second:
                assert text(await second.call_tool("bump", {})) == "1"
    assert calls == 2


async def test_current_session_inside_and_outside_handlers() -> None:
    seen: list[McpSession] = []

    async def who() -> str:
        session = current_session()
        seen.append(session)
        return session.id

    with pytest.raises(LookupError):
        current_session()
    async with (
        open_supervisor() as sup,
        open_in_process_streams(sup, tool_server("who", who)) as connection,
        ClientSession(connection.read_stream, connection.write_stream) as client,
    ):
        await client.initialize()
        assert text(await client.call_tool("who", {})) == connection.session_id
        assert seen[0].transport is Transport.IN_PROCESS
        assert seen[0].context.session is connection.session


async def test_mcpserver_high_level_server() -> None:
    from mcp.server.mcpserver import MCPServer

    server = MCPServer("high-level")

    @server.tool()
    async def visits() -> int:
        state = current_session().state
        state["visits"] = state.get("visits", 0) + 1
        return int(state["visits"])

    async with open_supervisor() as sup, open_in_process_client(sup, server) as client:
        first = await client.call_tool("visits", {})
        second = await client.call_tool("visits", {})
        assert (first.structured_content, second.structured_content) == (
            {"result": 1},
            {"result": 2},
        )


async def test_mailbox_requests_are_refused() -> None:
    async with (
        open_supervisor() as sup,
        open_in_process_client(sup, create_demo_server()) as _client,
    ):
        [session] = sup.active_sessions()
        with pytest.raises(TypeError):
            await sup.call(session.id, "not an MCP message")


# -- modern era over a duplex stream ------------------------------------------------------------


class _Streams:
    """A client ``Transport`` over `open_in_process_streams`."""

    def __init__(self, sup: Supervisor) -> None:
        self._cm = open_in_process_streams(sup, create_demo_server())

    async def __aenter__(
        self,
    ) -> tuple[ReadStream[SessionMessage | Exception], WriteStream[SessionMessage]]:
        connection = await self._cm.__aenter__()
        return connection.read_stream, connection.write_stream

    async def __aexit__(self, *exc_info: Any) -> None:
        await self._cm.__aexit__(*exc_info)


async def test_modern_era_initializes_from_the_envelope() -> None:
    async with open_supervisor() as sup, Client(_Streams(sup), mode="2026-07-28") as client:
        assert await counter(client) == 1
        assert await counter(client) == 2
        [session] = sup.active_sessions()
        assert session.state is SessionState.READY
        assert session.protocol_version == "2026-07-28"


# -- deadlines ----------------------------------------------------------------------------------


async def test_uninitialized_session_is_closed_by_init_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with (
        open_supervisor(init_timeout=5.0) as sup,
        sup.subscribe() as events,
        open_in_process_streams(sup, create_demo_server()) as connection,
    ):
        assert connection.session.state is SessionState.CREATED
        ended = await wait_for(events, EventKind.EXPIRED, connection.session_id)
        assert ended.reason == "init-timeout"
        assert trio.current_time() >= 5.0


async def test_idle_in_process_session_expires(autojump_clock: trio.testing.MockClock) -> None:
    async with (
        open_supervisor(idle_timeout=30.0) as sup,
        sup.subscribe() as events,
        open_in_process_streams(sup, create_demo_server()) as connection,
        ClientSession(connection.read_stream, connection.write_stream) as client,
    ):
        await client.initialize()
        await trio.sleep(20)
        assert await counter(client) == 1
        await trio.sleep(20)
        assert sup.has_session(connection.session_id)
        expired = await wait_for(events, EventKind.EXPIRED, connection.session_id)
        assert expired.reason == "idle-timeout"
        with pytest.raises(MCPError):
            await client.call_tool("counter", {})


async def test_long_tool_call_is_not_idle(autojump_clock: trio.testing.MockClock) -> None:
    async def slow() -> str:
        await trio.sleep(100)
        return "done"

    async with (
        open_supervisor(idle_timeout=30.0) as sup,
        open_in_process_client(sup, tool_server("slow", slow)) as client,
    ):
        result = await client.call_tool("slow", {})
        assert text(result) == "done"
        assert trio.current_time() >= 100
        [session] = sup.active_sessions()
        assert session.state is SessionState.READY
        assert session.in_flight == 0


async def test_close_session_disconnects_the_client() -> None:
    async with (
        open_supervisor() as sup,
        sup.subscribe() as events,
        open_in_process_streams(sup, create_demo_server()) as connection,
        ClientSession(connection.read_stream, connection.write_stream) as client,
    ):
        await client.initialize()
        assert sup.close_session(connection.session_id, reason="operator")
        closed = await wait_for(events, EventKind.CLOSED, connection.session_id)
        assert closed.reason == "operator"
        with pytest.raises(MCPError):
            await client.call_tool("counter", {})


async def test_capacity_is_shared_with_in_process_sessions() -> None:
    from supervisor import CapacityError

    async with (
        open_supervisor(max_sessions=1) as sup,
        open_in_process_client(sup, create_demo_server()),
    ):
        with pytest.raises(CapacityError):
            async with open_in_process_streams(sup, create_demo_server(), wait=False):
                pass  # pragma: no cover


# -- stdio --------------------------------------------------------------------------------------


def line(message: dict[str, Any]) -> bytes:
    return json.dumps(message).encode() + b"\n"


@asynccontextmanager
async def stdio_pair(
    sup: Supervisor,
) -> AsyncIterator[tuple[trio.abc.SendStream, trio.abc.ReceiveStream, trio.Event]]:
    """serve_stdio on memory streams; yields (client -> server, server -> client, done)."""
    to_server, server_in = trio.testing.memory_stream_one_way_pair()
    server_out, from_server = trio.testing.memory_stream_one_way_pair()
    done = trio.Event()

    async def run() -> None:
        await serve_stdio(create_demo_server(), supervisor=sup, stdin=server_in, stdout=server_out)
        done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run)
        yield to_server, from_server, done


async def read_message(stream: trio.abc.ReceiveStream, buffer: bytearray) -> dict[str, Any]:
    while b"\n" not in buffer:
        buffer += await stream.receive_some(65536)
    raw, _, rest = bytes(buffer).partition(b"\n")
    buffer[:] = rest
    decoded: dict[str, Any] = json.loads(raw)
    return decoded


INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-11-25",
        "capabilities": {},
        "clientInfo": {"name": "stdio-test", "version": "1"},
    },
}


async def test_stdio_session_until_eof() -> None:
    async with open_supervisor() as sup, sup.subscribe() as events:
        async with stdio_pair(sup) as (to_server, from_server, done):
            buffer = bytearray()
            await to_server.send_all(line(INIT))
            assert (await read_message(from_server, buffer))["result"]["protocolVersion"]
            [session] = sup.active_sessions()
            assert session.transport is Transport.STDIO
            assert session.state is SessionState.INITIALIZING  # until notifications/initialized
            await to_server.send_all(
                line({"jsonrpc": "2.0", "method": "notifications/initialized"})
                + b"this is not json\n"
                + line(
                    {
                        "jsonrpc": "2.0",
                        "id": 2,
                        "method": "tools/call",
                        "params": {"name": "counter", "arguments": {}},
                    }
                )
            )
            reply = await read_message(from_server, buffer)
            assert reply["id"] == 2
            assert reply["result"]["structuredContent"] == {"count": 1}
            ready = sup.get_session(session.id)
            assert ready.state is SessionState.READY
            assert ready.client_info == {"name": "stdio-test", "version": "1"}
            await to_server.aclose()  # EOF
            await done.wait()
        closed = await wait_for(events, EventKind.CLOSED, session.id)
        assert closed.reason == "client-disconnected"


async def test_stdio_returns_when_the_session_expires(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_supervisor(idle_timeout=10.0) as sup:
        async with stdio_pair(sup) as (to_server, from_server, done):
            await to_server.send_all(line(INIT))
            assert (await read_message(from_server, bytearray()))["id"] == 1
            await done.wait()
            assert trio.current_time() >= 10.0
        assert len(sup) == 0


async def test_serve_stdio_opens_its_own_supervisor() -> None:
    to_server, server_in = trio.testing.memory_stream_one_way_pair()
    server_out, from_server = trio.testing.memory_stream_one_way_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            lambda: serve_stdio(
                create_demo_server(), stdin=server_in, stdout=server_out, idle_timeout=60.0
            )
        )
        await to_server.send_all(line(INIT))
        assert (await read_message(from_server, bytearray()))["id"] == 1
        await to_server.aclose()
    with pytest.raises(TypeError):
        await serve_stdio(create_demo_server(), supervisor=object(), idle_timeout=1.0)  # type: ignore[arg-type]


# -- graceful close on duplex transports --------------------------------------------------------
#
# Shared by tests/test_mcp_stdio.py and tests/test_mcp_websocket.py: a server whose tool sleeps,
# and one scenario run against the official client on every duplex transport.

#: The JSON-RPC error code of a request the closing session does not answer with a result.
SESSION_CLOSING_CODE = types.INTERNAL_ERROR


def sleep_server(started: trio.MemorySendChannel[float]) -> Server[Any]:
    """A server with one tool, ``sleep(seconds)``; each call reports its start on ``started``."""

    async def list_tools(
        ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        return types.ListToolsResult(
            tools=[types.Tool(name="sleep", input_schema={"type": "object"})]
        )

    async def call_tool(
        ctx: ServerRequestContext[Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        seconds = float((params.arguments or {})["seconds"])
        started.send_nowait(seconds)
        await trio.sleep(seconds)
        return types.CallToolResult(content=[types.TextContent(text=f"slept {seconds:g}")])

    return Server("sleeper", on_list_tools=list_tools, on_call_tool=call_tool)


def sleep_channel() -> tuple[trio.MemorySendChannel[float], trio.MemoryReceiveChannel[float]]:
    return trio.open_memory_channel[float](16)


def assert_closing_error(outcome: object) -> None:
    """A JSON-RPC error from the closing session: not a dropped connection."""
    assert isinstance(outcome, MCPError), outcome
    assert outcome.error.code == SESSION_CLOSING_CODE, outcome.error
    assert outcome.error.message != "Connection closed"
    assert "closing" in outcome.error.message


async def check_drain(
    client: ClientSession,
    started: trio.MemoryReceiveChannel[float],
    *,
    grace: float,
    close_at: float,
    close: Any = None,
) -> dict[str, object]:
    """Two calls in flight when the session starts closing at ``close_at``; then a late request.

    ``close()`` (if given) starts the close at ``close_at``; without it a deadline fires then.
    The call that ends a quarter of the grace after the close finishes with its result; the
    one that would run for ever gets a JSON-RPC error before the grace runs out, and so does
    a ping sent after the close began. Returns the outcomes for more checks.
    """
    outcomes: dict[str, object] = {}
    # The client lists the tools before its first call_tool returns (output schemas): now, so
    # that a call that finishes while the session closes needs no second request.
    await client.list_tools()
    short = close_at - trio.current_time() + grace / 4

    async def call(name: str, seconds: float) -> None:
        try:
            outcomes[name] = text(await client.call_tool("sleep", {"seconds": seconds}))
        except MCPError as exc:
            outcomes[name] = exc
        outcomes[name + "_at"] = trio.current_time()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(call, "short", short)
        nursery.start_soon(call, "long", 10_000.0)
        assert {await started.receive(), await started.receive()} == {short, 10_000.0}
        await trio.sleep_until(close_at)
        if close is not None:
            close()
        await trio.sleep(grace / 8)
        try:
            await client.send_ping()
        except MCPError as exc:
            outcomes["late"] = exc
        else:  # pragma: no cover - the assertion below reports it
            outcomes["late"] = "answered"
    assert outcomes["short"] == f"slept {short:g}"
    assert_closing_error(outcomes["long"])
    assert_closing_error(outcomes["late"])
    long_at = outcomes["long_at"]
    assert isinstance(long_at, float)
    assert close_at < long_at < close_at + grace
    return outcomes


@pytest.mark.parametrize("how", ["close_session", "shutdown", "max-lifetime"])
async def test_in_process_close_drains_requests_in_flight(
    autojump_clock: trio.testing.MockClock, how: str
) -> None:
    send, started = sleep_channel()
    grace = 2.0
    config: dict[str, Any] = {"close_grace": grace, "shutdown_grace": grace}
    if how == "max-lifetime":
        config["max_lifetime"] = 50.0
    async with (
        open_supervisor(**config) as sup,
        sup.subscribe() as events,
        trio.open_nursery() as nursery,
    ):
        async with open_in_process_streams(sup, sleep_server(send)) as connection:
            session_id = connection.session_id
            close_at = {"max-lifetime": 50.0}.get(how, 10.0)

            def close() -> None:
                if how == "close_session":
                    assert sup.close_session(session_id)
                else:
                    nursery.start_soon(sup.shutdown)

            async with ClientSession(connection.read_stream, connection.write_stream) as client:
                await client.initialize()
                await check_drain(
                    client,
                    started,
                    grace=grace,
                    close_at=close_at,
                    close=None if how == "max-lifetime" else close,
                )
        ended = await wait_for(
            events, EventKind.EXPIRED if how == "max-lifetime" else EventKind.CLOSED, session_id
        )
        assert ended.reason == {"close_session": "closed"}.get(how, how)
        assert trio.current_time() < close_at + grace


async def test_in_process_close_answers_then_ends_the_stream(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """On the raw streams: the cut request's error, then EOF (no exception, no second answer)."""
    send, started = sleep_channel()
    async with (
        open_supervisor(close_grace=1.0) as sup,
        open_in_process_streams(sup, sleep_server(send)) as connection,
    ):
        write, read = connection.write_stream, connection.read_stream

        async def request(request_id: int, method: str, params: dict[str, Any]) -> None:
            message = types.JSONRPCRequest(
                jsonrpc="2.0", id=request_id, method=method, params=params
            )
            await write.send(SessionMessage(message))

        await request(1, "initialize", INIT["params"])  # type: ignore[arg-type]
        assert isinstance(await read.receive(), SessionMessage)
        await write.send(
            SessionMessage(
                types.JSONRPCNotification(jsonrpc="2.0", method="notifications/initialized")
            )
        )
        await request(2, "tools/call", {"name": "sleep", "arguments": {"seconds": 100}})
        await started.receive()
        assert sup.close_session(connection.session_id)
        received: list[SessionMessage | Exception] = []
        with pytest.raises(anyio.EndOfStream):
            while True:
                received.append(await read.receive())
        [answer] = received
        assert isinstance(answer, SessionMessage)
        assert isinstance(answer.message, types.JSONRPCError)
        assert answer.message.id == 2
        assert answer.message.error.code == SESSION_CLOSING_CODE
        assert answer.message.error.data == {"reason": "closed"}
        assert trio.current_time() < 1.0
