"""WebSocket sessions over ASGI in memory: close codes on every path, graceful close.

`McpHttpApp` is driven as an ASGI server would drive it (``websocket.connect``, ``receive``,
``disconnect`` in; ``accept``, ``send``, ``close`` out), so trio's MockClock runs the deadlines
instantly. The official client (``mcp.ClientSession``) talks over it. Real sockets:
tests/test_mcp_interop.py.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, MutableMapping
from contextlib import asynccontextmanager
from typing import Any

import anyio
import attrs
import pytest
import trio
import trio.testing
from mcp.client.session import ClientSession
from mcp.shared._stream_protocols import ReadStream, WriteStream
from mcp.shared.message import SessionMessage
from mcp_types import jsonrpc_message_adapter

from supervisor import Event, EventKind, Supervisor, Transport, open_supervisor
from supervisor.mcp import McpHttpApp, ServerSource, create_demo_server

from ._mcp_helpers import counter, wait_for
from .test_mcp_session import check_drain, sleep_channel, sleep_server

NORMAL_CLOSURE = 1000
INTERNAL_ERROR = 1011


@attrs.define
class Peer:
    """The client's end of one in-memory WebSocket connection."""

    read_stream: ReadStream[SessionMessage | Exception]
    write_stream: WriteStream[SessionMessage]
    closed: trio.Event = attrs.field(factory=trio.Event)
    #: The server's ``websocket.close`` message, once sent.
    close: dict[str, Any] | None = None
    #: The app returned (the connection's ASGI task is over).
    returned: trio.Event = attrs.field(factory=trio.Event)

    @property
    def code_and_reason(self) -> tuple[int, str]:
        assert self.close is not None, "the server did not close the socket"
        return int(self.close["code"]), str(self.close.get("reason", ""))


@asynccontextmanager
async def websocket(app: McpHttpApp) -> AsyncIterator[Peer]:
    """Connect to ``app`` over in-memory ASGI and yield the client's streams."""
    to_app, app_inbox = trio.open_memory_channel[dict[str, Any]](64)
    to_client, client_read = anyio.create_memory_object_stream[SessionMessage | Exception](64)
    client_write, from_client = anyio.create_memory_object_stream[SessionMessage](64)
    peer = Peer(client_read, client_write)
    accepted = trio.Event()
    disconnected = False
    scope = {
        "type": "websocket",
        "path": "/mcp",
        "headers": [(b"host", b"127.0.0.1:8000")],
        "subprotocols": ["mcp"],
    }

    async def receive() -> MutableMapping[str, Any]:
        return await app_inbox.receive()

    async def send(message: MutableMapping[str, Any]) -> None:
        kind = message["type"]
        if kind == "websocket.accept":
            accepted.set()
        elif kind == "websocket.send":
            assert peer.close is None, "a frame after the close frame"
            item = SessionMessage(jsonrpc_message_adapter.validate_json(message["text"]))
            await to_client.send(item)
        elif kind == "websocket.close":
            assert peer.close is None, "a second close frame"
            peer.close = dict(message)
            to_client.close()
            peer.closed.set()
            to_app.send_nowait({"type": "websocket.disconnect", "code": message.get("code")})
        else:  # pragma: no cover
            raise AssertionError(f"unexpected ASGI message {message!r}")

    async def run_app() -> None:
        try:
            await app(scope, receive, send)
        finally:
            if peer.close is None and not disconnected:
                # What hypercorn does when the app returns from an open socket.
                peer.close = {"type": "websocket.close", "code": INTERNAL_ERROR}
                peer.closed.set()
            to_client.close()
            peer.returned.set()

    async def pump_out() -> None:
        async for item in from_client:
            if peer.close is None:
                text = item.message.model_dump_json(by_alias=True, exclude_unset=True)
                await to_app.send({"type": "websocket.receive", "text": text})

    async with trio.open_nursery() as nursery:
        to_app.send_nowait({"type": "websocket.connect"})
        nursery.start_soon(run_app)
        nursery.start_soon(pump_out)
        await accepted.wait()
        yield peer
        if peer.close is None:
            disconnected = True
            to_app.send_nowait({"type": "websocket.disconnect", "code": 1000})
        await peer.returned.wait()
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def connected(
    sup: Supervisor, server: ServerSource | None = None, *, initialize: bool = True
) -> AsyncIterator[tuple[Peer, ClientSession, str]]:
    app = McpHttpApp(sup, server or create_demo_server())
    async with websocket(app) as peer, ClientSession(peer.read_stream, peer.write_stream) as client:
        if initialize:
            await client.initialize()
        [session] = sup.active_sessions()
        assert session.transport is Transport.WEBSOCKET
        yield peer, client, session.id


# -- close codes --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "initialize", "reason"),
    [
        ({"idle_timeout": 30.0}, True, "idle-timeout"),
        ({"init_timeout": 5.0}, False, "init-timeout"),
        ({"max_lifetime": 50.0, "idle_timeout": 30.0}, True, "max-lifetime"),
    ],
)
async def test_deadline_closes_the_socket_normally_with_the_reason(
    autojump_clock: trio.testing.MockClock, config: dict[str, Any], initialize: bool, reason: str
) -> None:
    async with (
        open_supervisor(**config) as sup,
        sup.subscribe() as events,
        connected(sup, initialize=initialize) as (peer, client, session_id),
    ):
        if reason == "max-lifetime":
            for _ in range(4):  # active, so only the lifetime can end it
                await trio.sleep(10)
                assert await counter(client) > 0
        with trio.fail_after(100):
            await peer.closed.wait()
        assert peer.code_and_reason == (NORMAL_CLOSURE, reason)
        expired = await wait_for(events, EventKind.EXPIRED, session_id)
        assert expired.reason == reason


@pytest.mark.parametrize("how", ["close_session", "shutdown"])
async def test_close_and_shutdown_close_the_socket_normally(
    autojump_clock: trio.testing.MockClock, how: str
) -> None:
    async with (
        open_supervisor() as sup,
        connected(sup) as (peer, _client, session_id),
        trio.open_nursery() as nursery,
    ):
        if how == "close_session":
            assert sup.close_session(session_id, reason="operator")
        else:
            nursery.start_soon(sup.shutdown)
        with trio.fail_after(10):
            await peer.closed.wait()
        assert peer.code_and_reason == (
            NORMAL_CLOSURE,
            "operator" if how == "close_session" else "shutdown",
        )


async def test_a_failed_session_closes_the_socket_with_1011(
    autojump_clock: trio.testing.MockClock,
) -> None:
    def broken_factory() -> Any:
        raise RuntimeError("no server today")

    async with (
        open_supervisor() as sup,
        sup.subscribe() as events,
        websocket(McpHttpApp(sup, broken_factory)) as peer,
    ):
        with trio.fail_after(10):
            await peer.closed.wait()
        assert peer.code_and_reason[0] == INTERNAL_ERROR
        async for event in events:
            if isinstance(event, Event) and event.kind is EventKind.FAILED:
                assert isinstance(event.error, RuntimeError)
                break


async def test_client_disconnect_closes_the_session(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_supervisor() as sup, sup.subscribe() as events:
        async with connected(sup) as (peer, _client, session_id):
            assert await counter(_client) == 1
        closed = await wait_for(events, EventKind.CLOSED, session_id)
        assert closed.reason == "client-disconnected"
        assert peer.close is None  # nothing to send to a client that has gone


# -- graceful close -----------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["close_session", "shutdown", "max-lifetime", "init-timeout"])
async def test_close_drains_requests_in_flight(
    autojump_clock: trio.testing.MockClock, how: str
) -> None:
    send, started = sleep_channel()
    grace = 2.0
    config: dict[str, Any] = {"close_grace": grace, "shutdown_grace": grace}
    close_at = 10.0
    if how == "max-lifetime":
        config["max_lifetime"] = close_at = 50.0
    if how == "init-timeout":
        config["init_timeout"] = close_at = 5.0
    async with (
        open_supervisor(**config) as sup,
        sup.subscribe() as events,
        trio.open_nursery() as nursery,
    ):
        async with connected(sup, sleep_server(send), initialize=False) as (
            peer,
            client,
            session_id,
        ):
            if how == "init-timeout":
                # Accepted but never READY: the client's notifications/initialized is lost.
                await _initialize_without_notification(client)
            else:
                await client.initialize()

            def close() -> None:
                if how == "close_session":
                    assert sup.close_session(session_id)
                else:
                    nursery.start_soon(sup.shutdown)

            await check_drain(
                client,
                started,
                grace=grace,
                close_at=close_at,
                close=close if how in ("close_session", "shutdown") else None,
            )
            with trio.fail_after(grace):
                await peer.closed.wait()
            reason = {"close_session": "closed"}.get(how, how)
            assert peer.code_and_reason == (NORMAL_CLOSURE, reason)
        ended = await wait_for(
            events,
            EventKind.CLOSED if how in ("close_session", "shutdown") else EventKind.EXPIRED,
            session_id,
        )
        assert ended.reason == reason
        assert trio.current_time() < close_at + grace


async def _initialize_without_notification(client: ClientSession) -> None:
    """The ``initialize`` request alone: the session stays INITIALIZING (a half-open client)."""
    import mcp_types as types

    await client.send_request(
        types.InitializeRequest(
            params=types.InitializeRequestParams(
                protocol_version="2025-11-25",
                capabilities=types.ClientCapabilities(),
                client_info=types.Implementation(name="half-open", version="1"),
            )
        ),
        types.InitializeResult,
    )


# -- logs ---------------------------------------------------------------------------------------


async def test_no_full_session_id_in_logs(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    send, started = sleep_channel()
    async with open_supervisor(close_grace=1.0, idle_timeout=30.0) as sup:
        async with connected(sup, sleep_server(send)) as (peer, client, session_id):
            await check_drain(
                client,
                started,
                grace=1.0,
                close_at=5.0,
                close=lambda: sup.close_session(session_id),
            )
        async with connected(sup) as (peer, client, session_id2):
            await peer.closed.wait()  # idle-timeout
    assert caplog.records
    for record in caplog.records:
        message = record.getMessage()
        assert session_id not in message and session_id2 not in message, message
