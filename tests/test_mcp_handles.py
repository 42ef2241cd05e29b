"""State handles (issue 10): supervised sessions for sessionless 2026-07-28 clients.

Every handle is a session of the core, so these tests check it through the supervisor (events,
capacity, principal binding, deadlines) as much as through the tool results. Clients are the
official ``mcp.Client`` in its default mode (2026-07-28 over HTTP: no protocol session at all)
and ``mode="legacy"`` (a protocol session, which may still pass handles), over Streamable HTTP
in memory (``httpx2.ASGITransport``), in-process streams, stdio on memory streams and
WebSocket over in-memory ASGI. Deadlines run on trio's MockClock.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import httpx2
import mcp_types as types
import pytest
import trio
import trio.testing
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel.server import Server
from mcp.server.mcpserver import Context, MCPServer
from mcp.shared._stream_protocols import ReadStream, WriteStream
from mcp.shared.message import SessionMessage
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS

from supervisor import EventKind, SessionState, Supervisor, Transport, open_supervisor
from supervisor.mcp import (
    DEFAULT_REMEMBER,
    DEFAULT_REMEMBER_FOR,
    HANDLE_ERA,
    SESSION_ARGUMENT_DESCRIPTION,
    McpHttpApp,
    add_session_tools,
    call_with_session,
    create_demo_server,
    current_session,
    open_in_process_streams,
    run_in_session,
    serving_stateless,
    session_tool,
    state_handles,
    with_session_argument,
)
from supervisor.mcp._handles import open_session

from ._mcp_helpers import wait_for
from .test_mcp_stdio import stdio_wire
from .test_mcp_websocket import websocket

URL = "http://127.0.0.1:8000/mcp"
TOKENS = {"token-alice": "alice", "token-bob": "bob"}
ALICE = {"authorization": "Bearer token-alice"}
BOB = {"authorization": "Bearer token-bob"}


async def verify(token: str) -> str | None:
    return TOKENS.get(token)


class _Streams:
    """A client ``Transport`` over `open_in_process_streams`."""

    def __init__(self, sup: Supervisor, server: Any) -> None:
        self._cm = open_in_process_streams(sup, server)

    async def __aenter__(
        self,
    ) -> tuple[ReadStream[SessionMessage | Exception], WriteStream[SessionMessage]]:
        connection = await self._cm.__aenter__()
        return connection.read_stream, connection.write_stream

    async def __aexit__(self, *exc_info: Any) -> None:
        await self._cm.__aexit__(*exc_info)


#: A way to connect: (supervisor, app or None, server, headers) -> an entered official Client.
Connect = Callable[
    [Supervisor, "McpHttpApp | None", Any, Mapping[str, str]], AbstractAsyncContextManager[Client]
]


def _http(mode: str) -> Connect:
    @asynccontextmanager
    async def connect(
        sup: Supervisor, app: McpHttpApp | None, server: Any, headers: Mapping[str, str]
    ) -> AsyncIterator[Client]:
        assert app is not None
        transport = httpx2.ASGITransport(app=app)
        async with (
            httpx2.AsyncClient(transport=transport, headers=dict(headers)) as http,
            Client(streamable_http_client(URL, http_client=http), mode=mode) as client,
        ):
            yield client

    return connect


def _in_process(mode: str) -> Connect:
    @asynccontextmanager
    async def connect(
        sup: Supervisor, app: McpHttpApp | None, server: Any, headers: Mapping[str, str]
    ) -> AsyncIterator[Client]:
        async with Client(_Streams(sup, server), mode=mode) as client:
            yield client

    return connect


@asynccontextmanager
async def stdio_streams(
    sup: Supervisor | None, server: Any
) -> AsyncIterator[tuple[ReadStream[SessionMessage | Exception], WriteStream[SessionMessage]]]:
    """`serve_stdio` on memory streams: the client's end, newline-delimited JSON-RPC."""
    async with stdio_wire(sup, server) as wire:
        yield wire.read_stream, wire.write_stream


def _stdio(mode: str) -> Connect:
    @asynccontextmanager
    async def connect(
        sup: Supervisor, app: McpHttpApp | None, server: Any, headers: Mapping[str, str]
    ) -> AsyncIterator[Client]:
        async with Client(stdio_streams(sup, server), mode=mode) as client:
            yield client

    return connect


def _websocket(mode: str) -> Connect:
    @asynccontextmanager
    async def streams(
        app: McpHttpApp,
    ) -> AsyncIterator[tuple[ReadStream[SessionMessage | Exception], WriteStream[SessionMessage]]]:
        async with websocket(app) as peer:
            yield peer.read_stream, peer.write_stream

    @asynccontextmanager
    async def connect(
        sup: Supervisor, app: McpHttpApp | None, server: Any, headers: Mapping[str, str]
    ) -> AsyncIterator[Client]:
        assert app is not None
        async with Client(streams(app), mode=mode) as client:
            yield client

    return connect


CLIENTS = {
    "http-default": _http("auto"),
    "http-legacy": _http("legacy"),
    "in-process-default": _in_process("auto"),
    "in-process-legacy": _in_process("legacy"),
    "stdio-default": _stdio("auto"),
    "stdio-legacy": _stdio("legacy"),
    "websocket-default": _websocket("auto"),
    "websocket-legacy": _websocket("legacy"),
}
HTTP_CLIENTS = {name: connect for name, connect in CLIENTS.items() if name.startswith("http")}


@asynccontextmanager
async def connected(
    connect: Connect,
    server: Any = None,
    headers: Mapping[str, str] | None = None,
    app_options: Mapping[str, Any] | None = None,
    **config: Any,
) -> AsyncIterator[tuple[Supervisor, Client]]:
    config.setdefault("max_sessions", 8)
    server = server or create_demo_server()
    async with open_supervisor(**config) as sup:
        app = McpHttpApp(sup, server, **(app_options or {}))
        async with connect(sup, app, server, headers or {}) as client:
            yield sup, client


async def open_handle(client: Client) -> str:
    result = await client.call_tool("open_session", {})
    assert not result.is_error, result
    assert isinstance(result.structured_content, dict)
    handle = result.structured_content["session"]
    assert isinstance(handle, str)
    assert handle in result.content[0].text  # type: ignore[union-attr]
    return handle


async def count(client: Client, handle: str | None) -> int:
    arguments = {} if handle is None else {"session": handle}
    result = await client.call_tool("counter", arguments)
    assert not result.is_error, result
    assert isinstance(result.structured_content, dict)
    value = result.structured_content["count"]
    assert isinstance(value, int)
    return value


async def error_of(client: Client, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    result = await client.call_tool(name, arguments)
    assert result.is_error, result
    assert isinstance(result.structured_content, dict)
    assert set(result.structured_content) >= {"error", "message"}
    return result.structured_content


def handles_of(sup: Supervisor) -> list[str]:
    return [s.id for s in sup.active_sessions() if s.metadata.get("state_handle")]


# -- counting ---------------------------------------------------------------------------------


@pytest.mark.parametrize("connect", CLIENTS.values(), ids=CLIENTS.keys())
async def test_each_client_speaks_the_era_its_mode_says(
    connect: Connect, request: pytest.FixtureRequest
) -> None:
    async with connected(connect) as (_, client):
        version = client.session.protocol_version
    if request.node.callspec.id.endswith("-default"):
        assert version == HANDLE_ERA
    else:
        assert version in HANDSHAKE_PROTOCOL_VERSIONS


@pytest.mark.parametrize("connect", CLIENTS.values(), ids=CLIENTS.keys())
async def test_counter_counts_1_2_3_through_a_handle(connect: Connect) -> None:
    async with connected(connect) as (sup, client):
        handle = await open_handle(client)
        assert [await count(client, handle) for _ in range(3)] == [1, 2, 3]
        session = sup.get_session(handle)
        assert session.state is SessionState.READY
        assert session.metadata["era"] == HANDLE_ERA
        assert session.protocol_version == HANDLE_ERA


@pytest.mark.parametrize("connect", CLIENTS.values(), ids=CLIENTS.keys())
async def test_two_handles_count_independently(connect: Connect) -> None:
    async with connected(connect) as (sup, client):
        first, second = await open_handle(client), await open_handle(client)
        assert first != second
        assert await count(client, first) == 1
        assert await count(client, first) == 2
        assert await count(client, second) == 1
        assert await count(client, first) == 3
        assert await count(client, second) == 2
        assert sorted(handles_of(sup)) == sorted([first, second])


async def test_default_mode_over_http_is_sessionless_without_a_handle() -> None:
    async with connected(_http("auto")) as (sup, client):
        assert [await count(client, None) for _ in range(3)] == [1, 1, 1]
        assert len(sup) == 0  # the SDK's stateless path: no session at all
        handle = await open_handle(client)
        assert [await count(client, handle) for _ in range(2)] == [1, 2]
        assert [s.id for s in sup.active_sessions()] == [handle]


async def test_legacy_client_without_a_handle_uses_its_protocol_session() -> None:
    async with connected(_http("legacy")) as (sup, client):
        assert [await count(client, None) for _ in range(2)] == [1, 2]
        handle = await open_handle(client)
        assert await count(client, handle) == 1
        assert await count(client, None) == 3
        assert len(sup) == 2


async def test_default_mode_lists_the_handle_tools_and_the_session_argument() -> None:
    async with connected(_http("auto")) as (_, client):
        tools = {tool.name: tool for tool in (await client.list_tools()).tools}
        assert {"open_session", "close_session", "echo", "counter"} <= set(tools)
        for name in ("echo", "counter"):
            schema = tools[name].input_schema
            assert schema["properties"]["session"] == {
                "type": "string",
                "description": SESSION_ARGUMENT_DESCRIPTION,
            }
            assert "session" not in schema.get("required", [])
        result = await client.call_tool(
            "echo", {"text": "hi", "session": await open_handle(client)}
        )
        assert result.content[0].text == "hi"  # type: ignore[union-attr]


# -- errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize("connect", CLIENTS.values(), ids=CLIENTS.keys())
async def test_expired_handle_gives_session_expired_at_idle_timeout(
    connect: Connect, autojump_clock: trio.testing.MockClock
) -> None:
    async with connected(connect, idle_timeout=60.0) as (sup, client):
        handle = await open_handle(client)
        async with sup.subscribe(kinds={EventKind.EXPIRED}, session_id=handle) as events:
            assert await count(client, handle) == 1
            last_call = trio.current_time()
            # The client's own protocol session (legacy) stays busy; the handle gets no call.
            for _ in range(4):
                await trio.sleep(20.0)
                await client.call_tool("echo", {"text": "keep-alive"})
            expired = await wait_for(events, EventKind.EXPIRED, handle)
        assert expired.reason == "idle-timeout"
        assert 60.0 <= expired.at - last_call <= 60.0 + sup.config.deadline_slack
        error = await error_of(client, "counter", {"session": handle})
        assert error["error"] == "session-expired"
        assert handle not in sup


@pytest.mark.parametrize("connect", CLIENTS.values(), ids=CLIENTS.keys())
async def test_closed_handle_gives_session_closed(connect: Connect) -> None:
    async with connected(connect) as (sup, client), sup.subscribe() as events:
        handle = await open_handle(client)
        assert await count(client, handle) == 1
        result = await client.call_tool("close_session", {"session": handle})
        assert not result.is_error
        closed = await wait_for(events, EventKind.CLOSED, handle)
        assert closed.reason == "closed-by-client"
        assert (await error_of(client, "counter", {"session": handle}))["error"] == (
            "session-closed"
        )
        assert (await error_of(client, "close_session", {"session": handle}))["error"] == (
            "session-closed"
        )


@pytest.mark.parametrize("connect", CLIENTS.values(), ids=CLIENTS.keys())
async def test_unknown_handle_gives_session_not_found(connect: Connect) -> None:
    async with connected(connect) as (_, client):
        error = await error_of(client, "counter", {"session": "x" * 32})
        assert error["error"] == "session-not-found"
        assert (await error_of(client, "echo", {"text": "a", "session": 7}))["error"] == (
            "session-not-found"
        )


@pytest.mark.parametrize("connect", HTTP_CLIENTS.values(), ids=HTTP_CLIENTS.keys())
async def test_another_principals_handle_is_not_found_like_an_unknown_one(
    connect: Connect,
) -> None:
    async with open_supervisor(max_sessions=8) as sup:
        app = McpHttpApp(sup, create_demo_server(), token_verifier=verify)
        server = create_demo_server()
        async with (
            connect(sup, app, server, ALICE) as alice,
            connect(sup, app, server, BOB) as bob,
        ):
            handle = await open_handle(alice)
            assert sup.get_session(handle).principal == "alice"
            assert await count(alice, handle) == 1
            unknown = await error_of(bob, "counter", {"session": "y" * 32})
            foreign = await error_of(bob, "counter", {"session": handle})
            assert foreign == unknown
            assert foreign["error"] == "session-not-found"
            assert (await error_of(bob, "close_session", {"session": handle})) == unknown
            assert await count(alice, handle) == 2  # untouched by bob's attempts
            await alice.call_tool("close_session", {"session": handle})
            # Ended: alice hears session-closed, bob still nothing but not-found.
            assert (await error_of(alice, "counter", {"session": handle}))["error"] == (
                "session-closed"
            )
            assert (await error_of(bob, "counter", {"session": handle})) == unknown


async def test_a_protocol_session_id_is_not_a_handle() -> None:
    async with connected(_http("legacy")) as (sup, client):
        await count(client, None)
        [protocol_session] = sup.active_sessions()
        error = await error_of(client, "counter", {"session": protocol_session.id})
        assert error["error"] == "session-not-found"


@pytest.mark.parametrize("connect", CLIENTS.values(), ids=CLIENTS.keys())
async def test_capacity_refuses_open_session_with_a_retry_hint(connect: Connect) -> None:
    async with connected(connect, max_sessions=3) as (sup, client):
        while len(sup) < 3:
            await open_handle(client)
        error = await error_of(client, "open_session", {})
        assert error["error"] == "capacity"
        assert error["retry_after"] > 0
        assert sup.statistics().rejected_total == 1
        first = handles_of(sup)[0]
        async with sup.subscribe(session_id=first) as events:
            await client.call_tool("close_session", {"session": first})
            # The slot frees when the handle's actor has ended (its terminal event).
            await wait_for(events, EventKind.CLOSED, first)
        await open_handle(client)


async def test_per_principal_limit_applies_to_handles() -> None:
    async with open_supervisor(max_sessions=8, max_sessions_per_principal=2) as sup:
        app = McpHttpApp(sup, create_demo_server(), token_verifier=verify)
        connect = _http("auto")
        async with (
            connect(sup, app, None, ALICE) as alice,
            connect(sup, app, None, BOB) as bob,
        ):
            await open_handle(alice)
            await open_handle(alice)
            assert (await error_of(alice, "open_session", {}))["error"] == "capacity"
            await open_handle(bob)


# -- the handle is a session of the core ------------------------------------------------------


async def test_a_handles_lifecycle_events_and_statistics(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with connected(_http("auto"), idle_timeout=30.0) as (sup, client):
        async with sup.subscribe() as events:
            handle = await open_handle(client)
            created = await wait_for(events, EventKind.CREATED, handle)
            assert created.session.metadata["era"] == HANDLE_ERA
            assert created.session.transport is Transport.HTTP
            await wait_for(events, EventKind.INITIALIZED, handle)
            await count(client, handle)
            expired = await wait_for(events, EventKind.EXPIRED, handle)
            assert expired.reason == "idle-timeout"
        stats = sup.statistics()
        assert stats.created_total == 1
        assert stats.expired_total == 1
        assert len(sup) == 0


async def test_calls_on_one_handle_run_one_at_a_time_in_its_actor() -> None:
    running: list[int] = []
    overlap: list[int] = []
    release = trio.Event()

    async def list_tools(
        ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        tool = types.Tool(name="slow", input_schema={"type": "object"})
        return types.ListToolsResult(tools=[with_session_argument(tool)])

    async def slow(arguments: dict[str, Any]) -> types.CallToolResult:
        state = current_session().state
        running.append(1)
        overlap.append(len(running))
        state["n"] = state.get("n", 0) + 1
        await release.wait()
        running.pop()
        return types.CallToolResult(content=[types.TextContent(text=str(state["n"]))])

    async def call_tool(
        ctx: ServerRequestContext[Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        return await call_with_session(params.arguments, slow)

    server = Server("slow", on_list_tools=list_tools, on_call_tool=call_tool)
    add_session_tools(server)
    async with connected(_http("auto"), server=server) as (sup, client):
        handle = await open_handle(client)
        texts: list[str] = []

        async def one() -> None:
            result = await client.call_tool("slow", {"session": handle})
            texts.append(result.content[0].text)  # type: ignore[union-attr]

        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(one)
            await trio.testing.wait_all_tasks_blocked()
            assert sup.get_session(handle).mailbox_depth == 2  # queued behind the first
            release.set()
        assert overlap == [1, 1, 1]
        assert sorted(texts) == ["1", "2", "3"]


async def test_ten_thousand_handles_opened_and_expired_leave_nothing_behind(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_supervisor(max_sessions=10_000, idle_timeout=10.0) as sup:
        with serving_stateless(sup, "alice"):
            for _ in range(10_000):
                result = await open_session()
                assert not result.is_error
            assert len(sup) == 10_000
            refused = await open_session()
            assert refused.structured_content is not None
            assert refused.structured_content["error"] == "capacity"
            await trio.sleep(10.0 + sup.config.deadline_slack + 1.0)
            assert len(sup) == 0
            stats = sup.statistics()
            assert stats.expired_total == 10_000
            assert (stats.total, stats.active) == (0, 0)
            assert state_handles(sup).remembered == DEFAULT_REMEMBER
            # Every slot is free again: the same number fits.
            for _ in range(10_000):
                assert not (await open_session()).is_error
            assert len(sup) == 10_000


async def test_the_memory_of_ended_handles_is_bounded_in_size_and_time(
    autojump_clock: trio.testing.MockClock,
) -> None:
    assert (DEFAULT_REMEMBER, DEFAULT_REMEMBER_FOR) == (10_000, 3600.0)
    async with open_supervisor(max_sessions=16) as sup:
        handles = state_handles(sup, remember=3, remember_for=100.0)
        opened = [handles.open(principal=None, transport=Transport.HTTP).id for _ in range(5)]
        async with sup.subscribe(kinds={EventKind.CLOSED}) as events:
            for handle in opened:
                handles.close(handle, principal=None)
                await wait_for(events, EventKind.CLOSED, handle)
        assert handles.remembered == 3
        assert [handles.ended(h, principal=None) for h in opened] == [None, None] + [
            "session-closed"
        ] * 3
        assert handles.ended(opened[-1], principal="mallory") is None
        await trio.sleep(100.0)
        assert handles.remembered == 0
        assert handles.ended(opened[-1], principal=None) is None


async def test_handles_never_appear_in_full_in_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with connected(_http("auto")) as (_, client):
        handle = await open_handle(client)
        await count(client, handle)
        await client.call_tool("close_session", {"session": handle})
        await error_of(client, "counter", {"session": handle})
    # The server side (the client's SDK logs its own requests at DEBUG, arguments included).
    server_side = [r for r in caplog.records if r.name.startswith(("supervisor", "mcp.server"))]
    assert any(handle[:8] in record.getMessage() for record in server_side)
    assert not any(handle in record.getMessage() for record in server_side)


# -- declaring session tools --------------------------------------------------------------------


def high_level_server() -> MCPServer[Any]:
    server: MCPServer[Any] = MCPServer("high-level")

    @server.tool()
    @session_tool
    async def tally(step: int = 1) -> int:
        """Add ``step`` to this session's tally."""
        state = current_session().state
        state["tally"] = state.get("tally", 0) + step
        return int(state["tally"])

    add_session_tools(server)
    return server


@pytest.mark.parametrize("connect", CLIENTS.values(), ids=CLIENTS.keys())
async def test_session_tool_on_an_mcpserver(connect: Connect) -> None:
    server = high_level_server()
    async with connected(connect, server=server) as (_, client):
        tools = {tool.name: tool for tool in (await client.list_tools()).tools}
        schema = tools["tally"].input_schema
        assert schema["properties"]["session"]["description"] == SESSION_ARGUMENT_DESCRIPTION
        assert "step" in schema["properties"]
        assert tools["tally"].description == "Add ``step`` to this session's tally."
        handle = await open_handle(client)
        for expected in (2, 4, 6):
            result = await client.call_tool("tally", {"step": 2, "session": handle})
            assert result.structured_content == {"result": expected}
        other = await open_handle(client)
        result = await client.call_tool("tally", {"session": other})
        assert result.structured_content == {"result": 1}
        await client.call_tool("close_session", {"session": other})
        error = await error_of(client, "tally", {"session": other})
        assert error["error"] == "session-closed"


async def test_session_tool_without_a_handle_in_the_stateless_era_has_no_session() -> None:
    server: MCPServer[Any] = MCPServer("high-level")

    @server.tool()
    @session_tool
    def where() -> str:
        try:
            return current_session().id[:8]
        except LookupError:
            return "none"

    add_session_tools(server)
    async with connected(_http("auto"), server=server) as (_, client):
        assert (await client.call_tool("where", {})).content[0].text == "none"  # type: ignore[union-attr]
        handle = await open_handle(client)
        result = await client.call_tool("where", {"session": handle})
        assert result.content[0].text == handle[:8]  # type: ignore[union-attr]


def test_session_tool_refuses_a_function_with_its_own_session_parameter() -> None:
    def tool(session: str) -> str:
        return session

    with pytest.raises(TypeError, match="session"):
        session_tool(tool)


async def test_a_body_that_uses_its_own_handle_runs_inline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def list_tools(
        ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        tool = types.Tool(name="nested", input_schema={"type": "object"})
        return types.ListToolsResult(tools=[with_session_argument(tool)])

    async def inner() -> int:
        state = current_session().state
        state["n"] = state.get("n", 0) + 1
        return int(state["n"])

    async def nested(arguments: dict[str, Any]) -> types.CallToolResult:
        handle = current_session().id
        first = await run_in_session(handle, inner)
        second = await run_in_session(handle, inner)
        return types.CallToolResult(content=[types.TextContent(text=f"{first},{second}")])

    async def call_tool(
        ctx: ServerRequestContext[Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        return await call_with_session(params.arguments, nested)

    server = Server("nested", on_list_tools=list_tools, on_call_tool=call_tool)
    add_session_tools(server)
    async with connected(_http("auto"), server=server) as (_, client):
        handle = await open_handle(client)
        with trio.fail_after(60):
            result = await client.call_tool("nested", {"session": handle})
        assert result.content[0].text == "1,2"  # type: ignore[union-attr]


async def test_a_session_tool_with_the_sdk_context_reports_from_the_handles_actor() -> None:
    server: MCPServer[Any] = MCPServer("context")

    @server.tool()
    @session_tool
    async def slow(text: str, ctx: Context) -> str:
        await ctx.report_progress(1, 2, "halfway")
        return f"{current_session().id[:8]}:{text}"

    add_session_tools(server)
    reported: list[tuple[float, float | None, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        reported.append((progress, total, message))

    async with open_supervisor(max_sessions=4, mailbox_size=0) as sup:
        app = McpHttpApp(sup, server)
        transport = httpx2.ASGITransport(app=app)
        async with (
            httpx2.AsyncClient(transport=transport) as http,
            Client(streamable_http_client(URL, http_client=http)) as client,
        ):
            [tool] = [t for t in (await client.list_tools()).tools if t.name == "slow"]
            assert set(tool.input_schema["properties"]) == {"text", "session"}
            handle = await open_handle(client)
            result = await client.call_tool(
                "slow", {"text": "hi", "session": handle}, progress_callback=on_progress
            )
            assert result.structured_content == {"result": f"{handle[:8]}:hi"}
            assert reported == [(1, 2, "halfway")]


async def test_a_cancelled_caller_cancels_its_body_and_the_handle_serves_on(
    autojump_clock: trio.testing.MockClock,
) -> None:
    cancelled = trio.Event()

    async def hang() -> None:
        try:
            await trio.sleep_forever()
        finally:
            cancelled.set()

    async def one() -> int:
        return 1

    async with open_supervisor(max_sessions=4) as sup:
        with serving_stateless(sup, None):
            opened = await open_session()
            assert opened.structured_content is not None
            handle = opened.structured_content["session"]
            with trio.move_on_after(5.0):
                await run_in_session(handle, hang)
            await cancelled.wait()
            assert await run_in_session(handle, one) == 1
            assert sup.get_session(handle).in_flight == 0


async def test_max_lifetime_expires_a_busy_handle(autojump_clock: trio.testing.MockClock) -> None:
    async with connected(_http("auto"), max_lifetime=100.0, idle_timeout=60.0) as (sup, client):
        handle = await open_handle(client)
        for _ in range(4):  # never idle (calls at 0, 30, 60, 90 s), but the lifetime ends
            await count(client, handle)
            await trio.sleep(30.0)
        error = await error_of(client, "counter", {"session": handle})
        assert error["error"] == "session-expired"
        assert handle not in sup


async def test_shutdown_closes_handles() -> None:
    async with open_supervisor(max_sessions=4) as sup:
        handles = state_handles(sup)
        handle = handles.open(principal=None, transport=Transport.HTTP).id
        async with sup.subscribe(session_id=handle) as events:
            await sup.shutdown()
            closed = await wait_for(events, EventKind.CLOSED, handle)
        assert closed.reason == "shutdown"
        assert handles.ended(handle, principal=None) == "session-closed"


@pytest.mark.parametrize("value", [7, 1.5, {"a": 1}, ["x"], True, ""])
async def test_a_session_that_is_not_a_handle_string_is_not_found_on_an_mcpserver(
    value: Any,
) -> None:
    server = high_level_server()
    async with connected(_http("auto"), server=server) as (_, client):
        for name in ("tally", "close_session"):
            error = await error_of(client, name, {"session": value})
            assert error["error"] == "session-not-found"
        error = await error_of(client, "close_session", {})
        assert error["error"] == "session-not-found"


async def test_open_session_while_shutting_down_gives_capacity_with_a_retry_hint() -> None:
    async with open_supervisor() as sup:
        await sup.shutdown()
        with serving_stateless(sup, None):
            result = await open_session()
    assert result.is_error
    assert result.structured_content is not None
    assert result.structured_content["error"] == "capacity"
    assert result.structured_content["retry_after"] > 0


async def test_bodies_that_call_back_into_a_waiting_handle_run_inline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_supervisor() as sup:
        seen: list[str] = []
        with serving_stateless(sup, None):
            a = state_handles(sup).open(principal=None, transport=Transport.IN_PROCESS).id
            b = state_handles(sup).open(principal=None, transport=Transport.IN_PROCESS).id

            async def leaf() -> str:
                seen.append(current_session().id)
                return "leaf"

            async def in_b() -> str:
                return await run_in_session(a, leaf)  # A's body waits on this call

            async def in_a() -> str:
                return await run_in_session(b, in_b)

            with trio.fail_after(10):
                assert await run_in_session(a, in_a) == "leaf"
        assert seen == [a]  # the innermost call ran as A's session
        assert sup.get_session(a).in_flight == 0
        assert sup.get_session(b).in_flight == 0


async def test_serve_stdio_with_its_own_supervisor_has_room_for_handles() -> None:
    # Without supervisor=, serve_stdio opens one: it must hold the connection's session and
    # the handles a 2026-07-28 client opens on it.
    async with Client(stdio_streams(None, create_demo_server())) as client:
        handle = await open_handle(client)
        for expected in (1, 2, 3):
            result = await client.call_tool("counter", {"session": handle})
            assert result.structured_content == {"count": expected}
