"""In-process transport: a client/server pair over memory streams, for tests and embedding."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, final

import attrs
import trio
from mcp.client.session import ClientSession
from mcp.shared._stream_protocols import ReadStream, WriteStream
from mcp.shared.memory import create_client_server_memory_streams
from mcp.shared.message import SessionMessage
from mcp_types import Implementation

from .. import Transport
from ._session import ServerSource, run_mcp_session

if TYPE_CHECKING:
    from .. import Session, SessionContext, Supervisor

__all__ = ["InProcessConnection", "open_in_process_client", "open_in_process_streams"]


@final
@attrs.frozen
class InProcessConnection:
    """The client side of an in-process session, from `open_in_process_streams`.

    Attributes:
        read_stream: Messages from the server (hand it to ``mcp.ClientSession``).
        write_stream: Messages to the server.
        session: The supervisor's view of the session serving this client.
    """

    read_stream: ReadStream[SessionMessage | Exception]
    write_stream: WriteStream[SessionMessage]
    session: Session

    @property
    def session_id(self) -> str:
        return self.session.id


@asynccontextmanager
async def open_in_process_streams(
    supervisor: Supervisor,
    server: ServerSource,
    *,
    principal: str | None = None,
    metadata: dict[str, Any] | None = None,
    wait: bool = True,
) -> AsyncIterator[InProcessConnection]:
    """Open a supervised in-process MCP session and yield the client's end of it.

    The session (transport `Transport.IN_PROCESS`) runs the SDK's protocol loop over anyio memory
    streams inside its actor, like any other transport: it is subject to the supervisor's
    capacity, deadlines and events. Leaving the block closes the client's write stream (the
    server sees EOF and the session closes with reason ``"client-disconnected"``) and waits
    until the session's actor has finished. When the supervisor ends the session instead (a
    deadline, ``close_session``, shutdown), it closes gracefully (see `run_mcp_session`) and
    then the client's read stream ends.

    Args:
        supervisor: The supervisor to run the session in.
        server: The MCP server or a per-session factory (see `ServerSource`).
        principal: Bind the session to this principal.
        metadata: Initial session metadata.
        wait: At capacity, wait for a slot (`Supervisor.create_session`) instead of raising
            `supervisor.CapacityError` (`Supervisor.create_session_nowait`).
    """
    actor_started = False
    actor_done = trio.Event()
    async with create_client_server_memory_streams() as (client_streams, server_streams):
        client_read, client_write = client_streams
        server_read, server_write = server_streams

        async def actor(ctx: SessionContext[Any]) -> None:
            nonlocal actor_started
            actor_started = True
            try:
                await run_mcp_session(
                    ctx, server, server_read, server_write, transport=Transport.IN_PROCESS
                )
            finally:
                actor_done.set()

        if wait:
            session = await supervisor.create_session(
                actor, transport=Transport.IN_PROCESS, principal=principal, metadata=metadata
            )
        else:
            session = supervisor.create_session_nowait(
                actor, transport=Transport.IN_PROCESS, principal=principal, metadata=metadata
            )
        try:
            yield InProcessConnection(client_read, client_write, session)
        finally:
            await client_write.aclose()
            if actor_started:
                await actor_done.wait()


@asynccontextmanager
async def open_in_process_client(
    supervisor: Supervisor,
    server: ServerSource,
    *,
    client_info: Implementation | None = None,
    read_timeout_seconds: float | None = None,
    principal: str | None = None,
    metadata: dict[str, Any] | None = None,
    wait: bool = True,
) -> AsyncIterator[ClientSession]:
    """Yield an official ``mcp.ClientSession`` connected in-process and already initialized.

    Built on `open_in_process_streams` (see there for the session's life); the handshake is the
    ``initialize`` era, so the session is READY with the client's info when this yields. The
    session id is ``client.session_id``? No: ask the supervisor (``sup.active_sessions()``) or
    use `open_in_process_streams`, which yields it.
    """
    async with (
        open_in_process_streams(
            supervisor, server, principal=principal, metadata=metadata, wait=wait
        ) as connection,
        ClientSession(
            connection.read_stream,
            connection.write_stream,
            read_timeout_seconds=read_timeout_seconds,
            client_info=client_info,
        ) as client,
    ):
        await client.initialize()
        # A round trip after notifications/initialized: the session is READY when this yields.
        await client.send_ping()
        yield client
