"""End-to-end benchmark over Streamable HTTP on loopback: our server beside the SDK's manager.

Two roles, each its own process:

``python -m bench.http serve --kind KIND``
    Serve the demo MCP server (tools ``echo``, ``counter``, ``open_session``, ``close_session``:
    `supervisor.mcp.create_demo_server`) on 127.0.0.1 with hypercorn's trio worker, one config
    for every kind (`_hypercorn_config`), one GC setting for every kind (`GC_THRESHOLD`). Kinds:

    * ``ours`` / ``ours-json``: `supervisor.mcp.serve_http` inside `open_supervisor`, SSE or
      ``json_response=True`` (both eras: a 2026-07-28 request goes to its stateless path, a
      ``session`` argument to a state handle);
    * ``sdk`` / ``sdk-json``: the official SDK's ``StreamableHTTPSessionManager`` (SSE or
      ``json_response=True``), DNS-rebinding protection on as in ours;
    * ``sdk-stateless`` / ``sdk-stateless-json``: the same manager with ``stateless=True`` (a
      2026-07-28 request goes to the SDK's single-exchange entry, ``handle_modern_request``);
    * ``ceiling``: a bare ASGI app answering fixed JSON-RPC results (echoing the text argument),
      as a one-event SSE response on ``/mcp`` and as JSON on ``/json``; no checks, no state.

    Prints ``READY {json}`` (url, pid, GC thresholds) once listening. Reads commands from stdin,
    one a line: ``profile-on``, ``profile-off PATH`` (cProfile of the trio thread, written to
    PATH, answered ``PROFILED``); serves until stdin closes.
``python -m bench.http load --url URL --mode MODE --count N``
    The load generator (asyncio, raw HTTP/1.1 keep-alive sockets, 127.0.0.1 only, bounded in
    count and time). Modes: ``sessions``: N x (initialize, notifications/initialized, tools/call
    echo, DELETE). ``calls``: N tools/call echo spread over sessions opened first (not timed).
    ``open``: open N sessions and leave them idle (the memory figure). ``modern``: N 2026-07-28
    tools/call echo (``MCP-Protocol-Version: 2026-07-28``, no initialize, no session).
    ``modern-handle``: each connection calls ``open_session`` once (not timed), then N in all
    2026-07-28 tools/call ``counter`` with its handle as ``session`` (each answer's count checked:
    1, 2, 3, ... per handle); the handles are closed afterwards (not timed). Prints one JSON
    document.

`run_http` (used by `bench.run`) starts every server, drives them in alternating order (A B C,
C B A, ...), then profiles one calls run per server, then measures memory per idle session in
fresh server processes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, MutableMapping
from contextlib import asynccontextmanager, suppress
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ._util import emit, median, percentile, rss_bytes

HOST = "127.0.0.1"
PROTOCOL_VERSION = "2025-11-25"
MODERN_VERSION = "2026-07-28"
IDLE = 3600.0
#: The young-generation threshold every server kind runs with (what `serve_http` applies to ours
#: by default; the bench applies it itself to every kind and tells `serve_http` to leave it).
GC_THRESHOLD = 20_000
KINDS = (
    "ours",
    "ours-json",
    "sdk",
    "sdk-json",
    "sdk-stateless",
    "sdk-stateless-json",
    "ceiling",
)
MODES = ("sessions", "calls", "open", "modern", "modern-handle")

# -- servers -----------------------------------------------------------------------------------


def _hypercorn_config(port: int) -> Any:
    """What `serve_http` configures for ours (keep-alive 5 s, backlog 1024, no read timeout)."""
    from hypercorn.config import Config

    config = Config()
    config.bind = [f"{HOST}:{port}"]
    config.accesslog = None
    config.errorlog = logging.getLogger("bench.http")
    config.graceful_timeout = 1.0
    config.keep_alive_timeout = 5.0
    config.backlog = 1024
    config.read_timeout = None
    return config


def _apply_gc() -> None:
    import gc

    gc.set_threshold(GC_THRESHOLD, *gc.get_threshold()[1:])


Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


async def _lifespan(receive: Receive, send: Send, enter: Any = None) -> None:
    await receive()  # lifespan.startup
    if enter is None:
        await send({"type": "lifespan.startup.complete"})
        await receive()  # lifespan.shutdown
    else:
        async with enter:
            await send({"type": "lifespan.startup.complete"})
            await receive()  # lifespan.shutdown
    await send({"type": "lifespan.shutdown.complete"})


async def _not_found(send: Send) -> None:
    await send({"type": "http.response.start", "status": 404, "headers": []})
    await send({"type": "http.response.body", "body": b"not found"})


class _SdkApp:
    """The SDK's StreamableHTTPSessionManager as a bare ASGI app (lifespan enters ``run()``)."""

    def __init__(self, manager: Any, path: str) -> None:
        self.manager = manager
        self.path = path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send, self.manager.run())
        elif scope["type"] == "http" and scope["path"] == self.path:
            await self.manager.handle_request(scope, receive, send)
        elif scope["type"] == "http":
            await _not_found(send)


_SSE_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
_JSON_HEADERS = [(b"content-type", b"application/json")]
_CEILING_INIT = {
    "protocolVersion": PROTOCOL_VERSION,
    "capabilities": {"tools": {"listChanged": False}},
    "serverInfo": {"name": "ceiling", "version": "0"},
}


class _CeilingApp:
    """The ceiling: fixed JSON-RPC results, no checks, no sessions kept, no protocol layer.

    ``/mcp`` answers a handshake-era request as a one-event SSE response, ``/json`` as JSON; a
    2026-07-28 request (no session) gets JSON on both, as the SDK's entry answers a call that
    completes without notifications. initialize gets an ``Mcp-Session-Id``, a notification
    202, DELETE 200; a tools/call result echoes ``arguments.text`` (so the load generator's
    check holds), anything else gets an empty result.
    """

    def __init__(self) -> None:
        self.sessions = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http" or scope["path"] not in ("/mcp", "/json"):
            await _not_found(send)
            return
        method = scope["method"]
        if method == "DELETE":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        request = json.loads(body)
        if "id" not in request:
            await send({"type": "http.response.start", "status": 202, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            return
        headers: list[tuple[bytes, bytes]] = []
        modern = False
        for key, value in scope["headers"]:
            if key == b"mcp-protocol-version":
                modern = value == MODERN_VERSION.encode()
        result: dict[str, Any]
        if request["method"] == "initialize":
            self.sessions += 1
            headers.append((b"mcp-session-id", b"%032x" % self.sessions))
            result = _CEILING_INIT
        elif request["method"] == "tools/call":
            text = (request.get("params") or {}).get("arguments", {}).get("text", "")
            result = {"content": [{"type": "text", "text": text}], "isError": False}
        else:
            result = {}
        data = json.dumps({"jsonrpc": "2.0", "id": request["id"], "result": result}).encode()
        if modern or scope["path"] == "/json":
            headers += [*_JSON_HEADERS, (b"content-length", str(len(data)).encode())]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": data})
            return
        await send(
            {"type": "http.response.start", "status": 200, "headers": _SSE_HEADERS + headers}
        )
        event = b"event: message\r\ndata: " + data + b"\r\n\r\n"
        await send({"type": "http.response.body", "body": event, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


class _Control:
    """Commands on stdin (profile on/off); its end is the server's end."""

    def __init__(self) -> None:
        import trio

        self.stopping = trio.Event()
        self.profiler: Any = None

    def handle(self, line: str) -> None:
        import cProfile

        command, _, arg = line.strip().partition(" ")
        if command == "profile-on":
            self.profiler = cProfile.Profile()
            self.profiler.enable()
        elif command == "profile-off" and self.profiler is not None:
            self.profiler.disable()
            self.profiler.dump_stats(arg)
            self.profiler = None
            print("PROFILED", flush=True)

    async def run(self) -> None:
        import trio

        token = trio.lowlevel.current_trio_token()

        def read() -> None:
            for line in sys.stdin:
                trio.from_thread.run_sync(self.handle, line, trio_token=token)

        await trio.to_thread.run_sync(read, abandon_on_cancel=True)
        self.stopping.set()


def _ready(url: str) -> None:
    import gc

    info = {"url": url, "pid": os.getpid(), "gc_threshold": gc.get_threshold()}
    info["gc_frozen"] = gc.get_freeze_count()
    print("READY " + json.dumps(info), flush=True)


async def _serve(kind: str, port: int) -> None:
    import trio
    from hypercorn.trio import serve

    from supervisor import open_supervisor
    from supervisor.mcp import create_demo_server, serve_http

    _apply_gc()  # the same for every kind; serve_http is told to leave the collector alone
    control = _Control()
    path = "/mcp"
    if kind.startswith("ours"):
        async with (
            open_supervisor(max_sessions=1_000_000, idle_timeout=IDLE) as sup,
            trio.open_nursery() as nursery,
        ):
            nursery.start_soon(control.run)
            url = await nursery.start(
                partial(
                    serve_http,
                    sup,
                    create_demo_server(),
                    host=HOST,
                    port=port,
                    path=path,
                    json_response=kind == "ours-json",
                    gc_threshold=None,
                )
            )
            _ready(url)
            await control.stopping.wait()
            nursery.cancel_scope.cancel()
        return
    if kind == "ceiling":
        app: Any = _CeilingApp()
    else:
        from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
        from mcp.server.transport_security import TransportSecuritySettings

        loopback = ["127.0.0.1", "127.0.0.1:*", "localhost", "localhost:*", "[::1]", "[::1]:*"]
        stateless = kind.startswith("sdk-stateless")
        manager = StreamableHTTPSessionManager(
            app=create_demo_server(),
            json_response=kind.endswith("-json"),
            stateless=stateless,
            session_idle_timeout=None if stateless else IDLE,
            max_sessions=None,
            security_settings=TransportSecuritySettings(
                enable_dns_rebinding_protection=True,
                allowed_hosts=loopback,
                allowed_origins=[f"http://{h}" for h in loopback],
            ),
        )
        app = _SdkApp(manager, path)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(control.run)
        binds = await nursery.start(
            partial(serve, app, _hypercorn_config(port), shutdown_trigger=control.stopping.wait)
        )
        _ready(f"{binds[0]}{path}")


# -- load generator ----------------------------------------------------------------------------


class HttpError(Exception):
    pass


class _Conn:
    """One keep-alive HTTP/1.1 connection with just enough parsing for these responses."""

    def __init__(self, host: str, port: int, path: str) -> None:
        self.host, self.port, self.path = host, port, path
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with suppress(OSError):
                await self.writer.wait_closed()
            self.writer = None

    async def request(
        self, method: str, body: dict[str, Any] | None, extra: Iterable[str] = ()
    ) -> tuple[int, dict[str, str], bytes]:
        if self.writer is None:
            await self.open()
        assert self.reader is not None and self.writer is not None
        payload = b"" if body is None else json.dumps(body).encode()
        lines = [
            f"{method} {self.path} HTTP/1.1",
            f"Host: {self.host}:{self.port}",
            "Accept: application/json, text/event-stream",
            f"Content-Length: {len(payload)}",
        ]
        if body is not None:
            lines.append("Content-Type: application/json")
        lines.extend(extra)
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + payload)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        status = int(status_line.split(" ", 2)[1])
        headers: dict[str, str] = {}
        for line in header_lines:
            if line:
                key, _, value = line.partition(":")
                headers[key.strip().lower()] = value.strip()
        if "content-length" in headers:
            data = await self.reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
                chunk = await self.reader.readexactly(size + 2)
                if size == 0:
                    break
                chunks.append(chunk[:-2])
            data = b"".join(chunks)
        elif status in (202, 204, 304) or status < 200:
            data = b""
        else:
            data = await self.reader.read()
            await self.close()
        if headers.get("connection", "").lower() == "close":
            await self.close()
        return status, headers, data


def _session_headers(session: str) -> list[str]:
    return [f"Mcp-Session-Id: {session}", f"MCP-Protocol-Version: {PROTOCOL_VERSION}"]


def _modern_headers(tool: str) -> list[str]:
    return [
        f"MCP-Protocol-Version: {MODERN_VERSION}",
        "Mcp-Method: tools/call",
        f"Mcp-Name: {tool}",
    ]


def _rpc(method: str, params: dict[str, Any] | None = None, id: int | None = 1) -> dict[str, Any]:
    msg: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
    if params is not None:
        msg["params"] = params
    if id is not None:
        msg["id"] = id
    return msg


_INIT = _rpc(
    "initialize",
    {
        "protocolVersion": PROTOCOL_VERSION,
        "capabilities": {},
        "clientInfo": {"name": "bench", "version": "0"},
    },
)
_INITIALIZED = _rpc("notifications/initialized", id=None)
_ENVELOPE = {
    "io.modelcontextprotocol/protocolVersion": MODERN_VERSION,
    "io.modelcontextprotocol/clientInfo": {"name": "bench", "version": "0"},
    "io.modelcontextprotocol/clientCapabilities": {},
}
_COUNT = re.compile(rb'"count"\s*:\s*(\d+)')
_HANDLE = re.compile(rb'"session"\s*:\s*"([^"]+)"')


def _call(i: int) -> dict[str, Any]:
    return _rpc("tools/call", {"name": "echo", "arguments": {"text": f"hi{i}"}}, id=i + 2)


def _modern_call(i: int, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
    params = {"name": tool, "arguments": arguments, "_meta": _ENVELOPE}
    return _rpc("tools/call", params, id=i + 2)


async def _open_session(conn: _Conn) -> str:
    status, headers, body = await conn.request("POST", _INIT)
    if status != 200 or "mcp-session-id" not in headers:
        raise HttpError(f"initialize: {status} {body[:200]!r}")
    session = headers["mcp-session-id"]
    status, _, body = await conn.request("POST", _INITIALIZED, _session_headers(session))
    if status != 202:
        raise HttpError(f"initialized: {status} {body[:200]!r}")
    return session


async def _tool_call(conn: _Conn, session: str, i: int) -> None:
    status, _, body = await conn.request("POST", _call(i), _session_headers(session))
    if status != 200 or f'"hi{i}"'.encode() not in body:
        raise HttpError(f"tools/call: {status} {body[:200]!r}")


async def _modern_echo(conn: _Conn, i: int) -> None:
    msg = _modern_call(i, "echo", {"text": f"hi{i}"})
    status, _, body = await conn.request("POST", msg, _modern_headers("echo"))
    if status != 200 or f'"hi{i}"'.encode() not in body:
        raise HttpError(f"2026 tools/call echo: {status} {body[:200]!r}")


async def _modern_tool(conn: _Conn, i: int, tool: str, arguments: dict[str, Any]) -> bytes:
    msg = _modern_call(i, tool, arguments)
    status, _, body = await conn.request("POST", msg, _modern_headers(tool))
    if status != 200 or b'"isError":true' in body.replace(b" ", b""):
        raise HttpError(f"2026 tools/call {tool}: {status} {body[:200]!r}")
    return body


async def _open_handle(conn: _Conn) -> str:
    body = await _modern_tool(conn, 0, "open_session", {})
    found = _HANDLE.search(body)
    if found is None:
        raise HttpError(f"open_session: no handle in {body[:200]!r}")
    return found.group(1).decode()


async def _delete(conn: _Conn, session: str) -> None:
    status, _, body = await conn.request("DELETE", None, _session_headers(session))
    if status not in (200, 204):
        raise HttpError(f"DELETE: {status} {body[:200]!r}")


@asynccontextmanager
async def _connections(url: str, n: int) -> AsyncIterator[list[_Conn]]:
    parts = urlsplit(url)
    if parts.hostname != HOST:
        raise ValueError("the load generator only talks to 127.0.0.1")
    conns = [_Conn(HOST, parts.port or 80, parts.path) for _ in range(n)]
    try:
        yield conns
    finally:
        for conn in conns:
            await conn.close()


async def _load(
    url: str,
    mode: str,
    count: int,
    concurrency: int,
    limit: float,
    mark: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Drive one run; ``mark("start")`` and ``mark("end")`` bracket the timed part."""
    latencies: list[float] = []
    errors: list[str] = []
    next_index = 0

    def take() -> int | None:
        nonlocal next_index
        if next_index >= count:
            return None
        next_index += 1
        return next_index - 1

    async with _connections(url, concurrency) as conns:
        sessions: list[str] = []
        handles: list[str] = []
        counts = [0] * len(conns)
        if mode == "calls":
            # Open the sessions first (not timed): two per connection.
            async def open_two(conn: _Conn) -> list[str]:
                return [await _open_session(conn), await _open_session(conn)]

            for pair in await asyncio.gather(*(open_two(c) for c in conns)):
                sessions.extend(pair)
        elif mode == "modern-handle":  # one handle per connection (not timed)
            handles = list(await asyncio.gather(*(_open_handle(c) for c in conns)))

        async def worker(w: int, conn: _Conn) -> None:
            while (i := take()) is not None:
                t0 = time.perf_counter()
                try:
                    if mode == "sessions":
                        session = await _open_session(conn)
                        await _tool_call(conn, session, i)
                        await _delete(conn, session)
                    elif mode == "calls":
                        await _tool_call(conn, sessions[(w * 2 + i) % len(sessions)], i)
                    elif mode == "modern":
                        await _modern_echo(conn, i)
                    elif mode == "modern-handle":
                        body = await _modern_tool(conn, i, "counter", {"session": handles[w]})
                        counts[w] += 1
                        found = _COUNT.search(body)
                        if found is None or int(found.group(1)) != counts[w]:
                            raise HttpError(f"counter: expected {counts[w]}: {body[:200]!r}")
                    else:
                        sessions.append(await _open_session(conn))
                except (HttpError, OSError, asyncio.IncompleteReadError) as exc:
                    errors.append(repr(exc)[:300])
                    await conn.close()
                latencies.append(time.perf_counter() - t0)

        if mark is not None:
            mark("start")
        t0 = time.perf_counter()
        cpu0 = time.process_time()
        await asyncio.wait_for(
            asyncio.gather(*(worker(w, c) for w, c in enumerate(conns))), timeout=limit
        )
        elapsed = time.perf_counter() - t0
        cpu = time.process_time() - cpu0
        if mark is not None:
            mark("end")
        if mode == "calls":
            for j, session in enumerate(sessions):
                await _delete(conns[j % len(conns)], session)
        for j, handle in enumerate(handles):
            await _modern_tool(conns[j], 1, "close_session", {"session": handle})
    done = len(latencies) - len(errors)
    return {
        "mode": mode,
        "count": count,
        "concurrency": concurrency,
        "elapsed": elapsed,
        "ok": done,
        "errors": len(errors),
        "first_errors": errors[:3],
        "per_second": done / elapsed if elapsed > 0 else 0.0,
        "loadgen_cpu_fraction": cpu / elapsed if elapsed > 0 else 0.0,
        "latency_p50": percentile(latencies, 50),
        "latency_p99": percentile(latencies, 99),
    }


# -- orchestration (used by bench.run) ---------------------------------------------------------


class Server:
    """A benchmark server subprocess (``serve --kind``); stops when its stdin closes."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.info: dict[str, Any] = {}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.http", "serve", "--kind", kind],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def wait_ready(self) -> Server:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        if not line.startswith("READY "):
            self.stop()
            raise RuntimeError(f"{self.kind} server did not start: {line!r}")
        self.info = json.loads(line.removeprefix("READY "))
        return self

    @property
    def url(self) -> str:
        url: str = self.info["url"]
        return url

    def rss(self) -> int:
        return rss_bytes(self.proc.pid)

    def command(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def profile(self, path: Path, run: Callable[[], Any], profiler: str = "cProfile") -> Any:
        """``run()`` with the server profiled (cProfile in its trio thread, or py-spy from
        outside, sampling at `PYSPY_RATE`); the profile goes to ``path``."""
        if profiler == "py-spy":
            return self._py_spy(path, run)
        self.command("profile-on")
        try:
            return run()
        finally:
            self.command(f"profile-off {path}")
            assert self.proc.stdout is not None
            answer = self.proc.stdout.readline().strip()
            if answer != "PROFILED":
                raise RuntimeError(f"{self.kind} server: no profile written ({answer!r})")

    def _py_spy(self, path: Path, run: Callable[[], Any]) -> Any:
        exe = py_spy()
        assert exe is not None
        args = ["record", "--pid", str(self.proc.pid), "--rate", str(PYSPY_RATE), "--format"]
        args += ["raw", "--output", str(path), "--nonblocking", "--full-filenames"]
        spy = subprocess.Popen(
            [exe, *args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            time.sleep(0.25)  # attached before the run starts
            return run()
        finally:
            spy.send_signal(signal.SIGINT)  # by its PID: it writes the profile and exits
            try:
                _, err = spy.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                spy.kill()
                spy.wait()
                raise
            if not path.exists():
                raise RuntimeError(f"py-spy wrote no profile of {self.kind}: {err[-500:]}")

    def stop(self) -> None:
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            with suppress(BrokenPipeError):
                self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()  # by its PID
            self.proc.wait()


def start_servers(kinds: Iterable[str]) -> dict[str, Server]:
    """Start the servers in parallel (their imports overlap), then wait for each to listen."""
    servers: dict[str, Server] = {}
    try:
        for kind in kinds:
            servers[kind] = Server(kind)
        for server in servers.values():
            server.wait_ready()
    except BaseException:
        for server in servers.values():
            server.stop()
        raise
    return servers


def load(
    url: str,
    mode: str,
    count: int,
    concurrency: int,
    limit: float,
    server_pid: int | None = None,
) -> dict[str, Any]:
    """Run the load generator (in this process: the orchestrator does nothing else meanwhile).

    With ``server_pid``, the result has ``server_cpu_seconds``: the CPU time that process used
    during the timed part. ``python -m bench.http load`` runs the same generator as a process
    of its own.
    """
    marks: dict[str, float] = {}

    def mark(at: str) -> None:
        if server_pid is not None:
            marks[at] = cpu_seconds(server_pid)

    result = asyncio.run(_load(url, mode, count, concurrency, limit, mark))
    if marks:
        result["server_cpu_seconds"] = marks["end"] - marks["start"]
    return result


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` so far (from /proc, clock-tick resolution)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- what is measured --------------------------------------------------------------------------

#: A subject: (server kind, URL path or None for the server's own, load mode).
Subject = tuple[str, str | None, str]

#: group -> metric -> subject name -> subject. In each group and metric the subjects run in
#: alternating order, rep by rep. "ceiling" of the 2026-07-28 groups is one measurement (the
#: ceiling answers those requests with JSON in both modes), shared by both groups.
PLAN: dict[str, dict[str, dict[str, Subject]]] = {
    "handshake_sse": {
        "sessions_per_s": {
            "ours": ("ours", None, "sessions"),
            "sdk": ("sdk", None, "sessions"),
            "ceiling": ("ceiling", "/mcp", "sessions"),
        },
        "calls_per_s": {
            "ours": ("ours", None, "calls"),
            "sdk": ("sdk", None, "calls"),
            "ceiling": ("ceiling", "/mcp", "calls"),
        },
    },
    "handshake_json": {
        "sessions_per_s": {
            "ours": ("ours-json", None, "sessions"),
            "sdk": ("sdk-json", None, "sessions"),
            "ceiling": ("ceiling", "/json", "sessions"),
        },
        "calls_per_s": {
            "ours": ("ours-json", None, "calls"),
            "sdk": ("sdk-json", None, "calls"),
            "ceiling": ("ceiling", "/json", "calls"),
        },
    },
    "modern_sse": {
        "calls_per_s": {
            "handle": ("ours", None, "modern-handle"),
            "no_handle": ("ours", None, "modern"),
            "sdk_stateless": ("sdk-stateless", None, "modern"),
            "ceiling": ("ceiling", "/json", "modern"),
        },
    },
    "modern_json": {
        "calls_per_s": {
            "handle": ("ours-json", None, "modern-handle"),
            "no_handle": ("ours-json", None, "modern"),
            "sdk_stateless": ("sdk-stateless-json", None, "modern"),
            "ceiling": ("ceiling", "/json", "modern"),
        },
    },
}
#: Memory per idle session: group -> subject -> server kind (fresh process each).
MEMORY_PLAN = {
    "handshake_sse": {"ours": "ours", "sdk": "sdk"},
    "handshake_json": {"ours": "ours-json", "sdk": "sdk-json"},
}
#: One profiled calls run per server (and a sessions run for both JSON servers): name -> subject.
#: A sessions run does a quarter as many sessions as a calls run does calls.
PROFILE_PLAN: dict[str, Subject] = {
    "ours sse calls": ("ours", None, "calls"),
    "sdk sse calls": ("sdk", None, "calls"),
    "ceiling sse calls": ("ceiling", "/mcp", "calls"),
    "ours json calls": ("ours-json", None, "calls"),
    "sdk json calls": ("sdk-json", None, "calls"),
    "ceiling json calls": ("ceiling", "/json", "calls"),
    "ours 2026 handle calls": ("ours", None, "modern-handle"),
    "ours 2026 no-handle calls": ("ours", None, "modern"),
    "sdk stateless 2026 calls": ("sdk-stateless", None, "modern"),
    "ours json sessions": ("ours-json", None, "sessions"),
    "sdk json sessions": ("sdk-json", None, "sessions"),
}


def _url(servers: dict[str, Server], subject: Subject) -> str:
    kind, path, _ = subject
    url = servers[kind].url
    if path is not None:
        url = url.rsplit("/", 1)[0] + path
    return url


# -- profile summary ---------------------------------------------------------------------------

LAYERS = (
    ("hypercorn / h11", ("/hypercorn/", "/h11/", "/h2/", "/wsproto/", "/priority/")),
    ("ours (app + transport)", ("/supervisor/",)),
    ("bench app (ceiling, SDK's ASGI wrapper)", ("/bench/",)),
    ("SDK protocol (mcp)", ("/mcp/", "/mcp_types/")),
    ("pydantic", ("/pydantic/", "/pydantic_core/")),
    ("starlette / sse", ("/starlette/", "/sse_starlette/")),
    ("anyio", ("/anyio/", "/sniffio/")),
    ("trio scheduler + io", ("/trio/", "/outcome/")),
    ("attrs", ("/attr/", "/attrs/")),
)
IDLE_LAYER = "idle (epoll wait)"
SOCKET_LAYER = "socket syscalls"
OTHER = "stdlib / builtins"


def _direct_layer(func: tuple[str, int, str]) -> str | None:
    filename, _, name = func
    if filename == "~" and "poll" in name and "epoll" in name:
        return IDLE_LAYER
    if filename == "~" and "_socket.socket" in name:
        return SOCKET_LAYER
    for layer, needles in LAYERS:
        if any(needle in filename for needle in needles):
            return layer
    return None


#: Samples per second of py-spy's profiles.
PYSPY_RATE = 1000


def py_spy() -> str | None:
    """The py-spy executable beside this interpreter's, or on PATH (not a dependency)."""
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else shutil.which("py-spy")


def profiler_choice() -> str:
    """``BENCH_PROFILER`` (``py-spy`` or ``cProfile``); default py-spy when it is installed."""
    chosen = os.environ.get("BENCH_PROFILER", "")
    if chosen.lower() == "cprofile":
        return "cProfile"
    if chosen.lower() == "py-spy" and py_spy() is None:
        raise RuntimeError("BENCH_PROFILER=py-spy but py-spy is not installed")
    return "py-spy" if py_spy() is not None else "cProfile"


def _leaf_layer(func: str, filename: str) -> str | None:
    """py-spy sees Python frames only: the frame in a C call that waits or does socket I/O."""
    if filename.endswith("trio/_core/_io_epoll.py") and "get_events" in func:
        return IDLE_LAYER
    if filename.endswith("trio/_socket.py") and "_nonblocking_helper" in func:
        return SOCKET_LAYER
    return None


_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>.*):(?P<line>\d+)\)$")


def summarize_py_spy(path: Path, calls: int, top: int = 15) -> dict[str, Any]:
    """Samples of the busy server by layer: each sample goes to the innermost frame of a known
    layer (stdlib frames to the layer that called them)."""
    layers: dict[str, float] = {}
    functions: dict[tuple[str, str], list[Any]] = {}
    total = idle = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = []
        for frame in stack.split(";"):
            m = _FRAME.match(frame)
            frames.append((m["func"], m["file"]) if m else (frame, "~"))
        layer = _leaf_layer(*frames[-1])
        for func, filename in reversed(frames):
            if layer is not None:
                break
            layer = _direct_layer((filename, 0, func))
        layer = layer or OTHER
        if layer == IDLE_LAYER:
            idle += count
            continue
        total += count
        layers[layer] = layers.get(layer, 0.0) + count
        func, filename = frames[-1]
        entry = functions.setdefault((func, filename), [0, layer])
        entry[0] += count
    busy = total / PYSPY_RATE
    ordered = dict(sorted(layers.items(), key=lambda kv: kv[1], reverse=True))
    rows = sorted(functions.items(), key=lambda kv: kv[1][0], reverse=True)[:top]
    return {
        "profiler": "py-spy",
        "calls": calls,
        "samples": total,
        "busy_seconds": busy,
        "idle_seconds": idle / PYSPY_RATE,
        "busy_us_per_call": busy / calls * 1e6 if calls else float("nan"),
        "layers": {k: v / total if total else 0.0 for k, v in ordered.items()},
        "layer_us_per_call": {
            k: v / PYSPY_RATE / calls * 1e6 if calls else 0.0 for k, v in ordered.items()
        },
        "top": [
            {
                "function": f"{'/'.join(filename.split('/')[-2:])}({func})",
                "layer": layer
                if _direct_layer((filename, 0, func)) is not None
                else f"{layer} (via caller)",
                "self_fraction": n / total if total else 0.0,
                "ncalls": None,
            }
            for (func, filename), (n, layer) in rows
        ],
    }


def summarize_profile(path: Path, calls: int, top: int = 15) -> dict[str, Any]:
    """Self time by layer (stdlib and C builtins charged to the layers that called them)."""
    import pstats

    stats: dict[Any, Any] = pstats.Stats(str(path)).stats  # type: ignore[attr-defined]
    memo: dict[Any, dict[str, float]] = {}

    def shares(func: Any, depth: int = 0) -> dict[str, float]:
        if func in memo:
            return memo[func]
        layer = _direct_layer(func)
        if layer is not None:
            result = {layer: 1.0}
        elif depth > 30 or func not in stats:
            result = {OTHER: 1.0}
        else:
            memo[func] = {OTHER: 1.0}  # a cycle through this function stays stdlib
            callers = stats[func][4]
            total = sum(v[2] for v in callers.values())
            if not callers or total <= 0:
                result = {OTHER: 1.0}
            else:
                result = {}
                for caller, v in callers.items():
                    for k, s in shares(caller, depth + 1).items():
                        result[k] = result.get(k, 0.0) + s * v[2] / total
        memo[func] = result
        return result

    layers: dict[str, float] = {}
    rows = []
    for func, (_cc, nc, tt, _ct, _callers) in stats.items():
        for layer, share in shares(func).items():
            layers[layer] = layers.get(layer, 0.0) + tt * share
        rows.append((tt, nc, func))
    idle = layers.pop(IDLE_LAYER, 0.0)
    busy = sum(layers.values())
    rows.sort(key=lambda r: r[0], reverse=True)
    top_rows = []
    for tt, nc, func in rows:
        layer_shares = shares(func)
        if IDLE_LAYER in layer_shares:
            continue
        filename, line, name = func
        short = "/".join(filename.split("/")[-2:]) if filename != "~" else ""
        main = max(layer_shares.items(), key=lambda kv: kv[1])[0]
        top_rows.append(
            {
                "function": f"{short}:{line}({name})" if short else name,
                "layer": main if _direct_layer(func) else f"{main} (via caller)",
                "self_fraction": tt / busy if busy else 0.0,
                "ncalls": nc,
            }
        )
        if len(top_rows) >= top:
            break
    ordered = dict(sorted(layers.items(), key=lambda kv: kv[1], reverse=True))
    return {
        "profiler": "cProfile",
        "calls": calls,
        "busy_seconds": busy,
        "idle_seconds": idle,
        "busy_us_per_call": busy / calls * 1e6 if calls else float("nan"),
        "layers": {k: v / busy if busy else 0.0 for k, v in ordered.items()},
        "layer_us_per_call": {k: v / calls * 1e6 if calls else 0.0 for k, v in ordered.items()},
        "top": top_rows,
    }


# -- the section -------------------------------------------------------------------------------


def _summarize(raw: dict[str, dict[str, dict[str, list[float]]]]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for group, metrics in raw.items():
        summary[group] = {}
        for metric, by_subject in metrics.items():
            medians = {name: median(values) for name, values in by_subject.items()}
            ceiling = medians.get("ceiling")
            summary[group][metric] = {
                "median": medians,
                "of_ceiling": {
                    name: value / ceiling if ceiling else float("nan")
                    for name, value in medians.items()
                    if name != "ceiling"
                },
            }
    return summary


def ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def run_http(
    *,
    reps: int,
    sessions: int,
    calls: int,
    idle: int,
    mem_reps: int,
    profile_calls: int,
    concurrency: int = 8,
    limit: float = 60.0,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Every figure of the HTTP section; see the module docstring."""
    raw: dict[str, dict[str, dict[str, list[float]]]] = {
        group: {metric: {name: [] for name in subjects} for metric, subjects in metrics.items()}
        for group, metrics in PLAN.items()
    }
    cpu: dict[str, dict[str, dict[str, list[float]]]] = {
        g: {m: {n: [] for n in subs} for m, subs in ms.items()} for g, ms in PLAN.items()
    }
    loadgen: dict[str, dict[str, dict[str, list[float]]]] = {
        g: {m: {n: [] for n in subs} for m, subs in ms.items()} for g, ms in PLAN.items()
    }
    errors: list[str] = []
    counts = {"sessions": sessions, "calls": calls, "modern": calls, "modern-handle": calls}
    servers_info: dict[str, Any] = {}
    profiles: dict[str, Any] = {}

    def measure(servers: dict[str, Server], subject: Subject, count: int) -> dict[str, Any]:
        server = servers[subject[0]]
        r = load(_url(servers, subject), subject[2], count, concurrency, limit, server.proc.pid)
        errors.extend(f"{subject[0]} {subject[2]}: {e}" for e in r["first_errors"])
        return r

    memory: dict[str, dict[str, list[float]]] = {
        group: {name: [] for name in kinds} for group, kinds in MEMORY_PLAN.items()
    }
    pairs = [(g, n, k) for g, kinds in MEMORY_PLAN.items() for n, k in kinds.items()]
    orders = [pairs if rep % 2 == 0 else pairs[::-1] for rep in range(mem_reps)]
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    # Every process starts at once (imports overlap); the fresh ones for the memory figure idle
    # until their turn, untouched.
    servers = {kind: Server(kind) for kind in KINDS}
    pool = [[Server(kind) for _, _, kind in order] for order in orders]
    everyone = [*servers.values(), *(s for fresh in pool for s in fresh)]
    try:
        for server in everyone:
            server.wait_ready()
        servers_info = {kind: s.info for kind, s in servers.items()}
        warm = max(4, sessions // 10)
        for kind in KINDS:  # imports, caches, first connections
            mode = "modern" if kind.startswith("sdk-stateless") else "sessions"
            load(servers[kind].url, mode, warm, concurrency, limit)
            if kind.startswith("ours"):
                load(servers[kind].url, "modern-handle", warm, concurrency, limit)
        seconds["start"] = time.perf_counter() - t0
        log(f"  http: {len(everyone)} servers up, {len(KINDS)} warmed ({seconds['start']:.0f} s)")
        t0 = time.perf_counter()
        for rep in range(reps):
            modern_ceiling: dict[str, Any] | None = None
            for group, metrics in PLAN.items():
                for metric, subjects in metrics.items():
                    names = list(subjects) if rep % 2 == 0 else list(reversed(subjects))
                    for name in names:
                        subject = subjects[name]
                        shared = group.startswith("modern") and name == "ceiling"
                        if shared and modern_ceiling is not None:
                            r = modern_ceiling
                        else:
                            r = measure(servers, subject, counts[subject[2]])
                            if shared:
                                modern_ceiling = r
                        raw[group][metric][name].append(r["per_second"])
                        ops = max(1, r["ok"])
                        cpu[group][metric][name].append(r["server_cpu_seconds"] / ops * 1e6)
                        loadgen[group][metric][name].append(r["loadgen_cpu_fraction"])
            log(f"  http rep {rep + 1}/{reps}: " + _rep_line(raw))
        seconds["reps"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        profiler = profiler_choice()
        with tempfile.TemporaryDirectory() as tmp:
            for name, subject in PROFILE_PLAN.items():
                path = Path(tmp) / f"{name.replace(' ', '-')}.profile"
                mode = subject[2]
                server = servers[subject[0]]
                n = max(4, profile_calls // 4) if mode == "sessions" else profile_calls
                r = server.profile(
                    path,
                    lambda s=subject, m=mode, n=n, pid=server.proc.pid: load(  # type: ignore[misc]
                        _url(servers, s), m, n, concurrency, limit, pid
                    ),
                    profiler,
                )
                if profiler == "py-spy":
                    p = summarize_py_spy(path, n)
                else:
                    p = summarize_profile(path, n)
                # µs per layer: its share of the profile times the CPU the server used per
                # call in this run (from /proc), which does not depend on the sampler keeping
                # up on a loaded machine.
                p["cpu_us_per_call"] = r["server_cpu_seconds"] / max(1, r["ok"]) * 1e6
                p["layer_us_per_call"] = {
                    k: share * p["cpu_us_per_call"] for k, share in p["layers"].items()
                }
                profiles[name] = p
        seconds["profiles"] = time.perf_counter() - t0
        log(
            f"  http profiles ({profiler}), server CPU µs per call: "
            + "; ".join(f"{k} {v['cpu_us_per_call']:.0f}" for k, v in profiles.items())
        )
        for server in servers.values():
            server.stop()
        t0 = time.perf_counter()
        for rep, (order, fresh) in enumerate(zip(orders, pool, strict=True)):
            for server in fresh:  # a first few sessions: code paths and caches warm
                load(server.url, "sessions", 20, 4, limit)
            time.sleep(0.3)
            before = [server.rss() for server in fresh]
            opened = []
            for server in fresh:
                r = load(server.url, "open", idle, concurrency, limit)
                errors.extend(f"{server.kind} open: {e}" for e in r["first_errors"])
                opened.append(r["ok"])
            time.sleep(0.5)
            for (group, name, _), server, rss0, ok in zip(
                order, fresh, before, opened, strict=True
            ):
                memory[group][name].append((server.rss() - rss0) / max(1, ok))
                server.stop()
            log(
                f"  http memory rep {rep + 1}/{mem_reps}: "
                + ", ".join(
                    f"{g.removeprefix('handshake_')} {n} {v[-1] / 1024:.1f} KB"
                    for g, by in memory.items()
                    for n, v in by.items()
                )
            )
        seconds["memory"] = time.perf_counter() - t0
    finally:
        for server in everyone:
            server.stop()
    summary = _summarize(raw)
    for group, per_metric in cpu.items():
        for metric, per_subject in per_metric.items():
            summary[group][metric]["server_cpu_us_per_op"] = {
                n: median(v) for n, v in per_subject.items()
            }
            summary[group][metric]["loadgen_cpu_fraction"] = {
                n: median(v) for n, v in loadgen[group][metric].items()
            }
    summary["memory_per_idle_session"] = {
        group: {
            "median": {name: median(v) for name, v in by.items()},
            "ratio": ratio(median(by["ours"]), median(by["sdk"])),
        }
        for group, by in memory.items()
    }
    return {
        "reps": reps,
        "sessions": sessions,
        "calls": calls,
        "idle_sessions": idle,
        "mem_reps": mem_reps,
        "profile_calls": profile_calls,
        "concurrency": concurrency,
        "gc_threshold": GC_THRESHOLD,
        "servers": servers_info,
        "plan": {
            g: {m: {n: list(s) for n, s in subs.items()} for m, subs in ms.items()}
            for g, ms in PLAN.items()
        },
        "raw": raw,
        "raw_memory": memory,
        "raw_server_cpu_us_per_op": cpu,
        "raw_loadgen_cpu_fraction": loadgen,
        "summary": summary,
        "ratios": ratios(summary),
        "paired_ratios": paired_ratios(raw, memory),
        "profiles": profiles,
        "seconds": seconds,
        "errors": errors[:10],
    }


def ratios(summary: dict[str, Any]) -> dict[str, float]:
    """The ratios the targets are about, from the medians."""
    out: dict[str, float] = {}
    for mode in ("sse", "json"):
        hs = summary[f"handshake_{mode}"]
        md = summary[f"modern_{mode}"]["calls_per_s"]["median"]
        for metric in ("sessions_per_s", "calls_per_s"):
            m = hs[metric]["median"]
            out[f"handshake_{mode}.{metric}"] = ratio(m["ours"], m["sdk"])
        sdk_calls = hs["calls_per_s"]["median"]["sdk"]
        out[f"modern_{mode}.handle_vs_sdk_manager"] = ratio(md["handle"], sdk_calls)
        out[f"modern_{mode}.handle_vs_sdk_stateless"] = ratio(md["handle"], md["sdk_stateless"])
        out[f"modern_{mode}.no_handle_vs_sdk_stateless"] = ratio(
            md["no_handle"], md["sdk_stateless"]
        )
        mem = summary.get("memory_per_idle_session", {}).get(f"handshake_{mode}")
        if mem:
            out[f"handshake_{mode}.memory_per_idle_session"] = mem["ratio"]
    return out


def paired_ratios(
    raw: dict[str, dict[str, dict[str, list[float]]]], memory: dict[str, dict[str, list[float]]]
) -> dict[str, float]:
    """The same ratios rep by rep (each from one repetition's pair), then their median.

    Less sensitive than the ratio of medians to load that drifts between repetitions on a
    shared machine.
    """

    def paired(a: list[float], b: list[float]) -> float:
        return median([ratio(x, y) for x, y in zip(a, b, strict=False)])

    out: dict[str, float] = {}
    for mode in ("sse", "json"):
        hs, md = raw[f"handshake_{mode}"], raw[f"modern_{mode}"]["calls_per_s"]
        for metric in ("sessions_per_s", "calls_per_s"):
            out[f"handshake_{mode}.{metric}"] = paired(hs[metric]["ours"], hs[metric]["sdk"])
        sdk_calls = hs["calls_per_s"]["sdk"]
        out[f"modern_{mode}.handle_vs_sdk_manager"] = paired(md["handle"], sdk_calls)
        out[f"modern_{mode}.handle_vs_sdk_stateless"] = paired(md["handle"], md["sdk_stateless"])
        out[f"modern_{mode}.no_handle_vs_sdk_stateless"] = paired(
            md["no_handle"], md["sdk_stateless"]
        )
        mem = memory.get(f"handshake_{mode}")
        if mem:
            out[f"handshake_{mode}.memory_per_idle_session"] = paired(mem["ours"], mem["sdk"])
    return out


def _rep_line(raw: dict[str, dict[str, dict[str, list[float]]]]) -> str:
    parts = []
    for group, metrics in raw.items():
        for metric, by in metrics.items():
            era = group.replace("handshake_", "").replace("modern_", "2026 ")
            label = f"{era} {metric.split('_')[0]}/s"
            parts.append(label + " " + " ".join(f"{n} {v[-1]:.0f}" for n, v in by.items()))
    return "; ".join(parts)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.http", description=__doc__)
    sub = parser.add_subparsers(dest="role", required=True)
    serve = sub.add_parser("serve")
    serve.add_argument("--kind", choices=KINDS, required=True)
    serve.add_argument("--port", type=int, default=0)
    loadp = sub.add_parser("load")
    loadp.add_argument("--url", required=True)
    loadp.add_argument("--mode", choices=MODES, required=True)
    loadp.add_argument("--count", type=int, default=100)
    loadp.add_argument("--concurrency", type=int, default=8)
    loadp.add_argument("--limit", type=float, default=60.0, help="seconds before giving up")
    args = parser.parse_args(argv)
    if args.role == "serve":
        import trio

        logging.basicConfig(level=logging.ERROR)
        trio.run(_serve, args.kind, args.port)
    else:
        emit(asyncio.run(_load(args.url, args.mode, args.count, args.concurrency, args.limit)))


if __name__ == "__main__":
    main()
