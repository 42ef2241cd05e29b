"""stdio transport: one supervised session over stdin/stdout (newline-delimited JSON-RPC)."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import anyio
import trio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from mcp.shared.message import SessionMessage
from mcp_types import jsonrpc_message_adapter

from .. import Transport, open_supervisor
from ._session import ServerSource, run_mcp_session

if TYPE_CHECKING:
    from .. import SessionContext, Supervisor

__all__ = ["serve_stdio"]

_MAX_LINE = 16 * 1024 * 1024


#: Sessions of a supervisor `serve_stdio` opens itself: one connection plus its state handles.
_DEFAULT_MAX_SESSIONS = 100


async def serve_stdio(
    server: ServerSource,
    *,
    supervisor: Supervisor | None = None,
    stdin: trio.abc.ReceiveStream | None = None,
    stdout: trio.abc.SendStream | None = None,
    principal: str | None = None,
    **config: Any,
) -> None:
    """Serve one MCP session over stdin/stdout; return when it ends.

    The session (transport `Transport.STDIO`) ends when the client closes stdin (reason
    ``"client-disconnected"``) or when the supervisor ends it (a deadline, ``close_session``,
    shutdown); either way this returns once the replies already produced are written out.
    Ended by the supervisor, it closes gracefully: requests in flight get the close grace
    period and those still running then get a JSON-RPC error, as does any request that
    arrives after the close began (see `run_mcp_session`).
    Handlers must not print to stdout: it carries the protocol.

    Args:
        server: The MCP server or a factory (see `ServerSource`).
        supervisor: Run the session in this supervisor. Without one, a supervisor is opened for
            the call with ``max_sessions=100`` (the connection's session and the state handles
            a 2026-07-28 client opens) and the other keywords as its config (e.g.
            ``idle_timeout=...``), and shut down when the session ends.
        stdin: Read the client's messages from this trio stream instead of the process's stdin.
        stdout: Write to this trio stream instead of the process's stdout.
        principal: Bind the session to this principal.
        **config: `supervisor.SupervisorConfig` fields, only without ``supervisor``.
    """
    if supervisor is None:
        config.setdefault("max_sessions", _DEFAULT_MAX_SESSIONS)
        async with open_supervisor(**config) as sup:
            await _serve(sup, server, stdin, stdout, principal)
        return
    if config:
        raise TypeError("supervisor config keywords are only accepted without supervisor=")
    await _serve(supervisor, server, stdin, stdout, principal)


async def _serve(
    sup: Supervisor,
    server: ServerSource,
    stdin: trio.abc.ReceiveStream | None,
    stdout: trio.abc.SendStream | None,
    principal: str | None,
) -> None:
    to_server, from_client = anyio.create_memory_object_stream[SessionMessage | Exception](16)
    to_client, from_server = anyio.create_memory_object_stream[SessionMessage](16)
    actor_done = trio.Event()
    writer_done = trio.Event()

    async def actor(ctx: SessionContext[Any]) -> None:
        try:
            await run_mcp_session(ctx, server, from_client, to_client, transport=Transport.STDIO)
        finally:
            actor_done.set()
            to_client.close()

    async def write_all() -> None:
        try:
            await _write_messages(from_server, stdout)
        finally:
            writer_done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(_read_messages, stdin, to_server)
        nursery.start_soon(write_all)
        await sup.create_session(actor, transport=Transport.STDIO, principal=principal)
        await actor_done.wait()
        await writer_done.wait()
        nursery.cancel_scope.cancel()


def _parse(line: bytes) -> SessionMessage | Exception:
    try:
        return SessionMessage(jsonrpc_message_adapter.validate_json(line, by_name=False))
    except Exception as exc:
        return exc


async def _read_messages(
    stdin: trio.abc.ReceiveStream | None, sink: MemoryObjectSendStream[SessionMessage | Exception]
) -> None:
    async with sink:
        if stdin is None:
            buffer = sys.stdin.buffer
            while True:
                # Abandoned on cancel: a thread blocked in read() cannot be interrupted, and the
                # process is leaving when the session has ended anyway.
                line = await trio.to_thread.run_sync(buffer.readline, abandon_on_cancel=True)
                if not line:
                    return
                if line.strip():
                    await sink.send(_parse(line))
        pending = b""
        while True:
            chunk = await stdin.receive_some(65536)
            if not chunk:
                if pending.strip():
                    await sink.send(_parse(pending))
                return
            pending += chunk
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                if line.strip():
                    await sink.send(_parse(line))
            if len(pending) > _MAX_LINE:
                await sink.send(ValueError("stdio message exceeds 16 MiB without a newline"))
                pending = b""


async def _write_messages(
    source: MemoryObjectReceiveStream[SessionMessage], stdout: trio.abc.SendStream | None
) -> None:
    async with source:
        async for item in source:
            data = item.message.model_dump_json(by_alias=True, exclude_unset=True).encode() + b"\n"
            if stdout is None:
                await trio.to_thread.run_sync(_write_stdout, data)
            else:
                await stdout.send_all(data)


def _write_stdout(data: bytes) -> None:
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()
