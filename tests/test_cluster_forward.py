"""`supervisor.cluster._forward.Forwarding`: a request that lands on a node that does not own its
session is relayed to the owner, streaming included. No Redis: two supervisors in one trio
run, each serving `McpHttpApp` over real sockets (hypercorn on free 127.0.0.1 ports), each
opened with a trivial cluster hook that mints ``<token>.<node>`` ids, and a fake `Directory`.

Real clocks here (sockets and MockClock do not mix); every wait is bounded.
"""

from __future__ import annotations

import json
import logging
import secrets
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from functools import partial
from typing import Any

import attrs
import httpx
import mcp_types as types
import pytest
import trio
from mcp import Client
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel.server import Server

from supervisor import EventKind, Session, SessionState, Supervisor, open_supervisor
from supervisor.cluster._forward import FORWARDED_HEADER, Forwarding
from supervisor.mcp import McpHttpApp, create_demo_server, serve_http

from ._mcp_helpers import wait_for
from .test_mcp_http import INIT, messages, result

TIMEOUT = 30  # seconds; generous for a loaded 2-core machine
VERSION = "2025-11-25"
ACCEPT = {"accept": "application/json, text/event-stream", "content-type": "application/json"}
NOT_FOUND = {
    "jsonrpc": "2.0",
    "id": None,
    "error": {"code": types.INVALID_REQUEST, "message": "Not Found: unknown or expired session ID"},
}


@asynccontextmanager
async def _attached() -> AsyncIterator[None]:
    yield


@attrs.define
class FakeHook:
    """The core's `ClusterHook`, trivially: ids ``<token>.<node>``, every admit granted."""

    node: str

    def attach(self, supervisor: Supervisor) -> AbstractAsyncContextManager[None]:
        return _attached()

    def new_session_id(self) -> str:
        return f"{secrets.token_urlsafe(24)}.{self.node}"

    def admit_nowait(self, principal: str | None) -> str | None:
        return None

    async def admit(self, principal: str | None, *, wait: bool) -> None:
        return None

    def bind_nowait(self, principal: str) -> str | None:
        return None

    async def bind(self, principal: str) -> None:
        return None

    def unbind(self, principal: str) -> None:
        pass

    def release(self, principal: str | None) -> None:
        pass

    def event(
        self,
        kind: EventKind,
        session: Session,
        reason: str | None,
        old_state: SessionState | None,
        new_state: SessionState | None,
    ) -> None:
        pass


@attrs.define
class FakeDirectory:
    """A `Directory` over a shared dict of addresses (node -> base URL)."""

    node_id: str
    addresses: dict[str, str]

    def owner_of(self, session_id: str) -> str | None:
        head, dot, node = session_id.rpartition(".")
        return node if dot and head and node else None

    def address_of(self, node: str) -> str | None:
        return self.addresses.get(node)


@attrs.define
class Node:
    sup: Supervisor
    url: str
    app: McpHttpApp
    forwarding: Forwarding


@attrs.define
class Sleeping:
    """What the ``sleep`` tool reports: it started, and it ended (cancelled)."""

    started: trio.Event = attrs.field(factory=trio.Event)
    ended: trio.Event = attrs.field(factory=trio.Event)


@attrs.define
class Nodes:
    a: Node
    b: Node
    addresses: dict[str, str]
    sleeping: Sleeping


def test_server(sleeping: Sleeping) -> Server[Any]:
    """The demo server, plus ``notify`` (a message on the GET stream) and ``sleep`` (forever)."""
    server = create_demo_server()
    entry = server.get_request_handler("tools/call")
    assert entry is not None
    call_tool = entry.handler

    async def called(ctx: ServerRequestContext[Any], params: types.CallToolRequestParams) -> Any:
        if params.name == "notify":
            await ctx.session.send_tool_list_changed()
            return types.CallToolResult(content=[types.TextContent(text="sent")])
        if params.name == "sleep":
            sleeping.started.set()
            try:
                await trio.sleep_forever()
            finally:
                sleeping.ended.set()
        return await call_tool(ctx, params)

    server.add_request_handler("tools/call", types.CallToolRequestParams, called)
    return server


test_server.__test__ = False  # type: ignore[attr-defined]


async def verify(token: str) -> str | None:
    return {"alice-token": "alice", "bob-token": "bob"}.get(token)


@asynccontextmanager
async def two_nodes(
    app_options: dict[str, Any] | None = None, **config: Any
) -> AsyncIterator[Nodes]:
    config.setdefault("max_sessions", 8)
    addresses: dict[str, str] = {}
    sleeping = Sleeping()
    server = test_server(sleeping)
    async with (
        open_supervisor(cluster=FakeHook("nodeA"), **config) as sup_a,
        open_supervisor(cluster=FakeHook("nodeB"), **config) as sup_b,
        trio.open_nursery() as nursery,
    ):
        nodes: dict[str, Node] = {}
        for name, sup in (("nodeA", sup_a), ("nodeB", sup_b)):
            made: list[tuple[McpHttpApp, Forwarding]] = []

            def wrap(app: McpHttpApp, name: str = name, made: list[Any] = made) -> Forwarding:
                forwarding = Forwarding(app, FakeDirectory(name, addresses))
                made.append((app, forwarding))
                return forwarding

            url: str = await nursery.start(
                partial(serve_http, sup, server, port=0, wrap=wrap, **(app_options or {}))
            )
            addresses[name] = url.removesuffix("/mcp")
            [(app, forwarding)] = made
            nodes[name] = Node(sup, url, app, forwarding)
        try:
            yield Nodes(nodes["nodeA"], nodes["nodeB"], addresses, sleeping)
        finally:
            for node in nodes.values():
                await node.forwarding.aclose()
            nursery.cancel_scope.cancel()


def headers_for(session_id: str, **extra: str) -> dict[str, str]:
    return {**ACCEPT, "mcp-session-id": session_id, "mcp-protocol-version": VERSION, **extra}


async def initialize(http: httpx.AsyncClient, url: str, **headers: str) -> str:
    opened = await http.post(url, json=INIT, headers={**ACCEPT, **headers})
    assert result(opened)["protocolVersion"] == VERSION
    session_id = opened.headers["mcp-session-id"]
    notified = await http.post(
        url,
        json={"jsonrpc": "2.0", "method": "notifications/initialized"},
        headers=headers_for(session_id, **headers),
    )
    assert notified.status_code == 202, notified.text
    return session_id


def tool_call(name: str, arguments: dict[str, Any] | None = None, request_id: int = 7) -> Any:
    return {
        "jsonrpc": "2.0",
        "id": request_id,
        "method": "tools/call",
        "params": {"name": name, "arguments": arguments or {}},
    }


async def count(http: httpx.AsyncClient, url: str, session_id: str, **headers: str) -> int:
    answer = await http.post(
        url, json=tool_call("counter"), headers=headers_for(session_id, **headers)
    )
    value = result(answer)["structuredContent"]["count"]
    assert isinstance(value, int)
    return value


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


async def eventually(done: Callable[[], bool], what: str, within: float = 10.0) -> None:
    """Poll ``done`` (no event tells it) until true; fail after ``within`` seconds."""
    deadline = trio.current_time() + within
    while not done():
        if trio.current_time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await trio.sleep(0.01)


def http_client() -> httpx.AsyncClient:
    return httpx.AsyncClient(timeout=TIMEOUT, trust_env=False)


# -- the handshake era --------------------------------------------------------------------------


@pytest.mark.parametrize("json_response", [False, True])
async def test_a_session_opened_on_one_node_continues_through_another(json_response: bool) -> None:
    with trio.fail_after(TIMEOUT):
        async with two_nodes({"json_response": json_response}) as nodes, http_client() as http:
            session_id = await initialize(http, nodes.a.url)
            assert session_id.endswith(".nodeA")
            assert await count(http, nodes.b.url, session_id) == 1
            assert await count(http, nodes.a.url, session_id) == 2
            assert await count(http, nodes.b.url, session_id) == 3
            assert nodes.a.sup.has_session(session_id)
            assert len(nodes.b.sup) == 0  # B only relayed


async def test_the_handshake_itself_can_finish_through_another_node() -> None:
    with trio.fail_after(TIMEOUT):
        async with two_nodes() as nodes, http_client() as http:
            opened = await http.post(nodes.a.url, json=INIT, headers=ACCEPT)
            session_id = opened.headers["mcp-session-id"]
            notified = await http.post(
                nodes.b.url,
                json={"jsonrpc": "2.0", "method": "notifications/initialized"},
                headers=headers_for(session_id),
            )
            assert notified.status_code == 202
            assert nodes.a.sup.get_session(session_id).state.value == "ready"


async def test_the_get_stream_through_another_node_carries_server_messages() -> None:
    with trio.fail_after(TIMEOUT):
        async with two_nodes() as nodes, http_client() as http:
            session_id = await initialize(http, nodes.a.url)
            headers = {
                "accept": "text/event-stream",
                "mcp-session-id": session_id,
                "mcp-protocol-version": VERSION,
            }
            async with http.stream("GET", nodes.b.url, headers=headers) as stream:
                assert stream.status_code == 200
                assert stream.headers["content-type"].startswith("text/event-stream")
                # The stream is open on A (it answered): a message unrelated to a request rides it.
                sent = await http.post(
                    nodes.a.url, json=tool_call("notify"), headers=headers_for(session_id)
                )
                assert result(sent)["content"][0]["text"] == "sent"
                async for line in stream.aiter_lines():
                    if line.startswith("data:") and line[5:].strip():
                        message = json.loads(line[5:])
                        assert message["method"] == "notifications/tools/list_changed"
                        break


async def test_delete_through_another_node_ends_the_session_on_its_owner() -> None:
    with trio.fail_after(TIMEOUT):
        async with two_nodes() as nodes, http_client() as http:
            async with nodes.a.sup.subscribe() as events:
                session_id = await initialize(http, nodes.a.url)
                deleted = await http.delete(nodes.b.url, headers=headers_for(session_id))
                assert deleted.status_code == 200
                closed = await wait_for(events, EventKind.CLOSED, session_id)
                assert closed.reason == "client-delete"
            after = await http.post(
                nodes.b.url, json=tool_call("counter"), headers=headers_for(session_id)
            )
            assert after.status_code == 404
            assert after.json() == NOT_FOUND


async def test_the_owner_checks_the_principal_of_a_relayed_request() -> None:
    options = {"token_verifier": verify}
    with trio.fail_after(TIMEOUT):
        async with two_nodes(options) as nodes, http_client() as http:
            alice = {"authorization": "Bearer alice-token"}
            bob = {"authorization": "Bearer bob-token"}
            session_id = await initialize(http, nodes.a.url, **alice)
            assert await count(http, nodes.b.url, session_id, **alice) == 1
            refused = await http.post(
                nodes.b.url, json=tool_call("counter"), headers=headers_for(session_id, **bob)
            )
            assert refused.status_code == 404
            assert refused.json() == NOT_FOUND
            anonymous = await http.post(
                nodes.b.url, json=tool_call("counter"), headers=headers_for(session_id)
            )
            assert anonymous.status_code == 401
            assert await count(http, nodes.a.url, session_id, **alice) == 2


async def test_host_and_origin_reach_the_owner_as_sent() -> None:
    with trio.fail_after(TIMEOUT):
        async with two_nodes() as nodes, http_client() as http:
            session_id = await initialize(http, nodes.a.url)
            evil = await http.post(
                nodes.b.url,
                json=tool_call("counter"),
                headers=headers_for(session_id, origin="http://evil.example"),
            )
            assert evil.status_code == 403  # A's check, on B's client's Origin
            assert await count(http, nodes.b.url, session_id) == 1


async def test_a_dead_owner_answers_404(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="supervisor.cluster")
    with trio.fail_after(TIMEOUT):
        async with two_nodes() as nodes, http_client() as http:
            session_id = await initialize(http, nodes.a.url)
            # A unknown to B's directory (its lease ran out, say).
            address = nodes.addresses.pop("nodeA")
            gone = await http.post(
                nodes.b.url, json=tool_call("counter"), headers=headers_for(session_id)
            )
            assert gone.status_code == 404
            assert gone.json() == NOT_FOUND
            # An address nobody listens on.
            nodes.addresses["nodeA"] = f"http://127.0.0.1:{free_port()}"
            for method in ("POST", "GET", "DELETE"):
                refused = await http.request(
                    method,
                    nodes.b.url,
                    json=tool_call("counter") if method == "POST" else None,
                    headers=headers_for(session_id),
                )
                assert refused.status_code == 404, method
                assert refused.json() == NOT_FOUND
            nodes.addresses["nodeA"] = address
            assert await count(http, nodes.b.url, session_id) == 1
    warnings = [r for r in caplog.records if r.name == "supervisor.cluster"]
    assert len(warnings) == 4
    assert all(r.levelno == logging.WARNING for r in warnings)
    assert session_id[:8] in caplog.text
    assert session_id not in caplog.text  # short ids only: a full id is a credential


async def test_a_relayed_request_is_never_relayed_again() -> None:
    with trio.fail_after(TIMEOUT):
        async with two_nodes() as nodes, http_client() as http:
            session_id = await initialize(http, nodes.a.url)
            looped = await http.post(
                nodes.b.url,
                json=tool_call("counter"),
                headers=headers_for(session_id, **{FORWARDED_HEADER: "nodeC"}),
            )
            assert looped.status_code == 404  # B's own answer: it does not own the session
            assert looped.json() == NOT_FOUND
            assert await count(http, nodes.a.url, session_id) == 1  # A never saw it


async def test_a_client_that_leaves_cancels_the_relayed_request() -> None:
    with trio.fail_after(TIMEOUT):
        async with two_nodes({"json_response": True}) as nodes, http_client() as http:
            session_id = await initialize(http, nodes.a.url)
            session = nodes.a.sup.get_session(session_id)
            async with trio.open_nursery() as nursery:

                async def sleep_through_b() -> None:
                    await http.post(
                        nodes.b.url, json=tool_call("sleep"), headers=headers_for(session_id)
                    )

                nursery.start_soon(sleep_through_b)
                with trio.fail_after(10):
                    await nodes.sleeping.started.wait()  # on A, through B
                assert session.in_flight == 1
                nursery.cancel_scope.cancel()  # the client leaves B
            with trio.fail_after(10):
                await nodes.sleeping.ended.wait()  # A's handler was cancelled
            await eventually(
                lambda: session.in_flight == 0 and not nodes.a.app._active,
                "the request on A to end",
            )
            assert await count(http, nodes.b.url, session_id) == 1


@pytest.mark.parametrize("modern", [False, True])
async def test_a_body_over_the_limit_gets_413_where_it_lands(modern: bool) -> None:
    with trio.fail_after(TIMEOUT):
        async with two_nodes({"max_body_size": 2000}) as nodes, http_client() as http:
            assert nodes.b.forwarding.max_body_size == 2000  # the app's limit
            session_id = await initialize(http, nodes.a.url)
            big = tool_call("echo", {"text": "x" * 4000, "session": session_id})
            headers = headers_for(session_id)
            if modern:
                headers = {
                    **ACCEPT,
                    "mcp-protocol-version": "2026-07-28",
                    "mcp-method": "tools/call",
                    "mcp-name": "echo",
                }
            # Without Content-Length (a chunked body): only reading tells it is too large.
            chunks = [json.dumps(big).encode()[i : i + 1000] for i in range(0, 5000, 1000)]

            async def body() -> AsyncIterator[bytes]:
                for chunk in chunks:
                    yield chunk

            refused = await http.post(nodes.b.url, content=body(), headers=headers)
            assert refused.status_code == 413
            assert refused.json()["error"]["message"] == "Payload Too Large"
            assert await count(http, nodes.b.url, session_id) == 1


async def test_a_body_too_slow_to_relay_gets_408() -> None:
    with trio.fail_after(TIMEOUT):
        async with two_nodes({"body_timeout": 0.5}) as nodes, http_client() as http:
            session_id = await initialize(http, nodes.a.url)

            async def trickle() -> AsyncIterator[bytes]:
                yield b'{"jsonrpc": "2.0", '
                await trio.sleep(1.5)  # past the 0.5 s limit
                yield b'"id": 1, "method": "tools/list"}'

            with trio.fail_after(4):
                slow = await http.post(
                    nodes.b.url, content=trickle(), headers=headers_for(session_id)
                )
            assert slow.status_code == 408
            assert await count(http, nodes.b.url, session_id) == 1


async def test_other_requests_are_served_where_they_land() -> None:
    with trio.fail_after(TIMEOUT):
        async with two_nodes() as nodes, http_client() as http:
            session_id = await initialize(http, nodes.b.url)  # a new session: on B
            assert session_id.endswith(".nodeB")
            assert nodes.b.sup.has_session(session_id)
            plain = await http.post(
                nodes.b.url, json=tool_call("counter"), headers=headers_for("no-node-part")
            )
            assert plain.status_code == 404  # B's own answer for an id it does not know
            elsewhere = await http.get(nodes.b.url.removesuffix("/mcp") + "/other")
            assert elsewhere.status_code == 404


# -- the 2026-07-28 era -------------------------------------------------------------------------


def modern_result(response: httpx.Response) -> Any:
    assert response.status_code == 200, response.text
    [message] = [m for m in messages(response) if "result" in m or "error" in m]
    assert "result" in message, message
    return message["result"]


async def test_a_state_handle_opened_on_one_node_is_used_through_another() -> None:
    with trio.fail_after(TIMEOUT):
        async with two_nodes() as nodes:
            async with Client(nodes.a.url) as on_a, Client(nodes.b.url) as on_b:
                assert on_b.protocol_version == "2026-07-28"
                opened = await on_a.call_tool("open_session", {})
                assert isinstance(opened.structured_content, dict)
                handle = opened.structured_content["session"]
                assert handle.endswith(".nodeA")
                for expected, client in ((1, on_b), (2, on_a), (3, on_b)):
                    answer = await client.call_tool("counter", {"session": handle})
                    assert answer.structured_content == {"count": expected}
                assert len(nodes.b.sup) == 0
                closed = await on_b.call_tool("close_session", {"session": handle})
                assert closed.structured_content == {"session": handle, "closed": True}
                assert not nodes.a.sup.has_session(handle)
                after = await on_b.call_tool("counter", {"session": handle})
                assert after.is_error
                assert isinstance(after.structured_content, dict)
                assert after.structured_content["error"] == "session-closed"


async def test_a_dead_owners_handle_is_not_found() -> None:
    with trio.fail_after(TIMEOUT):
        async with two_nodes() as nodes:
            async with Client(nodes.a.url) as on_a, Client(nodes.b.url) as on_b:
                opened = await on_a.call_tool("open_session", {})
                assert isinstance(opened.structured_content, dict)
                handle = opened.structured_content["session"]
                for address in (None, f"http://127.0.0.1:{free_port()}"):
                    if address is None:
                        del nodes.addresses["nodeA"]
                    else:
                        nodes.addresses["nodeA"] = address
                    answer = await on_b.call_tool("counter", {"session": handle})
                    assert answer.is_error
                    assert isinstance(answer.structured_content, dict)
                    assert answer.structured_content["error"] == "session-not-found"
                # A still has it; nothing was counted.
                answer = await on_a.call_tool("counter", {"session": handle})
                assert answer.structured_content == {"count": 1}


async def test_a_tool_call_without_a_handle_is_served_where_it_lands() -> None:
    with trio.fail_after(TIMEOUT):
        async with two_nodes() as nodes, Client(nodes.b.url) as on_b:
            answer = await on_b.call_tool("echo", {"text": "a.nodeA"})
            assert answer.content[0].text == "a.nodeA"  # type: ignore[union-attr]
            assert nodes.a.sup.statistics().created_total == 0
