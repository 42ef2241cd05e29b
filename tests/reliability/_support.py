"""Shared pieces of the reliability suite: sizes, figures, process gauges, servers and clients.

Servers bind 127.0.0.1 only (port 0), inside the test's nursery, and stop with it. The in-memory
ASGI driver (`asgi_request`) calls the app directly, so tests can run on trio's MockClock and
cancel a request at any await point.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import sys
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any, Literal, TextIO
from urllib.parse import urlsplit

import attrs
import mcp_types as types
import trio
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel.server import Server

from supervisor import Supervisor, open_supervisor
from supervisor.mcp import McpHttpApp, create_demo_server, serve_http

REPO = Path(__file__).resolve().parents[2]

# -- sizes ----------------------------------------------------------------------------------------

SoakMode = Literal["off", "reduced", "full"]


def soak_mode() -> SoakMode:
    """``off`` (the normal run), ``reduced`` (CI) or ``full``, from the ``SOAK`` variable."""
    value = os.environ.get("SOAK", "").strip().lower()
    if value in ("", "0", "off", "no", "false"):
        return "off"
    if value in ("reduced", "ci", "small"):
        return "reduced"
    return "full"


def size(fast: int, reduced: int | None = None, full: int | None = None) -> int:
    """The size of a workload in the current mode (soak modes default to the fast size)."""
    mode = soak_mode()
    if mode == "full" and full is not None:
        return full
    if mode in ("reduced", "full") and reduced is not None:
        return reduced
    return fast


# -- figures --------------------------------------------------------------------------------------

#: test node id -> figure name -> value; printed and written by conftest at the end of the run.
FIGURES: dict[str, dict[str, Any]] = {}


class Figures:
    """The measured figures of one test (``figures["sessions"] = 10_000``)."""

    def __init__(self, nodeid: str) -> None:
        self.nodeid = nodeid
        self.values: dict[str, Any] = FIGURES.setdefault(nodeid, {"mode": soak_mode()})

    def __setitem__(self, name: str, value: Any) -> None:
        self.values[name] = round(value, 4) if isinstance(value, float) else value

    def __getitem__(self, name: str) -> Any:
        return self.values[name]

    def update(self, **values: Any) -> None:
        for name, value in values.items():
            self[name] = value


# -- log output of the long runs -------------------------------------------------------------------

#: (logger name prefix, text in the message template) of the refusals the hostile-client tests
#: provoke by design, each logged once per refused request: ``initialize`` at capacity (the
#: floods), a session over its requests in flight (429), a bad Host or Origin and another
#: principal's session id (the fuzz and security tests), a body not sent in time (slowloris).
EXPECTED_RECORDS: tuple[tuple[str, str], ...] = (
    ("supervisor.mcp", "refused a new session"),
    ("supervisor.mcp", "requests in flight"),
    ("supervisor.mcp", "refused request with Host"),
    ("supervisor.mcp", "refused request with Origin"),
    ("supervisor.mcp", "from another principal"),
    ("supervisor.mcp", "request body not received within"),
)


class ExpectedLogRecords(logging.Handler):
    """Counts expected records by message instead of printing them; prints the rest.

    Installed on the root logger for the soak runs (``scripts/soak.py`` disables pytest's log
    capture so progress streams live): a flood test's ten thousand refusals become one count
    line per message, while every other record at WARNING or above is written to ``stream`` as
    it happens.
    """

    def __init__(
        self,
        expected: tuple[tuple[str, str], ...] = EXPECTED_RECORDS,
        stream: TextIO | None = None,
    ) -> None:
        super().__init__(logging.NOTSET)
        self.expected = expected
        self.stream = stream
        self.counts: dict[str, int] = {}
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        for logger, message in self.expected:
            if record.name.startswith(logger) and message in text:
                self.counts[message] = self.counts.get(message, 0) + 1
                return
        if record.levelno < logging.WARNING:
            return
        try:
            stream = self.stream or sys.stderr
            stream.write(self.format(record) + "\n")
            stream.flush()
        except Exception:
            self.handleError(record)

    def summary(self) -> list[str]:
        """One line per expected message that was counted."""
        return [
            f"expected log records (counted, not shown): {count:,} x {template!r}"
            for template, count in sorted(self.counts.items())
        ]


def progress(text: str) -> None:
    """A progress line for the long runs (visible with ``pytest -s``, as scripts/soak.py runs)."""
    if soak_mode() != "off":
        print(f"    [{trio.current_time():9.2f}] {text}", flush=True)


# -- process gauges -------------------------------------------------------------------------------


def rss_bytes() -> int:
    """Resident set size of this process now."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize()


def open_fds() -> int:
    """File descriptors open in this process now."""
    return len(os.listdir("/proc/self/fd"))


def count_tasks() -> int:
    """Tasks alive in this trio run now (walks the task tree from the root)."""
    total = 0
    root = trio.lowlevel.current_root_task()
    assert root is not None
    stack = [root]
    while stack:
        task = stack.pop()
        total += 1
        for nursery in task.child_nurseries:
            stack.extend(nursery.child_tasks)
    return total


# -- MCP over HTTP --------------------------------------------------------------------------------

VERSION = "2025-11-25"
ACCEPT = {"accept": "application/json, text/event-stream", "content-type": "application/json"}
INIT: dict[str, Any] = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": VERSION,
        "capabilities": {},
        "clientInfo": {"name": "reliability", "version": "1.0"},
    },
}
INITIALIZED = {"jsonrpc": "2.0", "method": "notifications/initialized"}


def tool_call(name: str, arguments: Mapping[str, Any], request_id: int = 7) -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "id": request_id,
        "method": "tools/call",
        "params": {"name": name, "arguments": dict(arguments)},
    }


def session_headers(session_id: str, **extra: str) -> dict[str, str]:
    return {**ACCEPT, "mcp-session-id": session_id, "mcp-protocol-version": VERSION, **extra}


def rpc_messages(content_type: str, body: bytes) -> list[Any]:
    """The JSON-RPC messages in a response body (SSE or JSON); raises ValueError if none parse."""
    if content_type.startswith("text/event-stream"):
        out = []
        for line in body.decode().splitlines():
            if line.startswith("data:") and line[5:].strip():
                out.append(json.loads(line[5:]))
        return out
    return [json.loads(body)]


def slow_server() -> Server[Any]:
    """The demo's tools plus ``sleep(seconds)`` (answers ``"slept"``) and ``crash()`` (raises)."""
    tools = [
        types.Tool(
            name="sleep",
            input_schema={"type": "object", "properties": {"seconds": {"type": "number"}}},
        ),
        types.Tool(name="crash", input_schema={"type": "object"}),
        types.Tool(
            name="echo",
            input_schema={"type": "object", "properties": {"text": {"type": "string"}}},
        ),
        types.Tool(name="counter", input_schema={"type": "object"}),
    ]

    async def list_tools(
        ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        return types.ListToolsResult(tools=list(tools))

    async def call_tool(
        ctx: ServerRequestContext[Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        arguments = params.arguments or {}
        if params.name == "sleep":
            await trio.sleep(float(arguments.get("seconds", 0)))
            return types.CallToolResult(content=[types.TextContent(text="slept")])
        if params.name == "crash":
            raise RuntimeError("tool crashed on purpose")
        if params.name == "echo":
            return types.CallToolResult(
                content=[types.TextContent(text=str(arguments.get("text", "")))]
            )
        return types.CallToolResult(content=[types.TextContent(text="1")])

    return Server("reliability", on_list_tools=list_tools, on_call_tool=call_tool)


@asynccontextmanager
async def http_server(
    server: Any = None, app_options: Mapping[str, Any] | None = None, **config: Any
) -> AsyncIterator[tuple[Supervisor, str]]:
    """A supervisor serving ``server`` (default: the demo) over HTTP on 127.0.0.1:<free port>."""
    config.setdefault("max_sessions", 16)
    async with open_supervisor(**config) as sup, trio.open_nursery() as nursery:
        url: str = await nursery.start(
            partial(
                serve_http, sup, server or create_demo_server(), port=0, **dict(app_options or {})
            )
        )
        yield sup, url
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def asgi_app(
    server: Any = None, app_options: Mapping[str, Any] | None = None, **config: Any
) -> AsyncIterator[tuple[Supervisor, McpHttpApp]]:
    """A supervisor and its `McpHttpApp`, driven in memory with `asgi_request`."""
    config.setdefault("max_sessions", 16)
    async with open_supervisor(**config) as sup:
        yield sup, McpHttpApp(sup, server or create_demo_server(), **dict(app_options or {}))


# -- the in-memory ASGI driver --------------------------------------------------------------------


@attrs.define
class AsgiResponse:
    """What the app sent for one request."""

    status: int | None = None
    headers: dict[str, str] = attrs.field(factory=dict)
    body: bytes = b""
    complete: bool = False  # the last body message was sent
    raised: BaseException | None = None  # the app raised (a server would answer 500)
    stream: bool = False  # an open SSE stream (GET) the client left

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "")

    def json(self) -> Any:
        return json.loads(self.body)

    def messages(self) -> list[Any]:
        return rpc_messages(self.content_type, self.body)


def http_scope(
    method: str, path: str, headers: Sequence[tuple[bytes, bytes]] | Mapping[str, str]
) -> dict[str, Any]:
    if isinstance(headers, Mapping):
        raw = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
    else:
        raw = list(headers)
    if not any(k == b"host" for k, _ in raw):
        raw.append((b"host", b"127.0.0.1:8000"))
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode("latin-1", "replace"),
        "query_string": b"",
        "root_path": "",
        "headers": raw,
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }


async def asgi_request(
    app: Any,
    method: str,
    path: str = "/mcp",
    headers: Sequence[tuple[bytes, bytes]] | Mapping[str, str] = (),
    body: bytes | Sequence[bytes] = b"",
    *,
    answer_within: float = 10.0,
    linger: float = 5.0,
) -> AsgiResponse:
    """One request to ``app`` in memory, as a client that leaves once the response is complete.

    ``body`` may be a list of chunks. An SSE response to GET counts as a stream: once its head
    has arrived the client disconnects. Raises `trio.TooSlowError` if no complete response (or
    stream head) comes within ``answer_within`` or the app does not return within ``linger`` after
    the client left: either is a hang.
    """
    chunks = [body] if isinstance(body, bytes) else list(body)
    response = AsgiResponse()
    left = trio.Event()
    answered = trio.Event()
    returned = trio.Event()

    async def receive() -> dict[str, Any]:
        if chunks:
            chunk = chunks.pop(0)
            return {"type": "http.request", "body": chunk, "more_body": bool(chunks)}
        await left.wait()
        return {"type": "http.disconnect"}

    async def send(message: Mapping[str, Any]) -> None:
        if left.is_set():
            raise OSError("client disconnected")  # what servers do for a gone client
        if message["type"] == "http.response.start":
            response.status = int(message["status"])
            response.headers = {
                bytes(k).decode("latin-1").lower(): bytes(v).decode("latin-1")
                for k, v in message.get("headers", ())
            }
            if method == "GET" and response.content_type.startswith("text/event-stream"):
                response.stream = True
                answered.set()
        elif message["type"] == "http.response.body":
            response.body += bytes(message.get("body", b""))
            if not message.get("more_body", False):
                response.complete = True
                answered.set()
        await trio.lowlevel.checkpoint()

    async def run() -> None:
        try:
            await app(http_scope(method, path, headers), receive, send)
        except Exception as exc:
            response.raised = exc
        finally:
            returned.set()
            answered.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run)
        with trio.fail_after(answer_within):
            await answered.wait()
        left.set()
        with trio.fail_after(linger):
            await returned.wait()
    return response


# -- load clients in their own processes -----------------------------------------------------------
#
# The load test's clients run as subprocesses (``python -m tests.reliability._support load-client``)
# so the server's process holds only the server: clients in the same process double its heap and
# compete with it for the GIL.


@attrs.define
class LoadResult:
    """What the load clients measured, all processes together."""

    calls: int = 0
    errors: dict[str, int] = attrs.field(factory=dict)
    latencies: list[float] = attrs.field(factory=list)
    ids: list[str] = attrs.field(factory=list)
    deleted: list[str] = attrs.field(factory=list)


async def run_load_clients(
    url: str,
    sessions: int,
    seconds: float,
    pause: float,
    *,
    ramp: float,
    processes: int,
    request_timeout: float = 30.0,
) -> LoadResult:
    """Run ``sessions`` clients in ``processes`` subprocesses against ``url`` (127.0.0.1 only).

    Session ``i`` opens at ``ramp * i / sessions`` s, then calls the ``counter`` tool (expecting
    ``count == n`` on its n-th call) every ``pause`` s until ``seconds`` after the start; the
    even-numbered ones DELETE their session at the end, the others leave it to expire.
    """
    if urlsplit(url).hostname != "127.0.0.1":
        raise ValueError("load clients only talk to 127.0.0.1")
    result = LoadResult()

    async def one(k: int) -> None:
        command = [
            sys.executable,
            "-m",
            "tests.reliability._support",
            "load-client",
            json.dumps(
                {
                    "url": url,
                    "sessions": sessions,
                    "process": k,
                    "processes": processes,
                    "seconds": seconds,
                    "pause": pause,
                    "ramp": ramp,
                    "request_timeout": request_timeout,
                }
            ),
        ]
        done = await trio.run_process(
            command, cwd=REPO, capture_stdout=True, capture_stderr=True, check=False
        )
        if done.returncode != 0:
            key = f"client process exit {done.returncode}"
            result.errors[key] = result.errors.get(key, 0) + 1
            print(done.stderr.decode(errors="replace")[-2000:], file=sys.stderr)
            return
        report = json.loads(done.stdout)
        result.calls += report["calls"]
        for kind, n in report["errors"].items():
            result.errors[kind] = result.errors.get(kind, 0) + n
        result.latencies.extend(report["latencies"])
        result.ids.extend(report["ids"])
        result.deleted.extend(report["deleted"])

    async with trio.open_nursery() as nursery:
        for k in range(processes):
            nursery.start_soon(one, k)
    return result


class _H11Client:
    """One keep-alive HTTP/1.1 connection (h11 over a trio socket)."""

    def __init__(self, host: str, port: int, path: str) -> None:
        self.host, self.port, self.path = host, port, path
        self.stream: trio.SocketStream | None = None
        self.conn: Any = None

    async def request(
        self, method: str, body: Any = None, headers: Mapping[str, str] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        import h11

        if self.stream is None:
            self.stream = await trio.open_tcp_stream(self.host, self.port)
            self.conn = h11.Connection(h11.CLIENT)
        conn = self.conn
        payload = b"" if body is None else json.dumps(body).encode()
        head = [("Host", f"{self.host}:{self.port}"), ("Content-Length", str(len(payload)))]
        head += list((headers or {}).items())
        data = conn.send(h11.Request(method=method, target=self.path, headers=head))
        data += conn.send(h11.Data(data=payload)) if payload else b""
        data += conn.send(h11.EndOfMessage())
        await self.stream.send_all(data)
        status = 0
        response_headers: dict[str, str] = {}
        chunks: list[bytes] = []
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await self.stream.receive_some(65536))
            elif isinstance(event, h11.Response):
                status = event.status_code
                response_headers = {
                    bytes(k).decode("latin-1"): bytes(v).decode("latin-1") for k, v in event.headers
                }
            elif isinstance(event, h11.Data):
                chunks.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                break
            elif isinstance(event, h11.ConnectionClosed):
                raise OSError("connection closed by the server")
        if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()
        else:
            await self.aclose()
        return status, response_headers, b"".join(chunks)

    async def aclose(self) -> None:
        if self.stream is not None:
            await self.stream.aclose()
            self.stream = None


async def _load_client(options: dict[str, Any]) -> dict[str, Any]:
    """One client process of `run_load_clients`: sessions ``process``, ``process + processes``..."""
    import h11

    parts = urlsplit(options["url"])
    assert parts.hostname == "127.0.0.1" and parts.port is not None
    sessions: int = options["sessions"]
    pause: float = options["pause"]
    ramp: float = options["ramp"]
    timeout: float = options["request_timeout"]
    errors: dict[str, int] = {}
    latencies: list[float] = []
    ids: list[str] = []
    deleted: list[str] = []
    calls = 0
    start = trio.current_time()
    stop_at = start + options["seconds"]

    def error(kind: str) -> None:
        errors[kind] = errors.get(kind, 0) + 1

    async def client(i: int) -> None:
        nonlocal calls
        await trio.sleep_until(start + ramp * i / sessions)
        http = _H11Client("127.0.0.1", parts.port or 80, parts.path)
        try:
            with trio.fail_after(timeout):
                status, headers, _ = await http.request("POST", INIT, ACCEPT)
            if status != 200:
                error(f"initialize {status}")
                return
            session_id = headers["mcp-session-id"]
            ids.append(session_id)
            session = session_headers(session_id)
            with trio.fail_after(timeout):
                status, _, _ = await http.request("POST", INITIALIZED, session)
            if status != 202:
                error(f"initialized {status}")
            n = 0
            while trio.current_time() < stop_at:
                n += 1
                began = time.perf_counter()
                with trio.fail_after(timeout):
                    status, headers, body = await http.request(
                        "POST", tool_call("counter", {}, request_id=n), session
                    )
                latencies.append(time.perf_counter() - began)
                if status != 200:
                    error(f"call {status}")
                    continue
                [message] = rpc_messages(headers.get("content-type", ""), body)
                if message.get("result", {}).get("structuredContent") != {"count": n}:
                    error("wrong answer")
                calls += 1
                await trio.sleep(pause)
            if i % 2 == 0:
                with trio.fail_after(timeout):
                    status, _, _ = await http.request("DELETE", None, session)
                if status != 200:
                    error(f"delete {status}")
                else:
                    deleted.append(session_id)
        except (OSError, ValueError, KeyError, h11.ProtocolError, trio.TooSlowError) as exc:
            error(type(exc).__name__)
        finally:
            await http.aclose()

    async with trio.open_nursery() as nursery:
        for i in range(options["process"], sessions, options["processes"]):
            nursery.start_soon(client, i)
    return {
        "calls": calls,
        "errors": errors,
        "latencies": latencies,
        "ids": ids,
        "deleted": deleted,
    }


def _main(argv: Sequence[str]) -> int:
    if len(argv) == 2 and argv[0] == "load-client":
        report = trio.run(_load_client, json.loads(argv[1]))
        json.dump(report, sys.stdout)
        return 0
    print("usage: python -m tests.reliability._support load-client OPTIONS_JSON", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
