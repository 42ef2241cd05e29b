"""The 2026-07-28 single exchange (`supervisor.mcp._modern`): the SDK's wire answer, exactly.

Each case drives the same ASGI request through `McpHttpApp` and through the SDK's own entry
(``handle_modern_request``) and compares every message sent: status, headers, body bytes, in
order. Both response modes; the SSE deferral window and its pings on trio's MockClock; a
client that leaves cancels the handler in SSE mode, as in the SDK.
"""

from __future__ import annotations

import json
import math
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Any

import mcp_types as types
import pytest
import trio
import trio.testing
from mcp.server._streamable_http_modern import handle_modern_request
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel.server import Server

from supervisor import open_supervisor
from supervisor.mcp import McpHttpApp, create_demo_server
from supervisor.mcp._modern import _Reply

MODERN = "2026-07-28"
Message = MutableMapping[str, Any]

ENVELOPE = {
    "io.modelcontextprotocol/protocolVersion": MODERN,
    "io.modelcontextprotocol/clientInfo": {"name": "raw", "version": "1.0"},
    "io.modelcontextprotocol/clientCapabilities": {},
}

REGION_SCHEMA = {
    "type": "object",
    "properties": {
        "region": {"type": "string", "x-mcp-header": "Region"},
        "n": {"type": "integer"},
    },
}


def call(name: str, arguments: Mapping[str, Any], request_id: Any = 1) -> dict[str, Any]:
    # A progress token: a handler's progress notifications ride the response stream.
    return {
        "jsonrpc": "2.0",
        "id": request_id,
        "method": "tools/call",
        "params": {
            "name": name,
            "arguments": dict(arguments),
            "_meta": {**ENVELOPE, "progressToken": f"token-{request_id}"},
        },
    }


def headers_for(
    method: str | None = "tools/call",
    name: str | None = None,
    *,
    accept: str = "application/json, text/event-stream",
    extra: tuple[tuple[str, str], ...] = (),
) -> list[tuple[bytes, bytes]]:
    pairs = [
        ("host", "127.0.0.1:8000"),
        ("accept", accept),
        ("content-type", "application/json"),
        ("mcp-protocol-version", MODERN),
    ]
    if method is not None:
        pairs.append(("mcp-method", method))
    if name is not None:
        pairs.append(("mcp-name", name))
    pairs.extend(extra)
    return [(k.encode("latin-1"), v.encode("latin-1")) for k, v in pairs]


def scope_for(headers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/mcp",
        "raw_path": b"/mcp",
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "server": ("127.0.0.1", 8000),
        "client": ("127.0.0.1", 50000),
    }


App = Callable[[MutableMapping[str, Any], Any, Any], Awaitable[None]]


async def exchange(
    app: App, headers: list[tuple[bytes, bytes]], body: bytes, leave: trio.Event | None = None
) -> list[Message]:
    """Every message ``app`` sends for one POST; ``leave`` set: the client disconnects."""
    sent: list[Message] = []
    delivered = False

    async def receive() -> Message:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        if leave is None:
            await trio.sleep_forever()
        else:
            await leave.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(dict(message))

    await app(scope_for(headers), receive, send)
    return sent


def sdk_entry(server: Server[Any], json_response: bool) -> App:
    async def entry(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        async with server.lifespan(server) as state:
            await handle_modern_request(server, None, json_response, state, scope, receive, send)

    return entry


async def both(
    server: Server[Any],
    json_response: bool,
    headers: list[tuple[bytes, bytes]],
    body: bytes | Mapping[str, Any],
) -> tuple[list[Message], list[Message]]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    async with open_supervisor(max_sessions=4) as sup:
        ours = await exchange(McpHttpApp(sup, server, json_response=json_response), headers, raw)
    theirs = await exchange(sdk_entry(server, json_response), headers, raw)
    return ours, theirs


def region_server(*, with_lookup: bool) -> Server[Any]:
    async def list_tools(
        ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        return types.ListToolsResult(tools=[types.Tool(name="where", input_schema=REGION_SCHEMA)])

    async def call_tool(
        ctx: ServerRequestContext[Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        return types.CallToolResult(content=[types.TextContent(text=repr(params.arguments))])

    return Server(
        "region",
        on_list_tools=list_tools,
        on_call_tool=call_tool,
        get_tool_input_schema={"where": REGION_SCHEMA}.get if with_lookup else None,
    )


def emitting_server(progress: list[str]) -> Server[Any]:
    """Tools: ``notify`` (two notifications), ``slow`` (sleeps ``seconds``), ``boom``, ``hang``."""

    async def list_tools(
        ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        schema = {"type": "object"}
        names = ("notify", "slow", "boom", "hang", "late")
        return types.ListToolsResult(tools=[types.Tool(name=n, input_schema=schema) for n in names])

    async def call_tool(
        ctx: ServerRequestContext[Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        arguments = params.arguments or {}
        if params.name == "notify":
            await ctx.session.report_progress(1, 2, "one")
            await ctx.session.report_progress(2, 2, "two")
        elif params.name == "slow":
            await trio.sleep(float(arguments["seconds"]))
        elif params.name == "late":  # silent past the window, then a notification
            await trio.sleep(20.0)
            await ctx.session.report_progress(1, None, "late")
            await trio.sleep(20.0)
        elif params.name == "boom":
            raise RuntimeError("handler internals")
        elif params.name == "hang":
            progress.append("started")
            try:
                await trio.sleep(30.0)
            except trio.Cancelled:
                progress.append("cancelled")
                raise
            progress.append("finished")
        return types.CallToolResult(content=[types.TextContent(text="done")])

    return Server("emitting", on_list_tools=list_tools, on_call_tool=call_tool)


def without_id(message: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in message.items() if k != "id"}


CASES: dict[str, tuple[list[tuple[bytes, bytes]], bytes | dict[str, Any]]] = {
    "echo": (headers_for(name="echo"), call("echo", {"text": "hi"})),
    "string id": (headers_for(name="echo"), call("echo", {"text": "hé"}, request_id="a-1")),
    "unknown tool": (headers_for(name="nope"), call("nope", {})),
    "tool error": (headers_for(name="echo"), call("echo", {"text": 3})),
    "parse error": (headers_for(name="echo"), b'{"jsonrpc": "2.0", "id": 1,'),
    "huge integer": (headers_for(name="echo"), b'{"id": ' + b"9" * 5000 + b"}"),
    "batch": (headers_for(name="echo"), b"[" + json.dumps(call("echo", {})).encode() + b"]"),
    "posted response": (headers_for(), {"jsonrpc": "2.0", "id": 1, "result": {}}),
    "malformed id": (headers_for(name="echo"), {**call("echo", {}), "id": [1]}),
    "notification": (
        headers_for("notifications/cancelled"),
        {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 1}},
    ),
    "bad notification": (headers_for(None), {"jsonrpc": "2.0", "method": 7}),
    "duplicated method header": (
        headers_for(name="echo", extra=(("mcp-method", "tools/call"),)),
        call("echo", {"text": "hi"}),
    ),
    "method header mismatch": (headers_for("tools/list", "echo"), call("echo", {"text": "hi"})),
    "name header mismatch": (headers_for(name="counter"), call("echo", {"text": "hi"})),
    "no envelope": (
        headers_for(name="echo"),
        {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "echo"}},
    ),
    "unknown method": (
        headers_for("nothing/here"),
        {"jsonrpc": "2.0", "id": 1, "method": "nothing/here", "params": {"_meta": ENVELOPE}},
    ),
    "tools/list": (
        headers_for("tools/list"),
        {"jsonrpc": "2.0", "id": 9, "method": "tools/list", "params": {"_meta": ENVELOPE}},
    ),
    "discover": (
        headers_for("server/discover"),
        {"jsonrpc": "2.0", "id": 2, "method": "server/discover", "params": {"_meta": ENVELOPE}},
    ),
    "listen, SSE accepted": (
        headers_for("subscriptions/listen"),
        {
            "jsonrpc": "2.0",
            "id": 3,
            "method": "subscriptions/listen",
            "params": {"_meta": ENVELOPE},
        },
    ),
}


@pytest.mark.parametrize("json_response", [False, True], ids=["sse", "json"])
@pytest.mark.parametrize("case", sorted(CASES))
async def test_every_answer_is_the_sdks_byte_for_byte(case: str, json_response: bool) -> None:
    headers, body = CASES[case]
    ours, theirs = await both(create_demo_server(), json_response, headers, body)
    assert ours == theirs
    assert ours[0]["type"] == "http.response.start"
    assert all(k != b"mcp-session-id" for k, _ in ours[0]["headers"])


async def test_a_listen_request_needs_the_sse_accept_even_in_json_mode() -> None:
    headers = headers_for("subscriptions/listen", accept="application/json")
    body = {"jsonrpc": "2.0", "id": 3, "method": "subscriptions/listen", "params": {}}
    ours, theirs = await both(create_demo_server(), True, headers, body)
    assert ours == theirs
    assert ours[0]["status"] == 406


@pytest.mark.parametrize("with_lookup", [True, False], ids=["lookup", "tools-list"])
@pytest.mark.parametrize(
    ("arguments", "extra"),
    [
        ({"region": "eu"}, (("mcp-param-region", "eu"),)),
        ({"region": "eu"}, ()),
        ({"region": "eu"}, (("mcp-param-region", "us"),)),
        ({"region": "eu"}, (("mcp-param-region", "eu"), ("mcp-param-region", "eu"))),
        ({}, (("mcp-param-region", "eu"),)),
        ({"n": 1}, ()),
    ],
    ids=["match", "missing", "differs", "duplicated", "no-argument", "unannotated"],
)
async def test_mcp_param_headers_are_checked_against_the_tools_schema(
    with_lookup: bool, arguments: dict[str, Any], extra: tuple[tuple[str, str], ...]
) -> None:
    server = region_server(with_lookup=with_lookup)
    headers = headers_for(name="where", extra=extra)
    for json_response in (False, True):
        ours, theirs = await both(server, json_response, headers, call("where", arguments))
        assert ours == theirs


async def test_a_handler_error_is_a_generic_internal_error_in_both_modes() -> None:
    for json_response in (False, True):
        ours, theirs = await both(
            emitting_server([]), json_response, headers_for(name="boom"), call("boom", {})
        )
        assert ours == theirs
        assert b"handler internals" not in ours[-1]["body"]


async def test_notifications_commit_the_event_stream_before_the_reply() -> None:
    ours, theirs = await both(
        emitting_server([]), False, headers_for(name="notify"), call("notify", {})
    )
    assert ours == theirs
    assert dict(ours[0]["headers"])[b"content-type"] == b"text/event-stream"
    assert [m.get("more_body") for m in ours[1:]] == [True, True, False]
    assert b'"message":"one"' in ours[1]["body"]


async def test_json_mode_drops_the_notifications_and_answers_json() -> None:
    ours, theirs = await both(
        emitting_server([]), True, headers_for(name="notify"), call("notify", {})
    )
    assert ours == theirs
    assert dict(ours[0]["headers"])[b"content-type"] == b"application/json"


@pytest.mark.parametrize(
    ("tool", "arguments"),
    [("slow", {"seconds": 10.0}), ("slow", {"seconds": 40.0}), ("late", {})],
    ids=["within-window", "past-window", "late-notification"],
)
async def test_a_silent_handler_past_the_window_gets_sse_and_pings(
    autojump_clock: trio.testing.MockClock, tool: str, arguments: dict[str, Any]
) -> None:
    server = emitting_server([])
    async with open_supervisor(max_sessions=4) as sup:
        timed = {
            "ours": await _timed(McpHttpApp(sup, server), tool, arguments),
            "sdk": await _timed(sdk_entry(server, False), tool, arguments),
        }
    assert timed["ours"] == timed["sdk"]
    bodies: list[bytes] = [m.get("body", b"") for _, m in timed["ours"][1:]]
    if tool == "slow" and arguments["seconds"] < 15:
        assert dict(timed["ours"][0][1]["headers"])[b"content-type"] == b"application/json"
    elif tool == "slow":
        assert bodies[:2] == [b": ping\r\n\r\n", b": ping\r\n\r\n"]
        assert [t for t, _ in timed["ours"][:3]] == [15.0, 15.0, 30.0]
    else:
        assert bodies[0] == b": ping\r\n\r\n" and b"late" in bodies[1]


async def _timed(app: App, tool: str, arguments: dict[str, Any]) -> list[tuple[float, Message]]:
    """The messages of one exchange, each with the seconds since the request came in."""
    start = trio.current_time()
    stamped: list[tuple[float, Message]] = []

    async def stamping(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        async def timed_send(message: Message) -> None:
            stamped.append((trio.current_time() - start, message))
            await send(message)

        await app(scope, receive, timed_send)

    await exchange(stamping, headers_for(name=tool), json.dumps(call(tool, arguments)).encode())
    return stamped


async def test_a_client_that_leaves_cancels_the_handler_in_sse_mode(
    autojump_clock: trio.testing.MockClock,
) -> None:
    for who in ("ours", "sdk"):
        progress: list[str] = []
        server = emitting_server(progress)
        leave = trio.Event()
        async with open_supervisor(max_sessions=4) as sup, trio.open_nursery() as nursery:
            app = McpHttpApp(sup, server) if who == "ours" else sdk_entry(server, False)
            sent: list[Message] = []
            body = json.dumps(call("hang", {})).encode()
            nursery.start_soon(_collect, app, headers_for(name="hang"), body, leave, sent)
            await trio.sleep(1.0)
            assert progress == ["started"], who
            leave.set()
            await trio.sleep(1.0)
            assert progress == ["started", "cancelled"], who
            assert sent == [], who


async def _collect(
    app: App,
    headers: list[tuple[bytes, bytes]],
    body: bytes,
    leave: trio.Event,
    into: list[Message],
) -> None:
    into.extend(await exchange(app, headers, body, leave))


async def test_json_mode_lets_the_handler_finish_as_the_sdk_does(
    autojump_clock: trio.testing.MockClock,
) -> None:
    for who in ("ours", "sdk"):
        progress: list[str] = []
        server = emitting_server(progress)
        leave = trio.Event()
        sent: list[Message] = []
        async with open_supervisor(max_sessions=4) as sup, trio.open_nursery() as nursery:
            app = McpHttpApp(sup, server, json_response=True) if who == "ours" else None
            entry = app if app is not None else sdk_entry(server, True)
            body = json.dumps(call("hang", {})).encode()
            nursery.start_soon(_collect, entry, headers_for(name="hang"), body, leave, sent)
            await trio.sleep(1.0)
            leave.set()
        assert progress == ["started", "finished"], who
        assert sent[0]["status"] == 200


async def test_a_result_plain_json_cannot_carry_is_encoded_as_the_sdk_encodes_it() -> None:
    result = {"content": [], "value": math.nan, "big": math.inf}
    reply = _Reply(4, result, None)
    expected = types.JSONRPCResponse(jsonrpc="2.0", id=4, result=result).model_dump(
        mode="json", by_alias=True, exclude_none=True
    )
    assert reply.data() == json.dumps(expected, separators=(",", ":"))
    plain = _Reply("x", {"a": None, "b": [1, "é"]}, None)
    assert json.loads(plain.data()) == {"jsonrpc": "2.0", "id": "x", "result": plain.result}
