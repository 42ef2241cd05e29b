"""stdio sessions with the official client: graceful close on every path.

`serve_stdio` runs on trio memory streams and ``mcp.ClientSession`` talks newline-delimited
JSON-RPC to it, so trio's MockClock runs the deadlines instantly. (The basics of the transport
are in tests/test_mcp_session.py; a real subprocess in tests/test_mcp_interop.py.)
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import attrs
import pytest
import trio
import trio.testing
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from mcp.client.session import ClientSession
from mcp.shared.message import SessionMessage
from mcp_types import jsonrpc_message_adapter

from supervisor import EventKind, Supervisor, Transport, open_supervisor
from supervisor.mcp import ServerSource, serve_stdio

from ._mcp_helpers import wait_for
from .test_mcp_session import check_drain, sleep_channel, sleep_server


@attrs.define
class StdioPeer:
    client: ClientSession
    #: serve_stdio has returned.
    returned: trio.Event
    #: Every line the server wrote, in order (each one checked to be a JSON-RPC message).
    lines: list[bytes]


@attrs.define
class StdioWire:
    """The client's end of `serve_stdio` on memory streams."""

    read_stream: MemoryObjectReceiveStream[SessionMessage | Exception]
    write_stream: MemoryObjectSendStream[SessionMessage]
    #: serve_stdio has returned.
    returned: trio.Event
    #: Every line the server wrote, in order (each one checked to be a JSON-RPC message).
    lines: list[bytes]


@asynccontextmanager
async def stdio_wire(sup: Supervisor | None, server: ServerSource) -> AsyncIterator[StdioWire]:
    """`serve_stdio` (in ``sup``, or its own supervisor) on memory streams, newline-delimited
    JSON-RPC, with the client's end as a pair of message streams."""
    to_server, server_in = trio.testing.memory_stream_one_way_pair()
    server_out, from_server = trio.testing.memory_stream_one_way_pair()
    to_client, client_read = anyio.create_memory_object_stream[SessionMessage | Exception](64)
    client_write, outgoing = anyio.create_memory_object_stream[SessionMessage](64)
    wire = StdioWire(client_read, client_write, trio.Event(), [])

    async def run() -> None:
        await serve_stdio(server, supervisor=sup, stdin=server_in, stdout=server_out)
        wire.returned.set()
        await server_out.aclose()  # what the process's exit does to a real stdout

    async def pump_in() -> None:
        buffer = b""
        async with to_client:
            while chunk := await from_server.receive_some(65536):
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    wire.lines.append(line)
                    message = jsonrpc_message_adapter.validate_json(line, by_name=False)
                    await to_client.send(SessionMessage(message))
        assert buffer == b"", "a partial line at the end of stdout"

    async def pump_out() -> None:
        async for item in outgoing:
            data = item.message.model_dump_json(by_alias=True, exclude_unset=True).encode()
            await to_server.send_all(data + b"\n")
        await to_server.aclose()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run)
        nursery.start_soon(pump_in)
        nursery.start_soon(pump_out)
        yield wire


@asynccontextmanager
async def stdio_client(sup: Supervisor, server: ServerSource) -> AsyncIterator[StdioPeer]:
    """serve_stdio on memory streams, with the official client on the other end."""
    async with stdio_wire(sup, server) as wire:
        async with ClientSession(wire.read_stream, wire.write_stream) as client:
            yield StdioPeer(client, wire.returned, wire.lines)
        await wire.returned.wait()


@pytest.mark.parametrize("how", ["close_session", "shutdown", "max-lifetime"])
async def test_close_drains_requests_in_flight(
    autojump_clock: trio.testing.MockClock, how: str
) -> None:
    send, started = sleep_channel()
    grace = 2.0
    config: dict[str, Any] = {"close_grace": grace, "shutdown_grace": grace}
    close_at = 10.0
    if how == "max-lifetime":
        config["max_lifetime"] = close_at = 50.0
    async with (
        open_supervisor(**config) as sup,
        sup.subscribe() as events,
        trio.open_nursery() as nursery,
    ):
        async with stdio_client(sup, sleep_server(send)) as peer:
            await peer.client.initialize()
            [session] = sup.active_sessions()
            assert session.transport is Transport.STDIO

            def close() -> None:
                if how == "close_session":
                    assert sup.close_session(session.id)
                else:
                    nursery.start_soon(sup.shutdown)

            await check_drain(
                peer.client,
                started,
                grace=grace,
                close_at=close_at,
                close=None if how == "max-lifetime" else close,
            )
            # serve_stdio returns once the answers are out, within the grace period.
            with trio.fail_after(grace):
                await peer.returned.wait()
        ended = await wait_for(
            events, EventKind.EXPIRED if how == "max-lifetime" else EventKind.CLOSED, session.id
        )
        assert ended.reason == {"close_session": "closed"}.get(how, how)
        assert trio.current_time() < close_at + grace
        # One answer per request: initialize, tools/list, two calls, the late ping.
        assert len(peer.lines) == 5


async def test_no_full_session_id_in_logs(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    send, started = sleep_channel()
    async with open_supervisor(close_grace=1.0, idle_timeout=30.0) as sup:
        async with stdio_client(sup, sleep_server(send)) as peer:
            await peer.client.initialize()
            [session] = sup.active_sessions()
            await check_drain(
                peer.client,
                started,
                grace=1.0,
                close_at=5.0,
                close=lambda: sup.close_session(session.id),
            )
    assert caplog.records
    for record in caplog.records:
        assert session.id not in record.getMessage(), record.getMessage()
