"""`McpHttpApp` under hostile or careless use (issue 9): resumable streams isolated per session,
bad token verifiers, disconnects in JSON mode, every close path draining, a GET stream that does
not pin its session, ``mailbox_size=0``, short ids in every log line, quiet refusals.

Requests that must be watched while they stream, or cut off by the client, are driven by hand
over raw ASGI (`Wire`), so trio's MockClock (``autojump_clock``) runs every deadline instantly.
"""

from __future__ import annotations

import json
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import httpx
import mcp_types as types
import pytest
import trio
import trio.testing
from mcp.server.auth.provider import AccessToken
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel.server import Server
from mcp.server.streamable_http import EventCallback, EventMessage, EventStore
from mcp_types import JSONRPCMessage

from supervisor import EventKind, SessionState, Supervisor, open_supervisor
from supervisor.mcp import McpHttpApp, create_demo_server

from ._mcp_helpers import wait_for
from .test_mcp_http import (
    ACCEPT,
    BASE,
    INIT,
    call_tool,
    initialize,
    messages,
    result,
    session_headers,
    sleep_server,
    slow_server,
    verify,
)

ALICE = {"authorization": "Bearer token-alice"}
BOB = {"authorization": "Bearer token-bob"}


@asynccontextmanager
async def serving_app(
    server: Any = None, app_options: Mapping[str, Any] | None = None, **config: Any
) -> AsyncIterator[tuple[Supervisor, McpHttpApp, httpx.AsyncClient]]:
    config.setdefault("max_sessions", 4)
    async with open_supervisor(**config) as sup:
        app = McpHttpApp(sup, server or create_demo_server(), **(app_options or {}))
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=BASE) as client:
            yield sup, app, client


class Wire:
    """One HTTP request over raw ASGI: the body chunks as they are sent, and a client that can
    disconnect (``gone``) at any time."""

    def __init__(self, method: str, headers: Mapping[str, str], body: bytes = b"") -> None:
        raw = [(b"host", b"127.0.0.1:8000")]
        raw += [(k.lower().encode(), v.encode()) for k, v in headers.items()]
        self.scope: dict[str, Any] = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": method,
            "scheme": "http",
            "path": "/mcp",
            "raw_path": b"/mcp",
            "query_string": b"",
            "root_path": "",
            "headers": raw,
            "client": ("127.0.0.1", 50000),
            "server": ("127.0.0.1", 8000),
        }
        self.body = body
        self._delivered = False
        self.gone = trio.Event()
        self.finished = trio.Event()
        self.status: int | None = None
        self.headers: dict[str, str] = {}
        self.chunks: list[bytes] = []
        self.complete = False

    async def receive(self) -> dict[str, Any]:
        if not self._delivered:
            self._delivered = True
            return {"type": "http.request", "body": self.body, "more_body": False}
        await self.gone.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: Mapping[str, Any]) -> None:
        if message["type"] == "http.response.start":
            self.status = int(message["status"])
            self.headers = {k.decode(): v.decode() for k, v in message.get("headers", [])}
        elif message["type"] == "http.response.body":
            assert not self.complete, "a body message after the last one"
            self.chunks.append(bytes(message.get("body", b"")))
            self.complete = not message.get("more_body", False)

    async def run(self, app: McpHttpApp) -> None:
        try:
            await app(self.scope, self.receive, self.send)
        finally:
            self.finished.set()

    @property
    def text(self) -> str:
        return b"".join(self.chunks).decode()

    def events(self) -> list[dict[str, str]]:
        """The SSE events so far (comments such as pings left out)."""
        found = []
        for block in self.text.replace("\r\n", "\n").split("\n\n"):
            fields: dict[str, str] = {}
            for line in block.split("\n"):
                name, _, value = line.partition(":")
                if name in ("id", "data", "event", "retry"):
                    fields[name] = value.strip()
            if fields:
                found.append(fields)
        return found

    def data(self) -> list[dict[str, Any]]:
        return [json.loads(e["data"]) for e in self.events() if e.get("data")]

    def assert_ended_cleanly(self) -> None:
        """The response was completed (last body message sent), and every chunk of an SSE
        stream is whole events: nothing was cut mid-message."""
        assert self.status == 200, self.status
        assert self.complete, "the response was never completed (cut off)"
        for chunk in self.chunks:
            text = chunk.decode()
            assert not text or text.endswith(("\n\n", "\r\n\r\n")), f"a partial event: {text!r}"


def get_headers(session_id: str, **extra: str) -> dict[str, str]:
    return session_headers(session_id, accept="text/event-stream", **extra)


def call_body(name: str, arguments: dict[str, Any], request_id: int = 7) -> bytes:
    return json.dumps(
        {
            "jsonrpc": "2.0",
            "id": request_id,
            "method": "tools/call",
            "params": {"name": name, "arguments": arguments},
        }
    ).encode()


# -- resumable streams are per session (#1) -------------------------------------------------


class InMemoryEventStore(EventStore):
    """The SDK examples' (and the conformance server's) store: one table, events replayed by
    the stream id of the given event, stream ids as the transport names them."""

    def __init__(self) -> None:
        self.events: OrderedDict[str, tuple[str, JSONRPCMessage | None]] = OrderedDict()
        self.counter = 0

    async def store_event(self, stream_id: str, message: JSONRPCMessage | None) -> str:
        self.counter += 1
        event_id = str(self.counter)
        self.events[event_id] = (stream_id, message)
        return event_id

    async def replay_events_after(
        self, last_event_id: str, send_callback: EventCallback
    ) -> str | None:
        entry = self.events.get(last_event_id)
        if entry is None:
            return None
        stream_id = entry[0]
        after = int(last_event_id)
        for event_id, (sid, message) in list(self.events.items()):
            if sid == stream_id and int(event_id) > after and message is not None:
                await send_callback(EventMessage(message, event_id))
        return stream_id


def event_ids(response: httpx.Response) -> list[str]:
    return [line[3:].strip() for line in response.text.splitlines() if line.startswith("id:")]


async def resume(app: McpHttpApp, session_id: str, last_event_id: str, **headers: str) -> Wire:
    """GET with ``Last-Event-ID``; returns once the replay has been sent, client disconnected."""
    wire = Wire("GET", get_headers(session_id, **{"last-event-id": last_event_id}, **headers))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(wire.run, app)
        await trio.testing.wait_all_tasks_blocked()
        wire.gone.set()
        with trio.fail_after(5):
            await wire.finished.wait()
    return wire


def texts(wire: Wire) -> list[str]:
    return [
        item["text"]
        for message in wire.data()
        for item in message.get("result", {}).get("content", [])
    ]


async def test_resume_replays_only_this_sessions_events(
    autojump_clock: trio.testing.MockClock,
) -> None:
    store = InMemoryEventStore()
    options = {"token_verifier": verify, "event_store": store}
    async with serving_app(app_options=options) as (_sup, app, client):
        alice = await initialize(client, **ALICE)
        bob = await initialize(client, **BOB)
        # The same JSON-RPC request id in both sessions: Bob first, then Alice.
        bobs = await call_tool(client, bob, "echo", {"text": "bob's"}, request_id=2, headers=BOB)
        bob_priming = event_ids(bobs)[0]
        alices = await call_tool(
            client, alice, "echo", {"text": "alice's secret"}, request_id=2, headers=ALICE
        )
        alice_priming = event_ids(alices)[0]
        assert "alice's secret" in alices.text

        # An honest resume replays Bob's own result, and nothing of Alice's later one.
        honest = await resume(app, bob, bob_priming, **BOB)
        assert honest.status == 200
        assert texts(honest) == ["bob's"]
        assert "alice" not in honest.text

        # Bob with Alice's event id, on his own session: refused like an unknown id.
        foreign = await resume(app, bob, alice_priming, **BOB)
        unknown = await resume(app, bob, "999999", **BOB)
        assert "alice" not in foreign.text
        assert foreign.status == unknown.status
        assert foreign.data() == unknown.data() == []
        assert foreign.complete and unknown.complete

        # Alice's own resume still works.
        own = await resume(app, alice, alice_priming, **ALICE)
        assert texts(own) == ["alice's secret"]


async def test_event_id_of_another_session_of_the_same_principal_is_refused(
    autojump_clock: trio.testing.MockClock,
) -> None:
    options = {"token_verifier": verify, "event_store": InMemoryEventStore()}
    async with serving_app(app_options=options) as (_sup, app, client):
        first = await initialize(client, **ALICE)
        second = await initialize(client, **ALICE)
        answered = await call_tool(
            client, first, "echo", {"text": "first's"}, request_id=2, headers=ALICE
        )
        [priming, answer] = event_ids(answered)
        for event_id in (priming, answer):
            wire = await resume(app, second, event_id, **ALICE)
            assert "first's" not in wire.text
            assert wire.data() == []


async def test_event_ids_on_the_wire_do_not_carry_the_session_id(
    autojump_clock: trio.testing.MockClock,
) -> None:
    store = InMemoryEventStore()
    async with serving_app(app_options={"event_store": store}) as (_sup, _app, client):
        session_id = await initialize(client)
        answered = await call_tool(client, session_id, "echo", {"text": "x"}, request_id=2)
        for event_id in event_ids(answered):
            assert session_id[:9] not in event_id
        for stream_id, _message in store.events.values():
            assert session_id[:9] not in stream_id


async def test_each_sessions_view_of_the_store_is_its_own() -> None:
    from supervisor.mcp._http_session import _RELEASE, _SessionEventStore

    inner = InMemoryEventStore()
    mine, theirs = _SessionEventStore(inner), _SessionEventStore(inner)
    note = types.JSONRPCNotification(jsonrpc="2.0", method="notifications/message", params={})
    priming = await mine.store_event("_GET_stream", None)
    sent = await mine.store_event("_GET_stream", note)
    foreign = await theirs.store_event("_GET_stream", note)
    assert len({stream_id for stream_id, _ in inner.events.values()}) == 2
    replayed: list[str | None] = []

    async def collect(event: EventMessage) -> None:
        replayed.append(event.event_id)

    released: list[bool] = []
    _RELEASE.set(lambda: released.append(True))
    # The stream of server-to-client messages, resumed: replayed, and not a request in flight.
    assert await mine.replay_events_after(priming, collect) == "_GET_stream"
    assert replayed == [sent]
    assert released == [True]
    replayed.clear()
    # Another session's event id, or the store's own id without this session's namespace.
    assert await mine.replay_events_after(foreign, collect) is None
    assert await mine.replay_events_after(foreign.rsplit(".", 1)[1], collect) is None
    assert await mine.replay_events_after(sent.rsplit(".", 1)[1], collect) is None
    assert replayed == []


# -- token verifiers that misbehave (#2) ----------------------------------------------------


@pytest.mark.parametrize("returned", [5, ["alice"], b"alice", {"sub": "alice"}, True])
async def test_verifier_returning_a_non_str_principal_is_a_500_without_a_leak(
    returned: Any, caplog: pytest.LogCaptureFixture
) -> None:
    async def bad(token: str) -> Any:
        return returned

    async with serving_app(max_sessions=1, app_options={"token_verifier": bad}) as (
        sup,
        app,
        client,
    ):
        statuses = []
        for _ in range(3):
            with caplog.at_level(logging.ERROR, logger="supervisor.mcp"):
                caplog.clear()
                response = await client.post("/mcp", json=INIT, headers={**ACCEPT, **ALICE})
            statuses.append(response.status_code)
            assert response.json()["error"]["code"] == types.INTERNAL_ERROR
            assert any(r.levelno >= logging.ERROR for r in caplog.records)
        assert statuses == [500, 500, 500]
        assert len(sup) == 0
        assert sup.statistics().total == 0
        app.token_verifier = verify  # the slot was never taken
        session_id = await initialize(client, **ALICE)
        assert sup.get_session(session_id).principal == "alice"


async def test_verifier_that_raises_is_a_500_every_time(caplog: pytest.LogCaptureFixture) -> None:
    async def broken(token: str) -> str | None:
        raise RuntimeError("verifier down")

    async with serving_app(max_sessions=1, app_options={"token_verifier": broken}) as (
        sup,
        app,
        client,
    ):
        for _ in range(3):
            with caplog.at_level(logging.ERROR, logger="supervisor.mcp"):
                caplog.clear()
                response = await client.post("/mcp", json=INIT, headers={**ACCEPT, **ALICE})
            assert response.status_code == 500
            assert response.json()["error"]["code"] == types.INTERNAL_ERROR
            assert any(r.levelno >= logging.ERROR for r in caplog.records)
        assert len(sup) == 0
        app.token_verifier = verify
        await initialize(client, **ALICE)


async def test_sdk_verifier_returning_something_else_is_a_500() -> None:
    class Odd:
        async def verify_token(self, token: str) -> AccessToken | None:
            return "client-1"  # type: ignore[return-value]

    async with serving_app(max_sessions=1, app_options={"token_verifier": Odd()}) as (
        sup,
        _app,
        client,
    ):
        for _ in range(2):
            response = await client.post("/mcp", json=INIT, headers={**ACCEPT, **ALICE})
            assert response.status_code == 500
            assert response.json()["error"]["code"] == types.INTERNAL_ERROR
        assert len(sup) == 0


async def websocket_handshake(app: McpHttpApp, headers: Mapping[str, str]) -> Mapping[str, Any]:
    """Offer a WebSocket over raw ASGI; the app's first answer."""
    sent: list[Mapping[str, Any]] = []
    connected = False

    async def receive() -> dict[str, Any]:
        nonlocal connected
        if not connected:
            connected = True
            return {"type": "websocket.connect"}
        await trio.sleep_forever()
        raise AssertionError  # pragma: no cover

    async def send(message: Mapping[str, Any]) -> None:
        sent.append(message)

    raw = [(b"host", b"127.0.0.1:8000")]
    raw += [(k.encode(), v.encode()) for k, v in headers.items()]
    scope = {
        "type": "websocket",
        "path": "/mcp",
        "headers": raw,
        "subprotocols": ["mcp"],
        "extensions": {"websocket.http.response": {}},
    }
    with trio.fail_after(5):
        await app(scope, receive, send)
    return sent[0]


@pytest.mark.parametrize("returned", ["raise", 5])
async def test_websocket_handshake_with_a_failing_verifier_is_a_500(returned: Any) -> None:
    async def bad(token: str) -> Any:
        if returned == "raise":
            raise RuntimeError("verifier down")
        return returned

    async with serving_app(max_sessions=1, app_options={"token_verifier": bad}) as (
        sup,
        app,
        _client,
    ):
        for _ in range(3):
            answer = await websocket_handshake(app, ALICE)
            assert answer["type"] == "websocket.http.response.start"
            assert answer["status"] == 500
        assert len(sup) == 0
        assert sup.statistics().total == 0


# -- a client that disconnects mid-request (#4) ---------------------------------------------


def hang_server(cancelled: list[str], ended: trio.Event | None = None) -> Server[Any]:
    async def list_tools(
        ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        return types.ListToolsResult(
            tools=[types.Tool(name="hang", input_schema={"type": "object"})]
        )

    async def call_tool(
        ctx: ServerRequestContext[Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        try:
            await trio.sleep_forever()
        finally:
            cancelled.append("hang")
            if ended is not None:
                ended.set()

    return Server("hang", on_list_tools=list_tools, on_call_tool=call_tool)


@pytest.mark.parametrize("json_response", [True, False])
async def test_disconnect_mid_request_frees_the_session(
    autojump_clock: trio.testing.MockClock, json_response: bool
) -> None:
    cancelled: list[str] = []
    handler_ended = trio.Event()
    async with (
        serving_app(
            hang_server(cancelled, handler_ended),
            app_options={"json_response": json_response},
            idle_timeout=30.0,
        ) as (sup, app, client),
        sup.subscribe() as events,
    ):
        session_id = await initialize(client)
        wire = Wire("POST", session_headers(session_id), call_body("hang", {}))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(wire.run, app)
            await trio.sleep(5)
            assert sup.get_session(session_id).in_flight == 1
            wire.gone.set()
            left = trio.current_time()
            with trio.fail_after(1):
                await wire.finished.wait()
        assert sup.get_session(session_id).in_flight == 0
        if json_response:
            # No stream to resume: the handler works for nobody and is cancelled at once.
            with trio.fail_after(1):
                await handler_ended.wait()
            assert cancelled == ["hang"]
            assert sup.get_session(session_id).state is SessionState.READY
        else:
            # An SSE stream may be resumed (with an event store): the handler runs on.
            assert cancelled == []
        # The slot is no longer held: the session idles out on time, like any other.
        expired = await wait_for(events, EventKind.EXPIRED, session_id)
        assert expired.reason == "idle-timeout"
        assert 30.0 <= expired.at - left <= 30.0 + sup.config.deadline_slack + 1.0
        assert cancelled == ["hang"]  # the hung handler ended with the session


# -- every close path drains (#8) -----------------------------------------------------------


async def test_init_deadline_ends_an_open_get_stream_cleanly(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with (
        serving_app(init_timeout=5.0, idle_timeout=1800.0) as (sup, app, client),
        sup.subscribe() as events,
    ):
        opened = await client.post("/mcp", json=INIT, headers=ACCEPT)
        half_open = opened.headers["mcp-session-id"]  # never sends notifications/initialized
        wire = Wire("GET", get_headers(half_open))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(wire.run, app)
            expired = await wait_for(events, EventKind.EXPIRED, half_open)
            with trio.fail_after(1):
                await wire.finished.wait()
        assert expired.reason == "init-timeout"
        wire.assert_ended_cleanly()


@pytest.mark.parametrize("json_response", [False, True])
async def test_lifetime_deadline_gives_requests_in_flight_the_grace(
    autojump_clock: trio.testing.MockClock, json_response: bool
) -> None:
    async with (
        serving_app(
            sleep_server(),
            app_options={"json_response": json_response},
            max_lifetime=10.0,
            close_grace=2.0,
        ) as (sup, _app, client),
        sup.subscribe() as events,
    ):
        session_id = await initialize(client)
        answers: dict[str, list[dict[str, Any]]] = {}

        async def call(kind: str, seconds: float, request_id: int) -> None:
            response = await call_tool(
                client, session_id, "sleep", {"seconds": seconds}, request_id=request_id
            )
            assert response.status_code == 200, response.text
            answers[kind] = [m for m in messages(response) if "result" in m or "error" in m]

        async with trio.open_nursery() as nursery:
            nursery.start_soon(call, "short", 10.5, 1)  # ends within the grace
            nursery.start_soon(call, "long", 100.0, 2)
        expired = await wait_for(events, EventKind.EXPIRED, session_id)
        assert expired.reason == "max-lifetime"
        assert trio.current_time() <= 10.0 + 2.0 + sup.config.deadline_slack
        [short] = answers["short"]
        assert short["result"]["content"][0]["text"] == "slept"
        [long] = answers["long"]
        assert long["id"] == 2
        assert "error" in long  # answered, not dropped


@pytest.mark.parametrize("how", ["delete", "close_session", "shutdown"])
async def test_every_close_ends_the_get_stream_cleanly(
    autojump_clock: trio.testing.MockClock, how: str
) -> None:
    async with serving_app() as (sup, app, client):
        session_id = await initialize(client)
        wire = Wire("GET", get_headers(session_id))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(wire.run, app)
            await trio.testing.wait_all_tasks_blocked()
            if how == "delete":
                deleted = await client.delete("/mcp", headers=session_headers(session_id))
                assert deleted.status_code == 200
            elif how == "close_session":
                sup.close_session(session_id)
            else:
                nursery.start_soon(sup.shutdown)
            with trio.fail_after(1):
                await wire.finished.wait()
        wire.assert_ended_cleanly()


async def test_an_exception_in_the_supervisor_block_still_cancels_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    cancelled: list[str] = []
    with pytest.raises(BaseExceptionGroup) as failed:
        async with serving_app(hang_server(cancelled), close_grace=30.0) as (_sup, app, client):
            session_id = await initialize(client)
            stream = Wire("GET", get_headers(session_id))
            call = Wire("POST", session_headers(session_id), call_body("hang", {}))
            async with trio.open_nursery() as nursery:
                nursery.start_soon(stream.run, app)
                nursery.start_soon(call.run, app)
                await trio.testing.wait_all_tasks_blocked()
                start = trio.current_time()
                raise RuntimeError("operator bug")
    assert failed.group_contains(RuntimeError, match="operator bug")
    # No close grace (30 s): at most the SDK's own bound (1 s) on its shielded error write.
    assert trio.current_time() - start <= 1.0
    assert cancelled == ["hang"]


# -- an open GET stream does not pin its session ---------------------------------------------


async def test_idle_session_with_an_open_get_stream_expires_on_time(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with (
        serving_app(idle_timeout=30.0) as (sup, app, client),
        sup.subscribe() as events,
    ):
        session_id = await initialize(client)
        last_request = trio.current_time()
        wire = Wire("GET", get_headers(session_id))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(wire.run, app)
            await trio.testing.wait_all_tasks_blocked()
            assert sup.get_session(session_id).in_flight == 0
            expired = await wait_for(events, EventKind.EXPIRED, session_id)
            with trio.fail_after(1):
                await wire.finished.wait()
        assert expired.reason == "idle-timeout"
        assert 30.0 <= expired.at - last_request <= 30.0 + sup.config.deadline_slack
        wire.assert_ended_cleanly()
        again = await call_tool(client, session_id, "counter", {})
        assert again.status_code == 404  # the client's cue to start a new session


async def test_get_stream_is_not_a_request_for_the_per_session_limit() -> None:
    async with serving_app(app_options={"max_requests_per_session": 1}) as (sup, app, client):
        session_id = await initialize(client)
        wire = Wire("GET", get_headers(session_id))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(wire.run, app)
            await trio.testing.wait_all_tasks_blocked()
            assert wire.status == 200
            answered = await call_tool(client, session_id, "counter", {})
            assert result(answered)["structuredContent"] == {"count": 1}
            # Only one GET stream per session.
            second = await client.get("/mcp", headers=get_headers(session_id))
            assert second.status_code == 409
            assert "error" in second.json()
            wire.gone.set()  # the client leaves: the stream ends, the session stays
        assert wire.finished.is_set()
        assert sup.get_session(session_id).state is SessionState.READY
        assert sup.get_session(session_id).in_flight == 0


# -- mailbox_size=0 (#11) -------------------------------------------------------------------


async def test_mailbox_size_zero_serves_http() -> None:
    async with serving_app(mailbox_size=0) as (sup, app, client):
        assert app.max_requests_per_session == 1
        session_id = await initialize(client)
        answered = await call_tool(client, session_id, "counter", {})
        assert result(answered)["structuredContent"] == {"count": 1}
        assert sup.get_session(session_id).state is SessionState.READY


# -- logs -----------------------------------------------------------------------------------


def failing_server() -> Server[Any]:
    async def list_tools(
        ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        return types.ListToolsResult(
            tools=[
                types.Tool(name="boom", input_schema={"type": "object"}),
                types.Tool(name="sleep", input_schema={"type": "object"}),
            ]
        )

    async def call_tool(
        ctx: ServerRequestContext[Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        if params.name == "boom":
            raise RuntimeError("the tool failed")
        await trio.sleep(float((params.arguments or {})["seconds"]))
        return types.CallToolResult(content=[types.TextContent(text="slept")])

    return Server("failing", on_list_tools=list_tools, on_call_tool=call_tool)


def leaks(record: logging.LogRecord, session_ids: set[str]) -> list[str]:
    """Every part of ``record`` that holds more than 8 characters of a session id."""
    parts = [record.getMessage(), repr(record.args), record.exc_text or ""]
    if record.exc_info:
        parts.append(logging.Formatter().formatException(record.exc_info))
    parts.extend(repr(value) for value in vars(record).values())
    found: list[str] = []
    for session_id in session_ids:
        windows = {session_id[i : i + 9] for i in range(len(session_id) - 8)}
        found.extend(
            f"{record.name}: {part[:200]}" for part in parts if any(w in part for w in windows)
        )
    return found


async def test_no_log_line_carries_more_than_8_characters_of_a_session_id(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    session_ids: set[str] = set()
    options = {
        "token_verifier": verify,
        "max_requests_per_session": 1,
        "event_store": InMemoryEventStore(),
    }
    async with (
        serving_app(failing_server(), app_options=options, max_sessions=3, idle_timeout=60.0) as (
            sup,
            app,
            client,
        ),
        sup.subscribe() as events,
    ):
        alice = await initialize(client, **ALICE)
        bob = await initialize(client, **BOB)
        session_ids |= {alice, bob}
        # Unknown id, other principal, 429, a failing tool, a resume, a GET stream.
        assert (await call_tool(client, "x" * 32, "boom", {}, headers=ALICE)).status_code == 404
        assert (await call_tool(client, alice, "boom", {}, headers=BOB)).status_code == 404
        async with trio.open_nursery() as nursery:
            sleeping = partial(call_tool, request_id=3, headers=ALICE)
            nursery.start_soon(sleeping, client, alice, "sleep", {"seconds": 5})
            await trio.testing.wait_all_tasks_blocked()
            flooded = await call_tool(client, alice, "boom", {}, headers=ALICE)
            assert flooded.status_code == 429
        failed = await call_tool(client, alice, "boom", {}, headers=ALICE)
        assert failed.status_code == 200
        await resume(app, alice, event_ids(failed)[0], **ALICE)
        await resume(app, alice, "no-such-event", **ALICE)
        stream = Wire("GET", get_headers(bob, **BOB))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(stream.run, app)
            await trio.testing.wait_all_tasks_blocked()
            # At capacity (3), then DELETE, and an expiry.
            third = await initialize(client, **BOB)
            session_ids.add(third)
            refused = await client.post("/mcp", json=INIT, headers={**ACCEPT, **BOB})
            assert refused.status_code == 503
            deleted = await client.delete("/mcp", headers=session_headers(alice, **ALICE))
            assert deleted.status_code == 200
            await wait_for(events, EventKind.EXPIRED, bob)
        half_open = await client.post("/mcp", json=INIT, headers={**ACCEPT, **ALICE})
        session_ids.add(half_open.headers["mcp-session-id"])
        await sup.shutdown()
    assert caplog.records, "nothing was logged: the test would prove nothing"
    found = [leak for record in caplog.records for leak in leaks(record, session_ids)]
    assert found == []


async def test_refusals_at_capacity_do_not_flood_the_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with serving_app(max_sessions=1) as (sup, _app, client):
        await initialize(client)
        with caplog.at_level(logging.INFO, logger="supervisor.mcp"):
            for _ in range(50):
                refused = await client.post("/mcp", json=INIT, headers=ACCEPT)
                assert refused.status_code == 503
        assert sup.statistics().rejected_total == 50
        warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(warnings) <= 1, [r.getMessage() for r in warnings]
        assert len(caplog.records) <= 2, [r.getMessage() for r in caplog.records]


async def test_429s_do_not_flood_the_log(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    options = {"max_requests_per_session": 1}
    async with serving_app(slow_server(), app_options=options) as (_sup, _app, client):
        session_id = await initialize(client)
        statuses: list[int] = []

        async def one(request_id: int) -> None:
            response = await call_tool(client, session_id, "slow", {}, request_id=request_id)
            statuses.append(response.status_code)

        with caplog.at_level(logging.INFO, logger="supervisor.mcp"):
            async with trio.open_nursery() as nursery:
                for request_id in range(30):
                    nursery.start_soon(one, 100 + request_id)
        assert sorted(statuses) == [200] + [429] * 29
        assert len(caplog.records) <= 2, [r.getMessage() for r in caplog.records]


# -- found by an independent adversarial pass ----------------------------------------------


async def test_an_empty_last_event_id_is_a_plain_stream_that_does_not_pin_the_session(
    autojump_clock: trio.testing.MockClock,
) -> None:
    options = {"event_store": InMemoryEventStore()}
    async with (
        serving_app(app_options=options, idle_timeout=30.0) as (sup, app, client),
        sup.subscribe() as events,
    ):
        session_id = await initialize(client)
        wire = Wire("GET", get_headers(session_id, **{"last-event-id": ""}))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(wire.run, app)
            await trio.testing.wait_all_tasks_blocked()
            assert wire.status == 200
            assert sup.get_session(session_id).in_flight == 0
            expired = await wait_for(events, EventKind.EXPIRED, session_id)
            with trio.fail_after(1):
                await wire.finished.wait()
        assert expired.reason == "idle-timeout"
        wire.assert_ended_cleanly()


@pytest.mark.parametrize("method", ["DELETE", "GET", "POST"])
async def test_requests_while_a_deadline_drains_get_404(
    autojump_clock: trio.testing.MockClock, method: str
) -> None:
    async with serving_app(sleep_server(), max_lifetime=10.0, close_grace=5.0) as (
        sup,
        _app,
        client,
    ):
        session_id = await initialize(client)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(call_tool, client, session_id, "sleep", {"seconds": 100.0})
            await trio.sleep(10.5)  # the lifetime deadline fired; the long call drains
            assert sup.get_session(session_id).close_reason == "max-lifetime"
            if method == "POST":
                late = await call_tool(client, session_id, "counter", {}, request_id=9)
            else:
                late = await client.request(method, "/mcp", headers=get_headers(session_id))
            assert late.status_code == 404


async def test_a_state_handle_is_not_an_mcp_session_id() -> None:
    async with serving_app() as (sup, _app, client):
        session_id = await initialize(client)
        opened = await call_tool(client, session_id, "open_session", {})
        handle = result(opened)["structuredContent"]["session"]
        assert handle in sup
        for method in ("GET", "DELETE"):
            response = await client.request(method, "/mcp", headers=get_headers(handle))
            assert response.status_code == 404
        posted = await call_tool(client, handle, "counter", {})
        assert posted.status_code == 404
        assert handle in sup  # the handle itself is untouched


async def test_verifier_returning_an_empty_principal_is_a_500_without_a_leak(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def empty(token: str) -> str:
        return ""

    async with serving_app(max_sessions=1, app_options={"token_verifier": empty}) as (
        sup,
        _app,
        client,
    ):
        for _ in range(2):
            with caplog.at_level(logging.ERROR, logger="supervisor.mcp"):
                caplog.clear()
                response = await client.post("/mcp", json=INIT, headers={**ACCEPT, **ALICE})
            assert response.status_code == 500
            assert response.json()["error"]["code"] == types.INTERNAL_ERROR
            assert any("empty principal" in r.getMessage() for r in caplog.records)
        assert sup.statistics().total == 0
