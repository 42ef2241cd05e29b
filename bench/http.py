"""End-to-end benchmark over Streamable HTTP on loopback: our server beside the SDK's manager.

Two roles, each its own process:

``python -m bench.http serve --kind ours|sdk``
    Serve the demo MCP server (tools ``echo`` and ``counter``, `supervisor.mcp.create_demo_server`)
    on 127.0.0.1 with hypercorn's trio worker: ``ours`` through `supervisor.mcp.serve_http` inside
    `open_supervisor`, ``sdk`` through the official SDK's own ``StreamableHTTPSessionManager`` (the
    same `Server` instance type, the same hypercorn config, DNS-rebinding protection on in both).
    Prints ``URL=http://127.0.0.1:PORT/mcp`` once listening; serves until stdin closes.
``python -m bench.http load --url URL --mode sessions|calls|open --count N``
    The load generator (asyncio, raw HTTP/1.1 keep-alive sockets, loopback only, bounded in
    count and time). ``sessions``: N x (initialize, notifications/initialized, tools/call echo,
    DELETE). ``calls``: N tools/call echo spread over already open sessions. ``open``: open N
    sessions and leave them idle (for the memory figure). Prints one JSON document.

`run_http` (used by `bench.run`) starts both servers and drives them alternately (A B A B).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager, suppress
from typing import Any
from urllib.parse import urlsplit

from ._util import emit, median, percentile, rss_bytes

HOST = "127.0.0.1"
PROTOCOL_VERSION = "2025-11-25"
IDLE = 3600.0

# -- servers -----------------------------------------------------------------------------------


async def _stdin_closed() -> None:
    import trio

    await trio.to_thread.run_sync(sys.stdin.read, abandon_on_cancel=True)


def _hypercorn_config(port: int) -> Any:
    from hypercorn.config import Config

    config = Config()
    config.bind = [f"{HOST}:{port}"]
    config.accesslog = None
    config.errorlog = logging.getLogger("bench.http")
    config.graceful_timeout = 1.0
    return config


class _SdkApp:
    """The SDK's StreamableHTTPSessionManager as a bare ASGI app (lifespan enters ``run()``)."""

    def __init__(self, manager: Any, path: str) -> None:
        self.manager = manager
        self.path = path

    async def __call__(
        self,
        scope: MutableMapping[str, Any],
        receive: Callable[[], Awaitable[MutableMapping[str, Any]]],
        send: Callable[[MutableMapping[str, Any]], Awaitable[None]],
    ) -> None:
        if scope["type"] == "lifespan":
            await receive()  # lifespan.startup
            async with self.manager.run():
                await send({"type": "lifespan.startup.complete"})
                await receive()  # lifespan.shutdown
            await send({"type": "lifespan.shutdown.complete"})
        elif scope["type"] == "http" and scope["path"] == self.path:
            await self.manager.handle_request(scope, receive, send)
        elif scope["type"] == "http":
            body = b"not found"
            await send({"type": "http.response.start", "status": 404, "headers": []})
            await send({"type": "http.response.body", "body": body})


async def _serve(kind: str, port: int) -> None:
    import trio
    from hypercorn.trio import serve

    from supervisor import open_supervisor
    from supervisor.mcp import create_demo_server, serve_http

    path = "/mcp"
    async with trio.open_nursery() as nursery:
        if kind == "ours":
            async with open_supervisor(max_sessions=1_000_000, idle_timeout=IDLE) as sup:
                url = await nursery.start(
                    lambda task_status: serve_http(
                        sup,
                        create_demo_server(),
                        host=HOST,
                        port=port,
                        path=path,
                        shutdown_trigger=_stdin_closed,
                        task_status=task_status,
                    )
                )
                print(f"URL={url}", flush=True)
                await _stdin_closed()
                nursery.cancel_scope.cancel()
            return
        # The same collector setting serve_http applies to ours (its default gc_threshold), so
        # the comparison measures the servers, not the collector.
        import gc

        gc.set_threshold(20_000, *gc.get_threshold()[1:])
        from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
        from mcp.server.transport_security import TransportSecuritySettings

        loopback = ["127.0.0.1", "127.0.0.1:*", "localhost", "localhost:*", "[::1]", "[::1]:*"]
        manager = StreamableHTTPSessionManager(
            app=create_demo_server(),
            session_idle_timeout=IDLE,
            max_sessions=None,
            security_settings=TransportSecuritySettings(
                enable_dns_rebinding_protection=True,
                allowed_hosts=loopback,
                allowed_origins=[f"http://{h}" for h in loopback],
            ),
        )
        app = _SdkApp(manager, path)
        binds = await nursery.start(
            lambda task_status: serve(
                app,  # type: ignore[arg-type]
                _hypercorn_config(port),
                shutdown_trigger=_stdin_closed,
                task_status=task_status,
            )
        )
        print(f"URL={binds[0]}{path}", flush=True)


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
        self, method: str, body: dict[str, Any] | None, session: str | None = None
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
        if session is not None:
            lines.append(f"Mcp-Session-Id: {session}")
            lines.append(f"MCP-Protocol-Version: {PROTOCOL_VERSION}")
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


def _call(i: int) -> dict[str, Any]:
    return _rpc("tools/call", {"name": "echo", "arguments": {"text": f"hi{i}"}}, id=i + 2)


async def _open_session(conn: _Conn) -> str:
    status, headers, body = await conn.request("POST", _INIT)
    if status != 200 or "mcp-session-id" not in headers:
        raise HttpError(f"initialize: {status} {body[:200]!r}")
    session = headers["mcp-session-id"]
    status, _, body = await conn.request("POST", _INITIALIZED, session)
    if status != 202:
        raise HttpError(f"initialized: {status} {body[:200]!r}")
    return session


async def _tool_call(conn: _Conn, session: str, i: int) -> None:
    status, _, body = await conn.request("POST", _call(i), session)
    if status != 200 or f'"hi{i}"'.encode() not in body:
        raise HttpError(f"tools/call: {status} {body[:200]!r}")


async def _delete(conn: _Conn, session: str) -> None:
    status, _, body = await conn.request("DELETE", None, session)
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


async def _load(url: str, mode: str, count: int, concurrency: int, limit: float) -> dict[str, Any]:
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
        if mode == "calls":
            # Open the sessions first (not timed): a few per connection.
            async def open_two(conn: _Conn) -> list[str]:
                return [await _open_session(conn), await _open_session(conn)]

            for pair in await asyncio.gather(*(open_two(c) for c in conns)):
                sessions.extend(pair)

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
                    else:
                        sessions.append(await _open_session(conn))
                except (HttpError, OSError, asyncio.IncompleteReadError) as exc:
                    errors.append(repr(exc)[:300])
                    await conn.close()
                latencies.append(time.perf_counter() - t0)

        t0 = time.perf_counter()
        await asyncio.wait_for(
            asyncio.gather(*(worker(w, c) for w, c in enumerate(conns))), timeout=limit
        )
        elapsed = time.perf_counter() - t0
        if mode == "calls":
            for j, session in enumerate(sessions):
                await _delete(conns[j % len(conns)], session)
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
        "latency_p50": percentile(latencies, 50),
        "latency_p99": percentile(latencies, 99),
    }


# -- orchestration (used by bench.run) ---------------------------------------------------------


class Server:
    """A benchmark server subprocess (``serve --kind``); stops when its stdin closes."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.http", "serve", "--kind", kind],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        if not line.startswith("URL="):
            self.stop()
            raise RuntimeError(f"{kind} server did not start: {line!r}")
        self.url = line[4:]

    def rss(self) -> int:
        return rss_bytes(self.proc.pid)

    def stop(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def load(url: str, mode: str, count: int, concurrency: int, limit: float) -> dict[str, Any]:
    """Run the load generator in its own process and return its JSON."""
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.http",
            "load",
            "--url",
            url,
            "--mode",
            mode,
            "--count",
            str(count),
            "--concurrency",
            str(concurrency),
            "--limit",
            str(limit),
        ],
        capture_output=True,
        text=True,
        timeout=limit + 30,
        check=True,
    )
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def run_http(
    *,
    reps: int,
    sessions: int,
    calls: int,
    idle: int,
    mem_reps: int,
    concurrency: int = 8,
    limit: float = 60.0,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Sessions/s, calls/s (both servers live, driven A B A B) and memory per idle session."""
    raw: dict[str, dict[str, list[float]]] = {
        "sessions_per_s": {"ours": [], "sdk": []},
        "calls_per_s": {"ours": [], "sdk": []},
        "memory_per_idle_session": {"ours": [], "sdk": []},
    }
    errors: dict[str, list[str]] = {"ours": [], "sdk": []}
    servers = {kind: Server(kind) for kind in ("ours", "sdk")}
    try:
        for kind, server in servers.items():  # warm up: imports, caches, first connections
            load(server.url, "sessions", max(4, sessions // 10), concurrency, limit)
            log(f"  http warm-up {kind} done")
        for rep in range(reps):
            order = ("ours", "sdk") if rep % 2 == 0 else ("sdk", "ours")
            for kind in order:
                r = load(servers[kind].url, "sessions", sessions, concurrency, limit)
                raw["sessions_per_s"][kind].append(r["per_second"])
                errors[kind].extend(r["first_errors"])
            for kind in order:
                r = load(servers[kind].url, "calls", calls, concurrency, limit)
                raw["calls_per_s"][kind].append(r["per_second"])
                errors[kind].extend(r["first_errors"])
            log(
                f"  http rep {rep + 1}/{reps}: sessions/s "
                f"ours {raw['sessions_per_s']['ours'][-1]:.0f} "
                f"sdk {raw['sessions_per_s']['sdk'][-1]:.0f}; calls/s "
                f"ours {raw['calls_per_s']['ours'][-1]:.0f} "
                f"sdk {raw['calls_per_s']['sdk'][-1]:.0f}"
            )
    finally:
        for server in servers.values():
            server.stop()
    for rep in range(mem_reps):
        for kind in ("ours", "sdk") if rep % 2 == 0 else ("sdk", "ours"):
            server = Server(kind)
            try:
                load(server.url, "sessions", 20, 4, limit)
                time.sleep(0.3)
                before = server.rss()
                r = load(server.url, "open", idle, concurrency, limit)
                errors[kind].extend(r["first_errors"])
                time.sleep(0.5)
                after = server.rss()
            finally:
                server.stop()
            raw["memory_per_idle_session"][kind].append((after - before) / max(1, r["ok"]))
        log(f"  http memory rep {rep + 1}/{mem_reps} done")
    summary = {}
    for name, by_kind in raw.items():
        ours, sdk = median(by_kind["ours"]), median(by_kind["sdk"])
        summary[name] = {"ours": ours, "sdk": sdk, "ratio": ours / sdk if sdk else float("nan")}
    return {
        "reps": reps,
        "sessions": sessions,
        "calls": calls,
        "idle_sessions": idle,
        "concurrency": concurrency,
        "raw": raw,
        "summary": summary,
        "errors": {k: v[:5] for k, v in errors.items()},
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.http", description=__doc__)
    sub = parser.add_subparsers(dest="role", required=True)
    serve = sub.add_parser("serve")
    serve.add_argument("--kind", choices=["ours", "sdk"], required=True)
    serve.add_argument("--port", type=int, default=0)
    loadp = sub.add_parser("load")
    loadp.add_argument("--url", required=True)
    loadp.add_argument("--mode", choices=["sessions", "calls", "open"], required=True)
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
