"""`McpHttpApp` over real sockets (hypercorn on a free 127.0.0.1 port): what a client sees on the
wire when a session ends under an open GET stream, and the official client with an open stream.

Real clocks here (sockets and MockClock do not mix); deadlines are short and every wait bounded.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import httpx
import pytest
import trio
from mcp import Client
from mcp.shared.exceptions import MCPError

from supervisor import EventKind, Supervisor, open_supervisor
from supervisor.mcp import create_demo_server, serve_http

from ._mcp_helpers import counter, wait_for
from .test_mcp_http import INIT

TIMEOUT = 30  # seconds; generous for a loaded 2-core machine
ACCEPT = {"accept": "application/json, text/event-stream"}


@asynccontextmanager
async def http_server(
    *, app_options: dict[str, Any] | None = None, **config: Any
) -> AsyncIterator[tuple[Supervisor, str]]:
    config.setdefault("max_sessions", 8)
    serve = partial(serve_http, port=0, **(app_options or {}))
    async with open_supervisor(**config) as sup, trio.open_nursery() as nursery:
        url: str = await nursery.start(partial(serve, sup, create_demo_server()))
        yield sup, url
        nursery.cancel_scope.cancel()


async def open_session(http: httpx.AsyncClient, url: str, *, initialized: bool) -> str:
    opened = await http.post(url, json=INIT, headers=ACCEPT)
    assert opened.status_code == 200
    session_id = opened.headers["mcp-session-id"]
    if initialized:
        notified = await http.post(
            url,
            json={"jsonrpc": "2.0", "method": "notifications/initialized"},
            headers={**ACCEPT, "mcp-session-id": session_id, "mcp-protocol-version": "2025-11-25"},
        )
        assert notified.status_code == 202
    return session_id


@pytest.mark.parametrize(
    ("config", "initialized", "reason"),
    [
        ({"init_timeout": 1.0}, False, "init-timeout"),
        ({"idle_timeout": 1.0}, True, "idle-timeout"),
        ({"max_lifetime": 1.0}, True, "max-lifetime"),
    ],
)
async def test_a_deadline_ends_the_get_stream_cleanly_on_the_wire(
    config: dict[str, Any], initialized: bool, reason: str
) -> None:
    with trio.fail_after(TIMEOUT):
        async with (
            http_server(**config) as (sup, url),
            sup.subscribe() as events,
            httpx.AsyncClient() as http,
        ):
            session_id = await open_session(http, url, initialized=initialized)
            headers = {
                "accept": "text/event-stream",
                "mcp-session-id": session_id,
                "mcp-protocol-version": "2025-11-25",
            }
            async with http.stream("GET", url, headers=headers) as stream:
                assert stream.status_code == 200
                # Read to the end: an incomplete chunked body raises here.
                body = b"".join([chunk async for chunk in stream.aiter_raw()])
            assert body.replace(b"\r\n", b"\n").strip(b"\n").split(b"\n\n") in ([b""], [])
            ended = await wait_for(events, EventKind.EXPIRED, session_id)
            assert ended.reason == reason
            after = await http.post(
                url,
                json={"jsonrpc": "2.0", "id": 2, "method": "tools/list"},
                headers={**ACCEPT, **headers, "accept": ACCEPT["accept"]},
            )
            assert after.status_code == 404


async def test_official_client_with_its_get_stream_idles_out() -> None:
    with trio.fail_after(TIMEOUT):
        async with http_server(idle_timeout=1.0) as (sup, url), sup.subscribe() as events:
            async with Client(url, mode="legacy") as client:
                assert await counter(client) == 1
                [session] = sup.active_sessions()
                expired = await wait_for(events, EventKind.EXPIRED, session.id)
                assert expired.reason == "idle-timeout"
                with pytest.raises(MCPError):
                    await counter(client)


@pytest.mark.parametrize("json_response", [False, True])
async def test_a_session_outlives_its_exchanges_on_the_wire(json_response: bool) -> None:
    # hypercorn reports http.disconnect as soon as a response is complete: that is the normal
    # end of an exchange, not a client that went away, and must not end a JSON-mode session.
    async with (
        http_server(app_options={"json_response": json_response}, idle_timeout=60.0) as (
            sup,
            url,
        ),
        httpx.AsyncClient(timeout=TIMEOUT, trust_env=False) as http,
    ):
        session_id = await open_session(http, url, initialized=True)
        headers = {**ACCEPT, "mcp-session-id": session_id, "mcp-protocol-version": "2025-11-25"}
        for expected in (1, 2, 3):
            call = {
                "jsonrpc": "2.0",
                "id": 10 + expected,
                "method": "tools/call",
                "params": {"name": "counter", "arguments": {}},
            }
            answered = await http.post(url, json=call, headers=headers)
            assert answered.status_code == 200, answered.text
            assert f'"count":{expected}' in answered.text.replace(" ", "")
        assert sup.get_session(session_id).close_reason is None
