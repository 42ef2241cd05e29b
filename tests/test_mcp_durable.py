"""Durable MCP sessions (issue 13): both eras keep ``current_session().state`` in the store.

A Streamable HTTP session (handshake era) and a 2026-07-28 state handle are durable sessions
when the supervisor has a store: the demo's ``counter`` lives in ``current_session().state``,
which is saved write-through and restored when the session starts again, in a new supervisor
on the same store (the restart a kill -9 leads to: the process tests are elsewhere), after a
passivation at the idle timeout, or on another node. In process throughout: raw HTTP requests
(httpx over ASGI) and the official client (httpx2 over ASGI). Tests with the SQLite store run
on real time (its steps run in a worker thread); the others on trio's MockClock with the
in-memory store of tests/_memory_store.py.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import httpx2
import mcp_types as types
import pytest
import trio
import trio.testing
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel.server import Server

from supervisor import (
    EventKind,
    SessionNotFound,
    SessionState,
    StoreError,
    Supervisor,
    Transport,
    open_supervisor,
)
from supervisor.durable import SqliteStore
from supervisor.mcp import (
    McpHttpApp,
    call_session_tool,
    call_with_session,
    create_demo_server,
    current_session,
    state_handles,
)

from ._helpers import drain, events_only
from ._mcp_helpers import count, open_handle
from ._memory_store import MemoryStore, Shelf
from .test_mcp_http import ACCEPT, INIT, VERSION, messages, result, session_headers

BASE = "http://127.0.0.1:8000"
URL = f"{BASE}/mcp"
TOKENS = {"token-alice": "alice", "token-bob": "bob"}
ALICE = {"authorization": "Bearer token-alice"}
BOB = {"authorization": "Bearer token-bob"}


async def verify(token: str) -> str | None:
    return TOKENS.get(token)


@asynccontextmanager
async def raw(app: McpHttpApp) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE) as http:
        yield http


@asynccontextmanager
async def official(
    app: McpHttpApp, mode: str, headers: Mapping[str, str] | None = None
) -> AsyncIterator[Client]:
    """The official client; it does not end its protocol session when it leaves (no DELETE),
    as a process that is killed does not."""
    transport = httpx2.ASGITransport(app=app)
    async with (
        httpx2.AsyncClient(transport=transport, headers=dict(headers or {})) as http,
        Client(
            streamable_http_client(URL, http_client=http, terminate_on_close=False), mode=mode
        ) as client,
    ):
        yield client


async def initialize(http: httpx.AsyncClient, headers: Mapping[str, str] | None = None) -> str:
    response = await http.post("/mcp", json=INIT, headers={**ACCEPT, **(headers or {})})
    assert result(response)["protocolVersion"] == VERSION
    session_id = response.headers["mcp-session-id"]
    notified = await http.post(
        "/mcp",
        json={"jsonrpc": "2.0", "method": "notifications/initialized"},
        headers=session_headers(session_id, **(headers or {})),
    )
    assert notified.status_code == 202
    return session_id


async def call(
    http: httpx.AsyncClient,
    session_id: str,
    name: str = "counter",
    arguments: dict[str, Any] | None = None,
    headers: Mapping[str, str] | None = None,
) -> httpx.Response:
    return await http.post(
        "/mcp",
        json={
            "jsonrpc": "2.0",
            "id": 7,
            "method": "tools/call",
            "params": {"name": name, "arguments": arguments or {}},
        },
        headers=session_headers(session_id, **(headers or {})),
    )


async def count_over_http(
    http: httpx.AsyncClient, session_id: str, headers: Mapping[str, str] | None = None
) -> int:
    response = await call(http, session_id, headers=headers)
    assert response.headers["mcp-session-id"] == session_id
    value = result(response)["structuredContent"]["count"]
    assert isinstance(value, int)
    return value


def rpc_error(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    [message] = [m for m in messages(response) if "result" in m or "error" in m]
    assert "error" in message, message
    error = message["error"]
    assert isinstance(error, dict)
    return error


async def tool_error(client: Client, handle: str) -> dict[str, Any]:
    result = await client.call_tool("counter", {"session": handle})
    assert result.is_error, result
    assert isinstance(result.structured_content, dict)
    return result.structured_content


def http_sessions(sup: Supervisor) -> list[str]:
    return [
        s.id
        for s in sup.active_sessions()
        if s.transport is Transport.HTTP and not s.metadata.get("state_handle")
    ]


# -- durable by default ------------------------------------------------------------------------


async def test_sessions_are_durable_when_the_supervisor_has_a_store() -> None:
    async with open_supervisor(store=MemoryStore()) as sup:
        app = McpHttpApp(sup, create_demo_server())
        assert app.durable and state_handles(sup).durable
        with pytest.raises(ValueError, match="one per supervisor"):
            McpHttpApp(sup, create_demo_server())
        McpHttpApp(sup, create_demo_server(), durable=False)  # fine: not durable
        async with raw(app) as http:
            session_id = await initialize(http)
            assert sup.get_session(session_id).durable
    async with open_supervisor() as sup:
        assert not McpHttpApp(sup, create_demo_server()).durable
        assert not state_handles(sup).durable
        with pytest.raises(ValueError, match="needs a supervisor with a store"):
            McpHttpApp(sup, create_demo_server(), durable=True)
        with pytest.raises(ValueError, match="needs a supervisor with a store"):
            state_handles(sup, durable=True)
    async with open_supervisor(store=MemoryStore()) as sup:
        app = McpHttpApp(sup, create_demo_server(), durable=False)
        async with raw(app) as http:
            session_id = await initialize(http)
            assert not sup.get_session(session_id).durable


# -- a new supervisor on the same store (what a restart after kill -9 sees) ----------------------


async def test_an_http_session_continues_at_4_in_a_new_supervisor(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    async with open_supervisor(store=SqliteStore(path)) as sup:
        async with official(McpHttpApp(sup, create_demo_server()), "legacy") as client:
            assert [await count(client) for _ in range(3)] == [1, 2, 3]
        [session_id] = http_sessions(sup)
        handshake = sup.get_session(session_id)
        client_info, capabilities = handshake.client_info, handshake.capabilities
    # The block's end passivated the session; a new process would start just like this.
    async with open_supervisor(store=SqliteStore(path)) as sup, sup.subscribe() as events:
        app = McpHttpApp(sup, create_demo_server())
        assert http_sessions(sup) == []
        async with raw(app) as http:
            assert await count_over_http(http, session_id) == 4
            session = sup.get_session(session_id)
            assert session.state is SessionState.READY and session.epoch == 2
            assert session.protocol_version == VERSION
            assert (session.client_info, session.capabilities) == (client_info, capabilities)
            assert await count_over_http(http, session_id) == 5
            listed = await http.post(
                "/mcp",
                json={"jsonrpc": "2.0", "id": 9, "method": "tools/list"},
                headers=session_headers(session_id),
            )
            assert "counter" in {tool["name"] for tool in result(listed)["tools"]}
        got = events_only(drain(events))
        assert [e.kind for e in got if e.session_id == session_id].count(EventKind.ACTIVATED) == 1
        # The replayed handshake is not reported again.
        assert not any(e.kind is EventKind.INITIALIZED for e in got)


async def test_json_responses_continue_across_two_restarts(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    async with open_supervisor(store=SqliteStore(path)) as sup:
        async with raw(McpHttpApp(sup, create_demo_server(), json_response=True)) as http:
            session_id = await initialize(http)
            assert [await count_over_http(http, session_id) for _ in range(3)] == [1, 2, 3]
    for expected, epoch in ((4, 2), (5, 3)):
        async with open_supervisor(store=SqliteStore(path)) as sup:
            async with raw(McpHttpApp(sup, create_demo_server(), json_response=True)) as http:
                response = await call(http, session_id)
                assert response.headers["content-type"].startswith("application/json")
                assert result(response)["structuredContent"] == {"count": expected}
                assert sup.get_session(session_id).epoch == epoch


async def test_a_handle_continues_at_4_in_a_new_supervisor(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    async with open_supervisor(store=SqliteStore(path)) as sup:
        async with official(McpHttpApp(sup, create_demo_server()), "auto") as client:
            handle = await open_handle(client)
            assert [await count(client, handle) for _ in range(3)] == [1, 2, 3]
            assert sup.get_session(handle).durable
    async with open_supervisor(store=SqliteStore(path)) as sup:
        async with official(McpHttpApp(sup, create_demo_server()), "auto") as client:
            assert handle not in sup
            assert await count(client, handle) == 4
            session = sup.get_session(handle)
            assert session.epoch == 2 and session.metadata["era"] == "2026-07-28"
            assert session.state is SessionState.READY
            assert await count(client, handle) == 5
            # close_session ends it for good: a later call finds nothing.
            closed = await client.call_tool("close_session", {"session": handle})
            assert not closed.is_error, closed
    async with open_supervisor(store=SqliteStore(path)) as sup:
        async with official(McpHttpApp(sup, create_demo_server()), "auto") as client:
            assert (await tool_error(client, handle))["error"] == "session-not-found"


async def test_a_passivated_handle_can_be_closed(autojump_clock: trio.testing.MockClock) -> None:
    shelf = Shelf()
    async with open_supervisor(store=MemoryStore(shelf), idle_timeout=10) as sup:
        async with official(McpHttpApp(sup, create_demo_server()), "auto") as client:
            handle = await open_handle(client)
            assert await count(client, handle) == 1
            await trio.sleep(11)
            assert handle not in sup and shelf.records[handle].owner is None
            closed = await client.call_tool("close_session", {"session": handle})
            assert not closed.is_error, closed
            await trio.sleep(1)
            assert handle not in shelf.records
            assert (await tool_error(client, handle))["error"] == "session-closed"


# -- passivation at the idle timeout -------------------------------------------------------------


async def test_an_idle_http_session_passivates_and_its_next_request_reactivates_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    shelf = Shelf()
    async with (
        open_supervisor(store=MemoryStore(shelf), idle_timeout=10, max_sessions=1) as sup,
        sup.subscribe() as events,
    ):
        app = McpHttpApp(sup, create_demo_server())
        async with raw(app) as http:
            session_id = await initialize(http)
            assert [await count_over_http(http, session_id) for _ in range(2)] == [1, 2]
            assert shelf.records[session_id].state == {"counter": 2}
            await trio.sleep(11)
            got = events_only(drain(events))
            assert [e.reason for e in got if e.kind is EventKind.PASSIVATED] == ["idle-timeout"]
            assert not any(e.kind.is_terminal for e in got)
            assert session_id not in sup and len(sup) == 0  # the slot is free
            assert shelf.records[session_id].owner is None
            assert await count_over_http(http, session_id) == 3
            got = events_only(drain(events))
            assert [e.kind for e in got].count(EventKind.ACTIVATED) == 1
            assert sup.get_session(session_id).state is SessionState.READY
            # Passivated once more: a DELETE activates it to end it for good.
            await trio.sleep(11)
            assert session_id not in sup
            deleted = await http.delete("/mcp", headers=session_headers(session_id))
            assert deleted.status_code == 200
            await trio.sleep(1)
            assert session_id not in shelf.records  # ended for good
            gone = await call(http, session_id)
            assert gone.status_code == 404


async def test_a_request_during_the_passivation_waits_and_reactivates(
    autojump_clock: trio.testing.MockClock,
) -> None:
    shelf = Shelf()
    async with open_supervisor(store=MemoryStore(shelf, delay=0.5), idle_timeout=10) as sup:
        app = McpHttpApp(sup, create_demo_server())
        async with raw(app) as http:
            session_id = await initialize(http)
            assert await count_over_http(http, session_id) == 1
            await trio.sleep(10.01)  # passivating: its record is being written
            assert await count_over_http(http, session_id) == 2


async def test_an_idle_handle_passivates_and_its_next_call_reactivates_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    shelf = Shelf()
    async with (
        open_supervisor(store=MemoryStore(shelf), idle_timeout=10, max_sessions=2) as sup,
        sup.subscribe() as events,
    ):
        async with official(McpHttpApp(sup, create_demo_server()), "auto") as client:
            handle = await open_handle(client)
            assert [await count(client, handle) for _ in range(2)] == [1, 2]
            await trio.sleep(11)
            passivated = [e for e in events_only(drain(events)) if e.kind is EventKind.PASSIVATED]
            assert [e.session_id for e in passivated] == [handle]
            assert handle not in sup
            assert await count(client, handle) == 3
            assert await count(client, handle) == 4


async def test_a_session_tool_of_a_handshake_era_client_keeps_its_handle_durably(
    autojump_clock: trio.testing.MockClock,
) -> None:
    shelf = Shelf()
    async with open_supervisor(store=MemoryStore(shelf), idle_timeout=10) as sup:
        async with official(McpHttpApp(sup, create_demo_server()), "legacy") as client:
            handle = await open_handle(client)
            assert [await count(client, handle) for _ in range(2)] == [1, 2]
            assert await count(client) == 1  # the protocol session's own count
            assert shelf.records[handle].state == {"counter": 2}


def _lingering_server() -> Server[Any]:
    """``counter`` as the demo's; ``linger`` starts a session task that, once cancelled (the
    session ending), holds the end for 2 s: the session stays in the registry, passivating."""

    async def linger() -> None:
        try:
            await trio.sleep_forever()
        finally:
            with trio.CancelScope(shield=True):
                await trio.sleep(2)

    async def body(name: str, arguments: dict[str, Any]) -> types.CallToolResult:
        session = current_session()
        if name == "linger":
            session.context.start_soon(linger)
            return types.CallToolResult(content=[types.TextContent(text="ok")])
        count = session.state["counter"] = session.state.get("counter", 0) + 1
        if name == "slow":
            await trio.sleep(1)
        return types.CallToolResult(
            content=[types.TextContent(text=str(count))], structured_content={"count": count}
        )

    async def call_tool(
        ctx: ServerRequestContext[Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        answer = await call_session_tool(params.name, params.arguments)
        if answer is not None:
            return answer
        return await call_with_session(
            params.arguments, lambda arguments: body(params.name, arguments)
        )

    async def list_tools(
        ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        schema = {"type": "object", "properties": {"session": {"type": "string"}}}
        return types.ListToolsResult(
            tools=[
                types.Tool(name=name, input_schema=schema)
                for name in ("counter", "slow", "linger", "open_session", "close_session")
            ]
        )

    return Server("lingering", on_call_tool=call_tool, on_list_tools=list_tools)


async def test_an_http_request_while_the_session_passivates_waits_for_it_then_reactivates(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_supervisor(store=MemoryStore(), idle_timeout=10) as sup:
        async with raw(McpHttpApp(sup, _lingering_server())) as http:
            session_id = await initialize(http)
            assert await count_over_http(http, session_id) == 1
            assert result(await call(http, session_id, "linger"))["content"][0]["text"] == "ok"
            await trio.sleep(10.5)
            passivating = sup.get_session(session_id)
            assert passivating.close_reason == "idle-timeout"  # ending, still here
            assert await count_over_http(http, session_id) == 2
            again = sup.get_session(session_id)
            assert again is not passivating and again.epoch == 2


async def test_a_handle_call_while_the_handle_passivates_waits_for_it_then_reactivates(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_supervisor(store=MemoryStore(), idle_timeout=10) as sup:
        async with official(McpHttpApp(sup, _lingering_server()), "auto") as client:
            handle = await open_handle(client)
            assert await count(client, handle) == 1
            lingered = await client.call_tool("linger", {"session": handle})
            assert not lingered.is_error, lingered
            await trio.sleep(10.5)
            assert sup.get_session(handle).close_reason == "idle-timeout"
            assert await count(client, handle) == 2
            assert sup.get_session(handle).epoch == 2


async def test_a_request_in_flight_at_shutdown_is_saved_before_the_passivation(
    autojump_clock: trio.testing.MockClock,
) -> None:
    shelf = Shelf()
    answers: list[Any] = []
    async with open_supervisor(store=MemoryStore(shelf), shutdown_grace=5) as sup:
        async with raw(McpHttpApp(sup, _lingering_server())) as http:
            session_id = await initialize(http)
            assert await count_over_http(http, session_id) == 1

            async def slow() -> None:
                answers.append(result(await call(http, session_id, "slow")))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(slow)
                await trio.sleep(0.5)  # the tool has counted and is still running
                await sup.shutdown()
    assert [answer["structuredContent"] for answer in answers] == [{"count": 2}]
    assert shelf.records[session_id].state == {"counter": 2}
    assert shelf.records[session_id].owner is None  # passivated
    async with open_supervisor(store=MemoryStore(shelf)) as sup:
        async with raw(McpHttpApp(sup, _lingering_server())) as http:
            assert await count_over_http(http, session_id) == 3


# -- principals ----------------------------------------------------------------------------------


async def test_another_principal_gets_404_for_a_reactivated_session(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_supervisor(store=MemoryStore(), idle_timeout=10) as sup:
        app = McpHttpApp(sup, create_demo_server(), token_verifier=verify)
        async with raw(app) as http:
            session_id = await initialize(http, ALICE)
            assert await count_over_http(http, session_id, ALICE) == 1
            await trio.sleep(11)
            assert session_id not in sup
            assert (await call(http, session_id, headers=BOB)).status_code == 404
            assert (await call(http, session_id)).status_code == 401
            assert await count_over_http(http, session_id, ALICE) == 2
            assert (await call(http, session_id, headers=BOB)).status_code == 404
            assert sup.get_session(session_id).principal == "alice"


async def test_another_principal_gets_session_not_found_for_a_reactivated_handle(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_supervisor(store=MemoryStore(), idle_timeout=10) as sup:
        app = McpHttpApp(sup, create_demo_server(), token_verifier=verify)
        async with official(app, "auto", ALICE) as alice, official(app, "auto", BOB) as bob:
            handle = await open_handle(alice)
            assert await count(alice, handle) == 1
            await trio.sleep(11)
            assert handle not in sup
            assert (await tool_error(bob, handle))["error"] == "session-not-found"
            assert await count(alice, handle) == 2


# -- saves that fail -----------------------------------------------------------------------------


async def test_a_failed_save_turns_the_http_response_into_an_error(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    shelf = Shelf()
    store = MemoryStore(shelf)
    async with open_supervisor(store=store) as sup:
        app = McpHttpApp(sup, create_demo_server())
        async with raw(app) as http:
            session_id = await initialize(http)
            assert await count_over_http(http, session_id) == 1
            store.fail = StoreError("disk full")
            with caplog.at_level(logging.WARNING, logger="supervisor.mcp"):
                error = rpc_error(await call(http, session_id))
            assert error["data"] == {"reason": "store-error"}
            assert "not saved" in error["message"]
            assert shelf.records[session_id].state == {"counter": 1}  # not acknowledged
            # While the change is not saved, no response can follow it.
            assert rpc_error(await call(http, session_id, "echo", {"text": "hi"}))["data"] == {
                "reason": "store-error"
            }
            store.fail = None
            # The change stays in memory; the next confirmed save includes it.
            assert await count_over_http(http, session_id) == 3
            assert shelf.records[session_id].state == {"counter": 3}
            assert sup.get_session(session_id).state is SessionState.READY


async def test_a_failed_save_turns_the_handle_call_into_a_tool_error(
    autojump_clock: trio.testing.MockClock,
) -> None:
    shelf = Shelf()
    store = MemoryStore(shelf)
    async with open_supervisor(store=store) as sup:
        async with official(McpHttpApp(sup, create_demo_server()), "auto") as client:
            handle = await open_handle(client)
            assert await count(client, handle) == 1
            store.fail = StoreError("disk full")
            assert (await tool_error(client, handle))["error"] == "state-not-saved"
            assert shelf.records[handle].state == {"counter": 1}
            store.fail = None
            assert await count(client, handle) == 3


async def test_a_session_activated_on_another_node_answers_moved_on_the_stale_one(
    autojump_clock: trio.testing.MockClock,
) -> None:
    shelf = Shelf()
    store_a, store_b = MemoryStore(shelf), MemoryStore(shelf)
    async with (
        open_supervisor(store=store_a) as a,
        open_supervisor(store=store_b) as b,
        raw(McpHttpApp(a, create_demo_server())) as on_a,
        raw(McpHttpApp(b, create_demo_server())) as on_b,
    ):
        session_id = await initialize(on_a)
        assert await count_over_http(on_a, session_id) == 1
        busy = await call(on_b, session_id)  # A is alive and holds it
        assert busy.status_code == 503 and busy.headers["retry-after"] == "1"
        shelf.kill(store_a.node)  # A is declared dead, yet it still serves
        assert await count_over_http(on_b, session_id) == 2
        error = rpc_error(await call(on_a, session_id))
        assert error["data"] == {"reason": "superseded"}
        assert "moved" in error["message"]
        await trio.sleep(1)
        assert session_id not in a  # ended on the stale node ...
        assert shelf.records[session_id].state == {"counter": 2}  # ... its write refused
        assert await count_over_http(on_b, session_id) == 3


async def test_a_handle_activated_on_another_node_answers_moved_on_the_stale_one(
    autojump_clock: trio.testing.MockClock,
) -> None:
    shelf = Shelf()
    store_a, store_b = MemoryStore(shelf), MemoryStore(shelf)
    async with (
        open_supervisor(store=store_a) as a,
        open_supervisor(store=store_b) as b,
        official(McpHttpApp(a, create_demo_server()), "auto") as on_a,
        official(McpHttpApp(b, create_demo_server()), "auto") as on_b,
    ):
        handle = await open_handle(on_a)
        assert await count(on_a, handle) == 1
        assert (await tool_error(on_b, handle))["error"] == "capacity"  # A holds it
        shelf.kill(store_a.node)
        assert await count(on_b, handle) == 2
        assert (await tool_error(on_a, handle))["error"] == "session-moved"
        assert shelf.records[handle].state == {"counter": 2}


# -- state that cannot be saved ------------------------------------------------------------------


def _odd_server() -> Server[Any]:
    """``keep`` stores a set (not JSON) in the session state; ``count`` counts."""

    async def call_tool(
        ctx: ServerRequestContext[Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        answer = await call_session_tool(params.name, params.arguments)
        if answer is not None:
            return answer

        async def body(arguments: dict[str, Any]) -> types.CallToolResult:
            state = current_session().state
            if params.name == "keep":
                state["odd"] = {1, 2}
            elif params.name == "forget":
                state.pop("odd", None)
            state["n"] = state.get("n", 0) + 1
            return types.CallToolResult(content=[types.TextContent(text=str(state["n"]))])

        return await call_with_session(params.arguments, body)

    async def list_tools(
        ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        schema = {"type": "object", "properties": {}}
        return types.ListToolsResult(
            tools=[types.Tool(name=n, input_schema=schema) for n in ("keep", "forget", "count")]
        )

    return Server("odd", on_call_tool=call_tool, on_list_tools=list_tools)


async def test_a_state_that_is_not_json_is_served_without_durability(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    shelf = Shelf()
    async with open_supervisor(store=MemoryStore(shelf)) as sup:
        app = McpHttpApp(sup, _odd_server())
        async with raw(app) as http:
            session_id = await initialize(http)
            texts = []
            with caplog.at_level(logging.WARNING, logger="supervisor.mcp"):
                for name in ("count", "keep", "count", "keep", "forget"):
                    texts.append(result(await call(http, session_id, name))["content"][0]["text"])
            assert texts == ["1", "2", "3", "4", "5"]
            warned = [r for r in caplog.records if "not JSON-serializable" in r.getMessage()]
            assert len(warned) == 1  # once per session
            # Saved again once it could be.
            assert shelf.records[session_id].state == {"n": 5}


# -- the actor restarts --------------------------------------------------------------------------


async def test_a_crashed_http_session_actor_restarts_and_keeps_serving(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The actor crashes when its server factory raises (the one way to make it raise from
    outside: the SDK turns a handler's exception into an error response)."""
    shelf = Shelf()
    crash = [False]

    def factory() -> Server[Any]:
        if crash[0]:
            crash[0] = False
            raise RuntimeError("the server could not start")
        return create_demo_server()

    async with (
        open_supervisor(store=MemoryStore(shelf), idle_timeout=10, max_restarts=3) as sup,
        sup.subscribe() as events,
    ):
        app = McpHttpApp(sup, factory)
        async with raw(app) as http:
            session_id = await initialize(http)
            assert await count_over_http(http, session_id) == 1
            # Passivate it, and make the next activation's first start crash.
            await _passivate(sup, session_id)
            crash[0] = True
            # The request in flight at the crash gets an error ...
            lost = await call(http, session_id)
            assert "failed while serving" in rpc_error(lost)["message"]
            # ... the restarted actor serves the next one, from the saved state.
            await trio.sleep(0.1)
            session = sup.get_session(session_id)
            assert session.restarts == 1
            assert await count_over_http(http, session_id) == 2
            kinds = [e.kind for e in events_only(drain(events)) if e.session_id == session_id]
            assert EventKind.RESTARTED in kinds
            assert sup.get_session(session_id) is session
            assert await count_over_http(http, session_id) == 3


async def _passivate(sup: Supervisor, session_id: str) -> None:
    """Passivate a session now, as its idle timeout would."""
    deadline = sup.config.idle_timeout
    assert deadline is not None
    await trio.sleep(deadline + 1)
    with pytest.raises(SessionNotFound):
        sup.get_session(session_id)


async def test_at_capacity_a_new_http_session_passivates_the_least_recently_used(
    autojump_clock: trio.testing.MockClock,
) -> None:
    shelf = Shelf()
    async with (
        open_supervisor(
            store=MemoryStore(shelf), max_sessions=2, passivate_at_capacity=True
        ) as sup,
        sup.subscribe(kinds=[EventKind.PASSIVATED]) as events,
    ):
        app = McpHttpApp(sup, create_demo_server())
        async with raw(app) as http:
            first = await initialize(http)
            await trio.sleep(1)
            second = await initialize(http)
            await trio.sleep(1)
            assert await count_over_http(http, first) == 1  # first is now the most recent
            await trio.sleep(1)
            third = await initialize(http)  # full: second is passivated to make room
            assert [(e.session_id, e.reason) for e in events_only(drain(events))] == [
                (second, "capacity")
            ]
            assert sorted(http_sessions(sup)) == sorted([first, third])
            assert sup.statistics().rejected_total == 0
            # Its next request activates it again, passivating the least recently used.
            assert await count_over_http(http, second) == 1
            assert [(e.session_id, e.reason) for e in events_only(drain(events))] == [
                (first, "capacity")
            ]
            assert await count_over_http(http, first) == 2


async def test_a_handle_whose_retention_ran_out_answers_session_expired(
    autojump_clock: trio.testing.MockClock,
) -> None:
    shelf = Shelf()
    async with open_supervisor(store=MemoryStore(shelf), idle_timeout=10, retention=60) as sup:
        async with official(McpHttpApp(sup, create_demo_server()), "auto") as client:
            handle = await open_handle(client)
            assert await count(client, handle) == 1
            await trio.sleep(11)  # passivated
            assert handle in shelf.records
            await trio.sleep(61)  # and its retention has run out
            assert handle not in shelf.records
            error = await tool_error(client, handle)
            assert error["error"] == "session-expired", error
