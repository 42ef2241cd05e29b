"""An unsupported ``MCP-Protocol-Version`` header: the refusal a client can act on.

The JSON-RPC error (-32022, HTTP 400) must carry the request's id, as every error of the
2026-07-28 era does, and list the versions the server supports consistently with what
``server/discover`` advertises, so a client that probes the newest era (the official Go
client does) picks a version discovery confirms instead of falling back to the handshake era.
In memory: httpx's ASGI transport over `McpHttpApp`, trio's MockClock for the body deadline.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import httpx
import mcp_types as types
import trio
import trio.testing

from supervisor import Supervisor, open_supervisor
from supervisor.mcp import McpHttpApp, create_demo_server

BASE = "http://127.0.0.1:8000"
ACCEPT = {"accept": "application/json, text/event-stream", "content-type": "application/json"}
MODERN = "2026-07-28"
UNSUPPORTED = "v999.0.0"


def envelope(version: str) -> dict[str, Any]:
    return {
        "io.modelcontextprotocol/protocolVersion": version,
        "io.modelcontextprotocol/clientInfo": {"name": "raw-http", "version": "1.0"},
        "io.modelcontextprotocol/clientCapabilities": {},
    }


@asynccontextmanager
async def serving(**app_options: Any) -> AsyncIterator[tuple[Supervisor, httpx.AsyncClient]]:
    async with open_supervisor(max_sessions=4) as sup:
        app = McpHttpApp(sup, create_demo_server(), **app_options)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=BASE) as client:
            yield sup, client


async def discovered_versions(client: httpx.AsyncClient) -> list[str]:
    response = await client.post(
        "/mcp",
        json={
            "jsonrpc": "2.0",
            "id": 1,
            "method": "server/discover",
            "params": {"_meta": envelope(MODERN)},
        },
        headers={**ACCEPT, "mcp-protocol-version": MODERN, "mcp-method": "server/discover"},
    )
    assert response.status_code == 200, response.text
    versions = response.json()["result"]["supportedVersions"]
    assert isinstance(versions, list)
    return versions


async def post_unsupported(
    client: httpx.AsyncClient, body: Mapping[str, Any] | bytes, **headers: str
) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return await client.post(
        "/mcp",
        content=content,
        headers={**ACCEPT, "mcp-protocol-version": UNSUPPORTED, **headers},
    )


def assert_version_error(
    response: httpx.Response, *, request_id: Any, supported: list[str]
) -> None:
    assert response.status_code == 400, response.text
    payload = response.json()
    assert payload["jsonrpc"] == "2.0"
    assert "id" in payload and payload["id"] == request_id, payload
    error = payload["error"]
    assert error["code"] == types.UNSUPPORTED_PROTOCOL_VERSION
    assert error["data"]["supported"] == supported
    assert error["data"]["requested"] == UNSUPPORTED


async def test_unsupported_version_error_echoes_the_request_id() -> None:
    async with serving() as (_sup, client):
        supported = await discovered_versions(client)
        body = {
            "jsonrpc": "2.0",
            "id": 301,
            "method": "server/discover",
            "params": {"_meta": envelope(UNSUPPORTED)},
        }
        response = await post_unsupported(client, body, **{"mcp-method": "server/discover"})
        assert_version_error(response, request_id=301, supported=supported)


async def test_unsupported_version_lists_what_discovery_advertises() -> None:
    """The error's ``supported`` is discovery's list (one version), not every version known."""
    async with serving() as (_sup, client):
        supported = await discovered_versions(client)
        assert supported == [MODERN]
        body = {"jsonrpc": "2.0", "id": 7, "method": "tools/list"}
        response = await post_unsupported(client, body)
        assert_version_error(response, request_id=7, supported=supported)
        # every version discovery lists is accepted on the modern path
        for version in response.json()["error"]["data"]["supported"]:
            again = await client.post(
                "/mcp",
                json={
                    "jsonrpc": "2.0",
                    "id": 8,
                    "method": "tools/list",
                    "params": {"_meta": envelope(version)},
                },
                headers={**ACCEPT, "mcp-protocol-version": version, "mcp-method": "tools/list"},
            )
            assert again.status_code == 200, again.text
            assert again.json()["id"] == 8
            assert "tools" in again.json()["result"]


async def test_unsupported_version_echoes_a_string_id_of_a_handshake_era_request() -> None:
    async with serving() as (sup, client):
        body = {
            "jsonrpc": "2.0",
            "id": "req-abc",
            "method": "initialize",
            "params": {
                "protocolVersion": "2025-11-25",
                "capabilities": {},
                "clientInfo": {"name": "raw-http", "version": "1.0"},
            },
        }
        response = await post_unsupported(client, body)
        assert_version_error(response, request_id="req-abc", supported=[MODERN])
        assert len(sup) == 0  # refused before any session is opened


async def test_unsupported_version_without_a_usable_id_answers_id_null() -> None:
    async with serving() as (_sup, client):
        for body in (
            b"{not json",
            b"[1, 2]",
            json.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"}).encode(),
            json.dumps({"jsonrpc": "2.0", "id": {"nested": 1}, "method": "ping"}).encode(),
            json.dumps({"jsonrpc": "2.0", "id": True, "method": "ping"}).encode(),
        ):
            response = await post_unsupported(client, body)
            assert_version_error(response, request_id=None, supported=[MODERN])


async def test_unsupported_version_on_get_and_delete_lists_the_same_versions() -> None:
    async with serving() as (_sup, client):
        for method in ("GET", "DELETE"):
            response = await client.request(
                method, "/mcp", headers={**ACCEPT, "mcp-protocol-version": UNSUPPORTED}
            )
            assert_version_error(response, request_id=None, supported=[MODERN])


async def test_unsupported_version_body_is_still_bounded_in_size() -> None:
    async with serving(max_body_size=1024) as (_sup, client):
        body = {"jsonrpc": "2.0", "id": 1, "method": "ping", "params": {"pad": "x" * 4096}}
        response = await post_unsupported(client, body)
        assert response.status_code == 413

        async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted while read
            for _ in range(3):
                yield b" " * 600

        response = await client.post(
            "/mcp", content=chunks(), headers={**ACCEPT, "mcp-protocol-version": UNSUPPORTED}
        )
        assert response.status_code == 413


async def test_unsupported_version_body_is_still_bounded_in_time(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with serving(body_timeout=5.0) as (_sup, client):

        async def slow() -> AsyncIterator[bytes]:
            yield b'{"jsonrpc": "2.0", '
            await trio.sleep(60)
            yield b'"id": 1, "method": "ping"}'

        start = trio.current_time()
        response = await client.post(
            "/mcp", content=slow(), headers={**ACCEPT, "mcp-protocol-version": UNSUPPORTED}
        )
        assert response.status_code == 408
        assert trio.current_time() - start < 60
