"""The Streamable HTTP front end (`McpHttpApp`), driven in memory with httpx's ASGI transport.

No sockets here, so trio's MockClock (``autojump_clock``) can run idle and init deadlines
instantly. Interop with the official client over real sockets is in ``test_mcp_interop.py``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import httpx
import mcp_types as types
import pytest
import trio
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel.server import Server

from supervisor import (
    Event,
    EventKind,
    Lagged,
    SessionNotFound,
    SessionState,
    Subscription,
    Supervisor,
    Transport,
    open_supervisor,
)
from supervisor.mcp import McpHttpApp, create_demo_server

BASE = "http://127.0.0.1:8000"
ACCEPT = {"accept": "application/json, text/event-stream", "content-type": "application/json"}
VERSION = "2025-11-25"
INIT: dict[str, Any] = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": VERSION,
        "capabilities": {"roots": {"listChanged": True}},
        "clientInfo": {"name": "raw-http", "version": "1.0"},
    },
}


@asynccontextmanager
async def serving(
    server: Any = None, app_options: Mapping[str, Any] | None = None, **config: Any
) -> AsyncIterator[tuple[Supervisor, httpx.AsyncClient]]:
    config.setdefault("max_sessions", 4)
    async with open_supervisor(**config) as sup:
        app = McpHttpApp(sup, server or create_demo_server(), **(app_options or {}))
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=BASE) as client:
            yield sup, client


def session_headers(session_id: str, **extra: str) -> dict[str, str]:
    return {**ACCEPT, "mcp-session-id": session_id, "mcp-protocol-version": VERSION, **extra}


def messages(response: httpx.Response) -> list[dict[str, Any]]:
    """The JSON-RPC messages of a response, SSE or JSON."""
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        return [
            json.loads(line[len("data:") :])
            for line in response.text.splitlines()
            if line.startswith("data:") and line[len("data:") :].strip()
        ]
    return [response.json()]


def result(response: httpx.Response) -> Any:
    assert response.status_code == 200, response.text
    [message] = [m for m in messages(response) if "result" in m or "error" in m]
    assert "result" in message, message
    return message["result"]


async def initialize(client: httpx.AsyncClient, **headers: str) -> str:
    response = await client.post("/mcp", json=INIT, headers={**ACCEPT, **headers})
    assert result(response)["protocolVersion"] == VERSION
    session_id = response.headers["mcp-session-id"]
    notified = await client.post(
        "/mcp",
        json={"jsonrpc": "2.0", "method": "notifications/initialized"},
        headers=session_headers(session_id, **headers),
    )
    assert notified.status_code == 202
    return session_id


async def call_tool(
    client: httpx.AsyncClient,
    session_id: str,
    name: str,
    arguments: dict[str, Any],
    *,
    request_id: int = 7,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    return await client.post(
        "/mcp",
        json={
            "jsonrpc": "2.0",
            "id": request_id,
            "method": "tools/call",
            "params": {"name": name, "arguments": arguments},
        },
        headers=session_headers(session_id, **(headers or {})),
    )


async def next_event(events: Subscription, kind: EventKind, session_id: str) -> Event:
    async for item in events:
        if isinstance(item, Lagged):  # pragma: no cover - buffers are large enough here
            continue
        if item.kind is kind and item.session_id == session_id:
            return item
    raise AssertionError("subscription ended")  # pragma: no cover


# -- sessions -----------------------------------------------------------------------------------


async def test_initialize_creates_ready_session_with_client_info() -> None:
    async with serving() as (sup, client):
        session_id = await initialize(client)
        session = sup.get_session(session_id)
        assert session.transport is Transport.HTTP
        assert session.state is SessionState.READY
        assert session.is_initialized
        assert session.protocol_version == VERSION
        assert session.client_info == {"name": "raw-http", "version": "1.0"}
        assert session.capabilities == {"roots": {"listChanged": True}}


async def test_tools_and_counter_per_session() -> None:
    async with serving() as (_sup, client):
        first = await initialize(client)
        listed = await client.post(
            "/mcp",
            json={"jsonrpc": "2.0", "id": 2, "method": "tools/list"},
            headers=session_headers(first),
        )
        assert {tool["name"] for tool in result(listed)["tools"]} == {
            "echo",
            "counter",
            "open_session",
            "close_session",
        }
        echoed = result(await call_tool(client, first, "echo", {"text": "hello"}))
        assert echoed["content"][0]["text"] == "hello"
        counts = [
            result(await call_tool(client, first, "counter", {}))["structuredContent"]["count"]
            for _ in range(3)
        ]
        assert counts == [1, 2, 3]
        second = await initialize(client)
        again = result(await call_tool(client, second, "counter", {}))
        assert again["structuredContent"] == {"count": 1}


async def test_json_response_mode() -> None:
    async with serving(app_options={"json_response": True}) as (_sup, client):
        session_id = await initialize(client)
        response = await call_tool(client, session_id, "counter", {})
        assert response.headers["content-type"].startswith("application/json")
        assert result(response)["structuredContent"] == {"count": 1}


async def test_events_of_an_http_session() -> None:
    async with serving() as (sup, client), sup.subscribe() as events:
        session_id = await initialize(client)
        response = await client.delete("/mcp", headers=session_headers(session_id))
        assert response.status_code == 200
        seen: list[tuple[EventKind, Any]] = []
        async for item in events:
            assert isinstance(item, Event)
            seen.append((item.kind, item.new_state))
            if item.kind is EventKind.CLOSED:
                assert item.reason == "client-delete"
                break
        assert seen == [
            (EventKind.CREATED, None),
            (EventKind.STATE_CHANGED, SessionState.INITIALIZING),
            (EventKind.STATE_CHANGED, SessionState.READY),
            (EventKind.INITIALIZED, None),
            (EventKind.STATE_CHANGED, SessionState.CLOSING),
            (EventKind.STATE_CHANGED, SessionState.CLOSED),
            (EventKind.CLOSED, None),
        ]


# -- status rules -------------------------------------------------------------------------------


async def test_missing_session_id_is_400() -> None:
    async with serving() as (sup, client):
        response = await client.post(
            "/mcp", json={"jsonrpc": "2.0", "id": 2, "method": "tools/list"}, headers=ACCEPT
        )
        assert response.status_code == 400
        assert response.json()["error"]["code"] == types.INVALID_REQUEST
        get = await client.get("/mcp", headers={"accept": "text/event-stream"})
        assert get.status_code == 400
        delete = await client.delete("/mcp")
        assert delete.status_code == 400
        assert len(sup) == 0


async def test_unknown_session_id_is_404() -> None:
    async with serving() as (_sup, client):
        for method in ("POST", "GET", "DELETE"):
            response = await client.request(
                method,
                "/mcp",
                json={"jsonrpc": "2.0", "id": 2, "method": "tools/list"},
                headers=session_headers("no-such-session"),
            )
            assert response.status_code == 404, method


async def test_delete_ends_the_session_then_404() -> None:
    async with serving() as (sup, client), sup.subscribe() as events:
        session_id = await initialize(client)
        assert (await client.delete("/mcp", headers=session_headers(session_id))).status_code == 200
        # Refused at once, before the actor has even finished.
        response = await call_tool(client, session_id, "counter", {})
        assert response.status_code == 404
        await next_event(events, EventKind.CLOSED, session_id)
        with pytest.raises(SessionNotFound):
            sup.get_session(session_id)
        assert (await call_tool(client, session_id, "counter", {})).status_code == 404
        assert (await client.delete("/mcp", headers=session_headers(session_id))).status_code == 404


@pytest.mark.parametrize(
    "headers",
    [
        {"origin": "http://evil.example"},
        {"origin": "http://127.0.0.1.evil.example:8000"},
        {"host": "evil.example"},
        {"host": "evil.example:8000"},
    ],
)
async def test_disallowed_origin_or_host_is_403(headers: dict[str, str]) -> None:
    async with serving() as (sup, client):
        response = await client.post("/mcp", json=INIT, headers={**ACCEPT, **headers})
        assert response.status_code == 403
        assert len(sup) == 0


async def test_loopback_origins_are_allowed_by_default() -> None:
    async with serving() as (_sup, client):
        for origin in ("http://localhost:3000", "http://127.0.0.1:8000", "http://[::1]:9"):
            await initialize(client, origin=origin)


async def test_configured_hosts_and_origins() -> None:
    options = {"allowed_hosts": ["mcp.example:*"], "allowed_origins": ["https://app.example"]}
    async with serving(app_options=options) as (_sup, client):
        assert (await client.post("/mcp", json=INIT, headers=ACCEPT)).status_code == 403
        host = {"host": "mcp.example:443"}
        await initialize(client, **host, origin="https://app.example")
        bad = await client.post("/mcp", json=INIT, headers={**ACCEPT, **host, "origin": "http://x"})
        assert bad.status_code == 403


async def test_unsupported_protocol_version_is_400() -> None:
    async with serving() as (_sup, client):
        session_id = await initialize(client)
        for method in ("POST", "GET", "DELETE"):
            response = await client.request(
                method,
                "/mcp",
                json={"jsonrpc": "2.0", "id": 2, "method": "tools/list"},
                headers=session_headers(session_id, **{"mcp-protocol-version": "1999-01-01"}),
            )
            assert response.status_code == 400, method
            assert response.json()["error"]["code"] == types.UNSUPPORTED_PROTOCOL_VERSION


async def test_oversized_body_is_413() -> None:
    async with serving(app_options={"max_body_size": 1024}) as (sup, client):
        big = dict(INIT, params={**INIT["params"], "padding": "x" * 2000})
        response = await client.post("/mcp", json=big, headers=ACCEPT)
        assert response.status_code == 413
        assert len(sup) == 0

        async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted while read
            for _ in range(3):
                yield b" " * 512

        streamed = await client.post("/mcp", content=chunks(), headers=ACCEPT)
        assert streamed.status_code == 413


async def test_malformed_json_is_a_parse_error() -> None:
    async with serving() as (sup, client):
        response = await client.post("/mcp", content=b'{"jsonrpc": "2.0", "id": 1,', headers=ACCEPT)
        assert response.status_code == 400
        body = response.json()
        assert body["id"] is None
        assert body["error"]["code"] == types.PARSE_ERROR
        assert len(sup) == 0
        session_id = await initialize(client)
        in_session = await client.post(
            "/mcp", content=b"{nope", headers=session_headers(session_id)
        )
        assert in_session.status_code == 400
        assert in_session.json()["error"]["code"] == types.PARSE_ERROR


async def test_other_methods_are_405() -> None:
    async with serving() as (_sup, client):
        response = await client.put("/mcp", json=INIT, headers=ACCEPT)
        assert response.status_code == 405
        assert "POST" in response.headers["allow"]


async def test_other_paths_are_404() -> None:
    async with serving() as (sup, client):
        response = await client.post("/elsewhere", json=INIT, headers=ACCEPT)
        assert response.status_code == 404
        assert len(sup) == 0


async def test_capacity_503_then_success_after_delete() -> None:
    async with serving(max_sessions=1) as (sup, client), sup.subscribe() as events:
        first = await initialize(client)
        refused = await client.post("/mcp", json=INIT, headers=ACCEPT)
        assert refused.status_code == 503
        assert refused.headers["retry-after"] == "1"
        assert sup.statistics().rejected_total == 1
        await client.delete("/mcp", headers=session_headers(first))
        await next_event(events, EventKind.CLOSED, first)
        second = await initialize(client)
        assert second != first
        assert sup.get_session(second).state is SessionState.READY


async def test_refused_initialize_leaves_no_session() -> None:
    async with serving() as (sup, client), sup.subscribe() as events:
        bad = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"nonsense": True}}
        response = await client.post("/mcp", json=bad, headers=ACCEPT)
        [message] = messages(response)
        assert "error" in message
        session_id = response.headers["mcp-session-id"]
        closed = await next_event(events, EventKind.CLOSED, session_id)
        assert closed.reason == "init-failed"
        assert (await call_tool(client, session_id, "echo", {"text": "x"})).status_code == 404


async def test_stateless_2026_requests_use_no_session() -> None:
    async with serving() as (sup, client):
        meta = {
            "io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientCapabilities": {},
        }
        response = await client.post(
            "/mcp",
            json={
                "jsonrpc": "2.0",
                "id": 5,
                "method": "tools/call",
                "params": {"name": "counter", "arguments": {}, "_meta": meta},
            },
            headers={
                **ACCEPT,
                "mcp-protocol-version": "2026-07-28",
                "mcp-method": "tools/call",
                "mcp-name": "counter",
            },
        )
        assert "mcp-session-id" not in response.headers
        assert result(response)["structuredContent"] == {"count": 1}
        assert len(sup) == 0
        assert sup.statistics().created_total == 0


# -- deadlines ----------------------------------------------------------------------------------


async def test_idle_session_expires_then_404(autojump_clock: trio.testing.MockClock) -> None:
    async with serving(idle_timeout=30.0) as (sup, client), sup.subscribe() as events:
        session_id = await initialize(client)
        await trio.sleep(20)
        assert result(await call_tool(client, session_id, "counter", {}))  # activity
        await trio.sleep(20)  # 40 s after creation, 20 s after the last request
        assert sup.has_session(session_id)
        expired = await next_event(events, EventKind.EXPIRED, session_id)
        assert expired.reason == "idle-timeout"
        assert (await call_tool(client, session_id, "counter", {})).status_code == 404


def slow_server() -> Server[Any]:
    async def list_tools(
        ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        return types.ListToolsResult(
            tools=[types.Tool(name="slow", input_schema={"type": "object"})]
        )

    async def call_tool(
        ctx: ServerRequestContext[Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        await trio.sleep(100)
        return types.CallToolResult(content=[types.TextContent(text="done")])

    return Server("slow", on_list_tools=list_tools, on_call_tool=call_tool)


async def test_request_in_flight_pauses_idle_timer(autojump_clock: trio.testing.MockClock) -> None:
    async with serving(slow_server(), idle_timeout=30.0) as (sup, client):
        session_id = await initialize(client)
        start = trio.current_time()
        answer = result(await call_tool(client, session_id, "slow", {}))
        assert trio.current_time() - start >= 100
        assert answer["content"][0]["text"] == "done"
        assert sup.get_session(session_id).state is SessionState.READY


# -- authentication -----------------------------------------------------------------------------

TOKENS = {"token-alice": "alice", "token-bob": "bob"}


async def verify(token: str) -> str | None:
    return TOKENS.get(token)


async def test_missing_or_bad_token_is_401() -> None:
    async with serving(app_options={"token_verifier": verify}) as (sup, client):
        for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": "Basic abc"}):
            response = await client.post("/mcp", json=INIT, headers={**ACCEPT, **headers})
            assert response.status_code == 401
            assert response.headers["www-authenticate"].startswith("Bearer")
        assert len(sup) == 0


async def test_session_is_bound_to_its_principal() -> None:
    alice = {"authorization": "Bearer token-alice"}
    bob = {"authorization": "Bearer token-bob"}
    async with (
        serving(app_options={"token_verifier": verify}) as (sup, client),
        sup.subscribe() as events,
    ):
        session_id = await initialize(client, **alice)
        session = sup.get_session(session_id)
        assert session.principal == "alice"
        assert session.is_authenticated
        authenticated = await next_event(events, EventKind.AUTHENTICATED, session_id)
        assert authenticated.session.principal == "alice"
        # Another principal with the same id: as if the session did not exist.
        assert (await call_tool(client, session_id, "counter", {}, headers=bob)).status_code == 404
        assert (
            await client.delete("/mcp", headers=session_headers(session_id, **bob))
        ).status_code == 404
        owner = await call_tool(client, session_id, "counter", {}, headers=alice)
        assert result(owner)["structuredContent"] == {"count": 1}


async def test_sdk_token_verifier_is_accepted() -> None:
    from mcp.server.auth.provider import AccessToken

    class Verifier:
        async def verify_token(self, token: str) -> AccessToken | None:
            if token != "good":
                return None
            return AccessToken(token=token, client_id="client-1", scopes=[])

    async with serving(app_options={"token_verifier": Verifier()}) as (sup, client):
        assert (await client.post("/mcp", json=INIT, headers=ACCEPT)).status_code == 401
        session_id = await initialize(client, authorization="Bearer good")
        assert sup.get_session(session_id).principal == "client-1"


async def test_request_in_flight_when_its_session_closes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    options = {"json_response": True}
    async with serving(slow_server(), app_options=options) as (sup, client):
        session_id = await initialize(client)
        answers: list[dict[str, Any]] = []

        async def slow_call() -> None:
            response = await call_tool(client, session_id, "slow", {})
            assert response.status_code == 200
            answers.extend(messages(response))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(slow_call)
            await trio.sleep(10)
            assert sup.get_session(session_id).in_flight == 1
            sup.close_session(session_id, reason="operator")
        # The SDK answers the interrupted request with a JSON-RPC error for its id.
        [answer] = answers
        assert answer["id"] == 7
        assert "error" in answer
        assert (await call_tool(client, session_id, "counter", {})).status_code == 404


async def test_shutdown_closes_http_sessions_and_refuses_new_ones() -> None:
    async with serving() as (sup, client), sup.subscribe() as events:
        session_id = await initialize(client)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sup.shutdown)
            closed = await next_event(events, EventKind.CLOSED, session_id)
            assert closed.reason == "shutdown"
        refused = await client.post("/mcp", json=INIT, headers=ACCEPT)
        assert refused.status_code == 503
        assert (await call_tool(client, session_id, "counter", {})).status_code == 404


async def test_websocket_session_ids_are_not_http_sessions() -> None:
    async with serving() as (sup, client):

        async def other(ctx: Any) -> None:
            async for _ in ctx.mailbox:
                pass  # pragma: no cover

        session = sup.create_session_nowait(other, transport=Transport.WEBSOCKET)
        response = await call_tool(client, session.id, "counter", {})
        assert response.status_code == 404


# -- abuse: half-open handshakes, floods, slow bodies, bad headers ------------------------------


async def test_half_open_session_is_closed_by_init_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with (
        serving(max_sessions=1, init_timeout=5.0, idle_timeout=1800.0) as (sup, client),
        sup.subscribe() as events,
    ):
        opened = await client.post("/mcp", json=INIT, headers=ACCEPT)
        assert result(opened)["protocolVersion"] == VERSION
        half_open = opened.headers["mcp-session-id"]
        # Accepted by the server, but the client never sends notifications/initialized.
        assert sup.get_session(half_open).state is SessionState.INITIALIZING
        assert (await client.post("/mcp", json=INIT, headers=ACCEPT)).status_code == 503
        expired = await next_event(events, EventKind.EXPIRED, half_open)
        assert expired.reason == "init-timeout"
        assert trio.current_time() <= 5.0 + sup.config.deadline_slack
        await initialize(client)  # the slot is free again


async def test_flood_of_one_session_gets_429(autojump_clock: trio.testing.MockClock) -> None:
    options = {"max_requests_per_session": 4}
    async with serving(slow_server(), app_options=options) as (sup, client):
        victim = await initialize(client)
        bystander = await initialize(client)
        statuses: list[int] = []

        async def one(request_id: int) -> None:
            response = await call_tool(client, victim, "slow", {}, request_id=request_id)
            statuses.append(response.status_code)
            if response.status_code == 429:
                assert response.headers["retry-after"] == "1"
                assert response.json()["error"]["message"].startswith("Too Many Requests")

        async with trio.open_nursery() as nursery:
            for request_id in range(10):
                nursery.start_soon(one, 100 + request_id)
            await trio.sleep(1)
            echoed = await call_tool(client, bystander, "slow", {})
            assert echoed.status_code == 200  # the other session is unaffected
        assert sorted(statuses) == [200] * 4 + [429] * 6
        assert sup.get_session(victim).state is SessionState.READY


async def test_slow_body_is_cut_off(autojump_clock: trio.testing.MockClock) -> None:
    async with open_supervisor() as sup:
        app = McpHttpApp(sup, create_demo_server(), body_timeout=10.0)
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            await trio.sleep(1.0)  # one byte a second
            return {"type": "http.request", "body": b" ", "more_body": True}

        async def send(message: Any) -> None:
            sent.append(message)

        scope = {
            "type": "http",
            "method": "POST",
            "path": "/mcp",
            "headers": [
                (b"host", b"127.0.0.1:8000"),
                (b"content-type", b"application/json"),
                (b"accept", b"application/json, text/event-stream"),
            ],
        }
        start = trio.current_time()
        await app(scope, receive, send)
        assert trio.current_time() - start <= 10.0 + 1.0
        assert sent[0]["status"] == 408
        assert len(sup) == 0


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({"content-type": "text/plain"}, 415),
        ({"content-type": ""}, 415),
        ({"accept": "application/json"}, 406),
        ({"accept": "text/event-stream"}, 406),
    ],
)
async def test_bad_post_headers(headers: dict[str, str], status: int) -> None:
    async with serving() as (sup, client):
        response = await client.post(
            "/mcp", content=json.dumps(INIT).encode(), headers={**ACCEPT, **headers}
        )
        assert response.status_code == status
        assert "error" in response.json()
        assert len(sup) == 0


async def test_json_response_mode_needs_only_json_accept() -> None:
    async with serving(app_options={"json_response": True}) as (_sup, client):
        response = await client.post(
            "/mcp", json=INIT, headers={**ACCEPT, "accept": "application/json"}
        )
        assert result(response)["protocolVersion"] == VERSION


async def test_stateless_era_takes_post_only() -> None:
    async with serving() as (_sup, client):
        response = await client.get(
            "/mcp", headers={"accept": "text/event-stream", "mcp-protocol-version": "2026-07-28"}
        )
        assert response.status_code == 405
        assert response.headers["allow"] == "POST"
        assert "error" in response.json()


async def test_failing_token_verifier_is_a_500_not_a_crash() -> None:
    async def broken(token: str) -> str | None:
        raise RuntimeError("verifier down")

    async with serving(app_options={"token_verifier": broken}) as (sup, client):
        response = await client.post(
            "/mcp", json=INIT, headers={**ACCEPT, "authorization": "Bearer x"}
        )
        assert response.status_code == 500
        assert response.json()["error"]["code"] == types.INTERNAL_ERROR
        assert len(sup) == 0


# -- closing gracefully -------------------------------------------------------------------------


def sleep_server() -> Server[Any]:
    async def list_tools(
        ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        return types.ListToolsResult(
            tools=[types.Tool(name="sleep", input_schema={"type": "object"})]
        )

    async def call_tool(
        ctx: ServerRequestContext[Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        await trio.sleep(float((params.arguments or {})["seconds"]))
        return types.CallToolResult(content=[types.TextContent(text="slept")])

    return Server("sleeper", on_list_tools=list_tools, on_call_tool=call_tool)


async def test_close_lets_short_calls_finish_and_answers_long_ones(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with serving(sleep_server(), close_grace=2.0) as (sup, client):
        session_id = await initialize(client)
        answers: dict[str, list[dict[str, Any]]] = {}

        async def call(kind: str, seconds: float, request_id: int) -> None:
            response = await call_tool(
                client, session_id, "sleep", {"seconds": seconds}, request_id=request_id
            )
            assert response.status_code == 200
            answers[kind] = messages(response)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(call, "short", 1.0, 1)
            nursery.start_soon(call, "long", 100.0, 2)
            await trio.sleep(0.1)
            start = trio.current_time()
            sup.close_session(session_id, reason="operator")
        assert trio.current_time() - start <= 2.0
        [short] = answers["short"]
        assert short["result"]["content"][0]["text"] == "slept"
        [long] = [m for m in answers["long"] if "error" in m or "result" in m]
        assert long["id"] == 2
        assert "error" in long  # answered, not dropped


async def test_closing_a_session_ends_its_get_stream() -> None:
    async with serving() as (_sup, client):
        session_id = await initialize(client)
        statuses: list[int] = []

        async def listen() -> None:
            headers = session_headers(session_id, accept="text/event-stream")
            statuses.append((await client.get("/mcp", headers=headers)).status_code)

        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(listen)
                await trio.testing.wait_all_tasks_blocked()
                deleted = await client.delete("/mcp", headers=session_headers(session_id))
                assert deleted.status_code == 200
        assert statuses == [200]


async def test_non_ascii_content_length_is_not_a_500() -> None:
    async with open_supervisor() as sup:
        app = McpHttpApp(sup, create_demo_server())
        sent: list[dict[str, Any]] = []
        body = json.dumps(INIT).encode()
        delivered = False

        async def receive() -> dict[str, Any]:
            nonlocal delivered
            if delivered:  # pragma: no cover - the app reads the body once
                await trio.sleep_forever()
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: Any) -> None:
            sent.append(message)

        scope = {
            "type": "http",
            "method": "POST",
            "path": "/mcp",
            "headers": [
                (b"host", b"127.0.0.1:8000"),
                (b"content-type", b"application/json"),
                (b"accept", b"application/json, text/event-stream"),
                (b"content-length", "¹".encode("latin-1")),
            ],
        }
        with trio.fail_after(10):
            await app(scope, receive, send)
        assert sent[0]["status"] != 500
        sup.close_all()


async def test_port_patterns_accept_ascii_digits_only() -> None:
    async with serving() as (sup, client):
        for host in ("localhost:²".encode("latin-1"), b"localhost:80a", b"localhost:"):
            headers = [(k.encode(), v.encode()) for k, v in ACCEPT.items()] + [(b"host", host)]
            response = await client.post("/mcp", json=INIT, headers=headers)
            assert response.status_code == 403, host
        assert len(sup) == 0
