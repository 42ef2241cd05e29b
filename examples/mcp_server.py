"""Your own MCP server on the supervisor: a template to copy.

What it shows:

* an ``MCPServer`` (the official SDK's decorator API) whose tools keep **per-session state** in
  ``current_session().state``, a dict owned by the session actor: two clients never see each
  other's notes, and the notes end with the session;
* handler code that is plain trio/anyio (``await trio.sleep``), never asyncio;
* the supervisor owning the sessions: capacity (``max_sessions``), an idle deadline, an init
  deadline for clients that never finish the handshake, and the ``Mcp-Session-Id`` being the
  supervisor's session id;
* a subscriber printing the sessions' lifecycle events (created, initialized, closed, expired);
* serving it over Streamable HTTP + WebSocket (``serve_http``) or over stdio (``serve_stdio``);
* a graceful stop on Ctrl-C with a summary.

Run it::

    python examples/mcp_server.py                 # http://127.0.0.1:8000/mcp
    python examples/mcp_server.py --port 0        # any free port
    python examples/mcp_server.py --stdio         # one session over stdin/stdout

or let the command line serve the same server::

    python -m supervisor serve --app examples.mcp_server:build_server

Then connect any MCP client, e.g. the SDK's ``mcp.Client("http://127.0.0.1:8000/mcp",
mode="legacy")`` and call ``add_note`` / ``list_notes`` / ``wait``.
"""

from __future__ import annotations

import argparse
import signal
import sys
from functools import partial

import trio
from mcp.server.mcpserver import MCPServer

from supervisor import Event, Lagged, Supervisor, open_supervisor
from supervisor.mcp import current_session, serve_http, serve_stdio


def build_server() -> MCPServer:
    """The MCP server. One instance serves every session: state lives in the session.

    (Pass ``build_server`` itself, a zero-argument factory, instead of ``build_server()`` to get
    a fresh server object per session, for state kept in closures.)
    """
    # MCPServer configures the root logger (a rich handler at log_level) when it is built.
    server = MCPServer(
        "notes",
        instructions="Per-session notes: add_note, list_notes, wait.",
        log_level="WARNING",
    )

    @server.tool()
    async def add_note(text: str) -> int:
        """Add a note to this session's notes; returns how many there are."""
        notes: list[str] = current_session().state.setdefault("notes", [])
        notes.append(text)
        return len(notes)

    @server.tool()
    async def list_notes() -> list[str]:
        """This session's notes, oldest first."""
        notes: list[str] = current_session().state.get("notes", [])
        return list(notes)

    @server.tool()
    async def wait(seconds: float) -> str:
        """Sleep (trio), then answer. The session does not idle out while this runs."""
        await trio.sleep(min(seconds, 60.0))
        return f"waited {seconds} s in session {current_session().id[:8]}"

    return server


async def print_events(sup: Supervisor) -> None:
    async with sup.subscribe() as events:
        async for item in events:
            if isinstance(item, Lagged):
                print(f"(missed {item.missed} events)", file=sys.stderr)
            elif isinstance(item, Event) and item.new_state is None:
                detail = f" ({item.reason})" if item.reason else ""
                transport = item.session.transport.value
                print(
                    f"{item.kind.value:>13} {item.session_id[:8]} {transport}{detail}",
                    file=sys.stderr,
                )


async def main(port: int, stdio: bool) -> None:
    async with open_supervisor(max_sessions=50, idle_timeout=600.0, init_timeout=30.0) as sup:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(print_events, sup)
            if stdio:
                # stdout carries the protocol: everything else goes to stderr.
                await serve_stdio(build_server(), supervisor=sup)
            else:
                stop = trio.Event()

                async def on_signal() -> None:
                    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                        async for _ in signals:
                            stop.set()
                            return

                nursery.start_soon(on_signal)
                async with trio.open_nursery() as http:
                    url = await http.start(
                        partial(
                            serve_http, sup, build_server(), port=port, shutdown_trigger=stop.wait
                        )
                    )
                    print(f"serving MCP on {url} (Ctrl-C to stop)", file=sys.stderr)
                    await stop.wait()
                    # hypercorn stops listening; closing the sessions lets open streams drain.
                    await sup.shutdown()
            await sup.shutdown()
            nursery.cancel_scope.cancel()
        stats = sup.statistics()
        print(
            f"done: {stats.created_total} sessions, {stats.expired_total} expired",
            file=sys.stderr,
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--stdio", action="store_true")
    args = parser.parse_args()
    trio.run(main, args.port, args.stdio)
