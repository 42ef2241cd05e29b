"""Run ``python -m supervisor serve`` as a subprocess, as an operator does, for tests.

`serve_process` starts it on a free loopback port (``--port 0``), reads what it prints while it
runs (stdout and stderr are drained into buffers, so a chatty server never blocks on a full
pipe), waits for the ``serving MCP on URL`` line and stops the process by its PID when the
block ends, whatever happened. `hanging_server` is an ``--app`` for shutdown tests: its ``hang``
tool never returns on its own.

Usage::

    async with serve_process("--app", "tests._serve:hanging_server") as serve:
        ...  # serve.url, serve.stdout, await serve.read_until(b"..."), serve.pid
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any

import mcp_types as types
import trio
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel.server import Server

REPO = Path(__file__).resolve().parents[1]

#: What ``serve`` prints once its MCP endpoint is listening, followed by the URL.
URL_LINE = "serving MCP on"
#: What ``serve --stdio`` prints on stderr once it serves.
STDIO_LINE = "serving MCP over stdio"


class ServeProcess:
    """A running ``serve`` subprocess and what it has printed so far."""

    def __init__(self, process: trio.Process) -> None:
        self.process = process
        self.stdout = b""
        self.stderr = b""
        self.url = ""
        self._changed = trio.Event()
        self._stdout_closed = False
        self._stderr_closed = False

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def output(self) -> str:
        """Everything printed on stdout so far, decoded."""
        return self.stdout.decode(errors="replace")

    def line_after(self, prefix: str) -> str:
        """The last word of the first stdout line starting with ``prefix`` (a URL, usually)."""
        for line in self.output.splitlines():
            if line.strip().startswith(prefix):
                return line.split()[-1]
        raise AssertionError(f"no line starting with {prefix!r} in {self.output!r}")

    async def read_until(self, marker: bytes, *, stderr: bool = False) -> None:
        """Wait until stdout (or stderr) contains ``marker``; fails if stdout closes first."""
        while marker not in (self.stderr if stderr else self.stdout):
            if self._stderr_closed if stderr else self._stdout_closed:
                raise AssertionError(
                    f"serve ended without printing {marker!r}; stdout {self.output!r}, "
                    f"stderr {self.stderr.decode(errors='replace')[-2000:]!r}"
                )
            await self._changed.wait()

    async def send(self, message: dict[str, Any]) -> None:
        """Write one JSON-RPC message on the process's stdin (``stdio=True`` only)."""
        assert self.process.stdin is not None
        await self.process.stdin.send_all(json.dumps(message).encode() + b"\n")

    def signal(self, signum: signal.Signals) -> None:
        self.process.send_signal(signum)

    async def wait(self) -> int:
        """Wait for the process to exit (and for its output to be read); its exit status."""
        code = await self.process.wait()
        await self.read_until_closed()
        return code

    async def read_until_closed(self) -> None:
        while not self._stdout_closed or not self._stderr_closed:
            await self._changed.wait()

    async def _pump(self, stream: Any, name: str) -> None:
        with suppress(trio.ClosedResourceError, trio.BrokenResourceError):
            while chunk := await stream.receive_some(65536):
                setattr(self, name, getattr(self, name) + chunk)
                self._wake()
        setattr(self, f"_{name}_closed", True)
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()


@asynccontextmanager
async def serve_process(
    *args: str,
    env: Mapping[str, str] | None = None,
    ready: str | None = URL_LINE,
    stdio: bool = False,
) -> AsyncIterator[ServeProcess]:
    """Start ``python -m supervisor serve --port 0 ARGS...`` and yield it once it is listening.

    ``ready``: the stdout text to wait for before yielding (``None``: do not wait; the URL
    line sets `ServeProcess.url`). With ``stdio``, ``--stdio`` is passed, stdin is a pipe
    (`ServeProcess.send`) and ``ready`` is looked for on stderr, where the operator's messages
    then go (default: ``serving MCP over stdio``). ``env`` replaces the environment
    (``PYTHONUNBUFFERED`` is always set). The process is killed by its PID when the block ends
    if it is still running.
    """
    environment = {**(os.environ if env is None else env), "PYTHONUNBUFFERED": "1"}
    if stdio:
        args = ("--stdio", *args)
        if ready == URL_LINE:
            ready = STDIO_LINE
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "supervisor", "serve", "--port", "0", *args],
        cwd=str(REPO),
        stdin=subprocess.PIPE if stdio else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=environment,
    )
    serve = ServeProcess(process)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve._pump, process.stdout, "stdout")
            nursery.start_soon(serve._pump, process.stderr, "stderr")
            if ready is not None:
                await serve.read_until(ready.encode(), stderr=stdio)
                if ready == URL_LINE:
                    serve.url = serve.line_after(URL_LINE)
            try:
                yield serve
            finally:
                nursery.cancel_scope.cancel()
    finally:
        if process.returncode is None:
            with suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGKILL)
            with trio.CancelScope(shield=True):
                await process.wait()


#: What `hanging_server`'s ``hang`` tool prints on stderr when it starts waiting.
HANG_STARTED = "hang: started"


async def verify_token(token: str) -> str | None:
    """An ``--auth`` verifier for tests: ``alice-token`` is alice, ``bob-token`` bob."""
    await trio.lowlevel.checkpoint()
    return {"alice-token": "alice", "bob-token": "bob"}.get(token)


def hanging_server() -> Server[Any]:
    """An MCP server whose ``hang`` tool waits forever (until cancelled); ``echo`` answers.

    ``hang_shielded`` waits forever and cannot be cancelled at all. Both print `HANG_STARTED`
    on stderr first, so a test knows the call is in flight.
    """
    tools = [
        types.Tool(name="hang", input_schema={"type": "object"}),
        types.Tool(name="hang_shielded", input_schema={"type": "object"}),
        types.Tool(
            name="echo",
            input_schema={"type": "object", "properties": {"text": {"type": "string"}}},
        ),
    ]

    async def list_tools(
        ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        return types.ListToolsResult(tools=list(tools))

    async def call_tool(
        ctx: ServerRequestContext[Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        if params.name == "hang":
            print(HANG_STARTED, file=sys.stderr, flush=True)
            await trio.sleep_forever()
        if params.name == "hang_shielded":
            print(HANG_STARTED, file=sys.stderr, flush=True)
            with trio.CancelScope(shield=True):
                await trio.sleep_forever()
        text = str((params.arguments or {}).get("text", ""))
        return types.CallToolResult(content=[types.TextContent(text=text)])

    return Server("hanging", on_list_tools=list_tools, on_call_tool=call_tool)


# -- a bare Streamable HTTP client, for tests that set their own headers ----------------------

INITIALIZE: dict[str, Any] = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-11-25",
        "capabilities": {},
        "clientInfo": {"name": "tests._serve", "version": "0"},
    },
}
INITIALIZED: dict[str, Any] = {"jsonrpc": "2.0", "method": "notifications/initialized"}
ACCEPT: dict[str, str] = {"accept": "application/json, text/event-stream"}


def rpc_message(body: str) -> dict[str, Any]:
    """The JSON-RPC message of a response body: plain JSON, or the last SSE ``data:`` line."""
    text = body.strip()
    if text.startswith("{"):
        message: dict[str, Any] = json.loads(text)
        return message
    data = [line[5:].strip() for line in text.splitlines() if line.startswith("data:")]
    data = [item for item in data if item]
    assert data, f"no JSON-RPC message in {body[:500]!r}"
    last: dict[str, Any] = json.loads(data[-1])
    return last


def tool_call(request_id: int, name: str, **arguments: Any) -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "id": request_id,
        "method": "tools/call",
        "params": {"name": name, "arguments": arguments},
    }
