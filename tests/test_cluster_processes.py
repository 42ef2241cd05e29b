"""Cluster mode across real processes: ``serve --cluster`` nodes (and tests/_cluster_node.py
nodes) on one real redis-server, the acceptance checks of issue 12.

Everything binds 127.0.0.1 on free ports; every wait is bounded; every process is stopped by
its PID in a ``finally`` and checked gone.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mcp import Client

from ._redis import RedisServer, command, pid_alive, redis_server_fixture  # noqa: F401
from ._serve import ACCEPT, INITIALIZE, INITIALIZED, REPO, ServeProcess, rpc_message, serve_process

TIMEOUT = 40  # seconds, per test; generous for a loaded 2-core machine
VERSION = "2025-11-25"
TERMINAL = {"closed", "expired", "failed"}


# -- helpers ---------------------------------------------------------------------------------


class Node:
    def __init__(self, serve: ServeProcess) -> None:
        self.serve = serve
        self.url = serve.line_after("serving MCP on")
        self.admin = serve.line_after("admin endpoint on")
        line = next(x for x in serve.output.splitlines() if x.startswith("cluster node "))
        self.node_id = line.split()[2]

    @property
    def pid(self) -> int:
        return self.serve.pid


@asynccontextmanager
async def cluster_nodes(
    redis: RedisServer,
    count: int = 3,
    *extra: str,
    lease: str = "1.5",
    check: str = "0.5",
    app: str | None = "tests._cluster_node:notify_server",
) -> AsyncIterator[list[Node]]:
    """``count`` ``serve --cluster`` processes on ``redis`` (``app`` None: the demo server);
    each is stopped by its PID."""
    pids: list[int] = []
    try:
        async with AsyncExitStack() as stack:
            nodes = []
            for _ in range(count):
                serve = await stack.enter_async_context(
                    serve_process(
                        "--cluster",
                        redis.url,
                        "--admin-port",
                        "0",
                        "--node-lease",
                        lease,
                        "--lease-check",
                        check,
                        *(() if app is None else ("--app", app)),
                        *extra,
                        ready="Ctrl-C stops",
                    )
                )
                pids.append(serve.pid)
                nodes.append(Node(serve))
            yield nodes
    finally:
        for pid in pids:
            assert not pid_alive(pid), f"serve process {pid} still runs"


def headers_for(session_id: str) -> dict[str, str]:
    return {**ACCEPT, "mcp-session-id": session_id, "mcp-protocol-version": VERSION}


async def initialize(http: httpx.AsyncClient, url: str) -> httpx.Response:
    return await http.post(url, json=INITIALIZE, headers=ACCEPT)


async def open_session(http: httpx.AsyncClient, url: str) -> str:
    opened = await initialize(http, url)
    assert opened.status_code == 200, (opened.status_code, opened.text)
    session_id = opened.headers["mcp-session-id"]
    notified = await http.post(url, json=INITIALIZED, headers=headers_for(session_id))
    assert notified.status_code == 202, notified.text
    return session_id


def call(name: str, request_id: int = 7, **arguments: Any) -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "id": request_id,
        "method": "tools/call",
        "params": {"name": name, "arguments": arguments},
    }


async def counter(http: httpx.AsyncClient, url: str, session_id: str) -> int:
    answer = await http.post(url, json=call("counter"), headers=headers_for(session_id))
    assert answer.status_code == 200, (answer.status_code, answer.text)
    value = rpc_message(answer.text)["result"]["structuredContent"]["count"]
    assert isinstance(value, int)
    return value


async def eventually(
    check: Callable[[], Awaitable[bool]], within: float, what: str, every: float = 0.05
) -> float:
    """Poll ``check`` until true; fail after ``within`` s. Returns the seconds it took."""
    start = time.monotonic()
    while not await check():
        if time.monotonic() - start > within:
            pytest.fail(f"not within {within} s: {what}")
        await trio.sleep(every)
    return time.monotonic() - start


def held_sum(port: int, prefix: str = "tss") -> int:
    values = command(port, "HVALS", f"{{{prefix}}}:held")
    assert isinstance(values, list)
    return sum(int(v) for v in values if isinstance(v, bytes))


def events(port: int) -> list[dict[str, str]]:
    entries = command(port, "XRANGE", "{tss}:events", "-", "+")
    assert isinstance(entries, list)
    out = []
    for entry in entries:
        assert isinstance(entry, list)
        raw = entry[1]
        assert isinstance(raw, list)
        fields = [x.decode() if isinstance(x, bytes) else str(x) for x in raw]
        out.append(dict(zip(fields[::2], fields[1::2], strict=True)))
    return out


def terminal_events(port: int, session_id: str) -> list[dict[str, str]]:
    return [e for e in events(port) if e.get("session") == session_id and e.get("kind") in TERMINAL]


async def cluster_view(http: httpx.AsyncClient, node: Node) -> dict[str, Any]:
    answer = await http.get(node.admin + "/cluster")
    assert answer.status_code == 200, answer.text
    view: dict[str, Any] = answer.json()
    return view


async def fill(http: httpx.AsyncClient, urls: list[str]) -> list[str]:
    """Open sessions round robin on ``urls`` until one is refused (503); their ids."""
    opened: list[str] = []
    for attempt in range(50):
        answer = await initialize(http, urls[attempt % len(urls)])
        if answer.status_code == 503:
            assert "retry-after" in answer.headers
            return opened
        assert answer.status_code == 200, answer.text
        opened.append(answer.headers["mcp-session-id"])
    raise AssertionError("never refused")


# -- 1. one session through three nodes ------------------------------------------------------


@pytest.mark.slow
async def test_a_session_and_a_handle_serve_through_every_node(redis_server: RedisServer) -> None:
    with trio.fail_after(TIMEOUT):
        async with (
            cluster_nodes(redis_server) as (n1, n2, n3),
            httpx.AsyncClient(timeout=10) as http,
        ):
            session_id = await open_session(http, n1.url)
            assert session_id.endswith("." + n1.node_id)
            assert [await counter(http, n.url, session_id) for n in (n2, n3, n1)] == [1, 2, 3]

            # The GET stream through a non-owner carries what the owner sends.
            get_headers = {
                "accept": "text/event-stream",
                "mcp-session-id": session_id,
                "mcp-protocol-version": VERSION,
            }
            async with http.stream("GET", n2.url, headers=get_headers) as stream:
                assert stream.status_code == 200
                sent = await http.post(n1.url, json=call("notify"), headers=headers_for(session_id))
                assert rpc_message(sent.text)["result"]["content"][0]["text"] == "sent"
                with trio.fail_after(5):
                    async for line in stream.aiter_lines():
                        if line.startswith("data:") and line[5:].strip():
                            message = json.loads(line[5:])
                            assert message["method"] == "notifications/tools/list_changed"
                            break

            deleted = await http.delete(n3.url, headers=headers_for(session_id))
            assert deleted.status_code == 200, deleted.text
            for n in (n1, n2, n3):
                after = await http.post(
                    n.url, json=call("counter"), headers=headers_for(session_id)
                )
                assert after.status_code == 404, (n.node_id, after.status_code, after.text)

            # A 2026-07-28 state handle opened on node 1, used through node 2.
            async with Client(n1.url) as on_1, Client(n2.url) as on_2:
                opened = await on_1.call_tool("open_session", {})
                assert isinstance(opened.structured_content, dict)
                handle = opened.structured_content["session"]
                assert handle.endswith("." + n1.node_id)
                for expected, client in ((1, on_2), (2, on_1), (3, on_2)):
                    answer = await client.call_tool("counter", {"session": handle})
                    assert answer.structured_content == {"count": expected}


# -- 2. the cap across nodes -----------------------------------------------------------------


@pytest.mark.slow
async def test_max_sessions_holds_across_three_nodes(redis_server: RedisServer) -> None:
    with trio.fail_after(TIMEOUT):
        async with (
            cluster_nodes(redis_server, 3, "--max-sessions", "5") as nodes,
            httpx.AsyncClient(timeout=10) as http,
        ):
            urls = [n.url for n in nodes]
            opened = [await open_session(http, urls[i]) for i in (0, 1, 2, 0, 1)]
            for url in urls:
                refused = await initialize(http, url)
                assert refused.status_code == 503, (url, refused.status_code, refused.text)
                assert int(refused.headers["retry-after"]) >= 1
            assert held_sum(redis_server.port) <= 5
            deleted = await http.delete(urls[2], headers=headers_for(opened[0]))
            assert deleted.status_code == 200

            async def admitted() -> bool:
                answer = await initialize(http, urls[2])
                assert answer.status_code in (200, 503), answer.text
                return answer.status_code == 200

            took = await eventually(admitted, 3.0, "a closed session's slot admits again", 0.2)
            print(f"slot back within {took:.2f} s")
            for url in urls:
                assert (await initialize(http, url)).status_code == 503


# -- 4. kill -9 of a node ----------------------------------------------------------------------


@pytest.mark.slow
async def test_a_killed_nodes_capacity_comes_back_and_its_sessions_end_once(
    redis_server: RedisServer,
) -> None:
    # Sessions that are not durable (--store none) end with their node; durable ones are
    # activated again elsewhere (tests/test_durable_processes.py).
    cap = 4
    with trio.fail_after(TIMEOUT):
        async with (
            cluster_nodes(redis_server, 3, "--max-sessions", str(cap), "--store", "none") as (
                n1,
                n2,
                n3,
            ),
            httpx.AsyncClient(timeout=10) as http,
        ):
            victims = [await open_session(http, n1.url) for _ in range(3)]
            await open_session(http, n2.url)
            assert (await initialize(http, n3.url)).status_code == 503
            port = redis_server.port

            os.kill(n1.pid, signal.SIGKILL)
            killed = time.monotonic()

            async def freed() -> bool:
                return command(port, "HGET", "{tss}:held", n1.node_id) is None

            took = await eventually(freed, 5.0, "the killed node's slots are reaped", 0.02)
            print(f"capacity free {took:.2f} s after kill -9 (lease 1.5 s, check 0.5 s)")
            assert time.monotonic() - killed < 5.0

            again = await fill(http, [n2.url, n3.url])
            assert len(again) == cap - 1
            assert held_sum(port) <= cap
            for sid in victims:
                ends = terminal_events(port, sid)
                assert len(ends) == 1, ends
                assert (ends[0]["kind"], ends[0]["reason"]) == ("failed", "node-lost")


# -- 5. SIGSTOP beyond the lease, then SIGCONT -------------------------------------------------


@pytest.mark.slow
async def test_a_paused_node_fences_itself_and_rejoins_under_a_new_id(
    redis_server: RedisServer,
) -> None:
    cap = 4
    port = redis_server.port
    with trio.fail_after(TIMEOUT):
        async with (
            # Not durable (--store none): fencing ends them (a durable one is passivated:
            # tests/test_cluster_durable.py).
            cluster_nodes(redis_server, 3, "--max-sessions", str(cap), "--store", "none") as (
                n1,
                n2,
                _n3,
            ),
            httpx.AsyncClient(timeout=10) as http,
        ):
            mine = [await open_session(http, n1.url) for _ in range(2)]
            await open_session(http, n2.url)
            worst = held_sum(port)
            os.kill(n1.pid, signal.SIGSTOP)
            try:
                stop_until = time.monotonic() + 3.0  # lease 1.5 + check 0.5 + slack
                while time.monotonic() < stop_until:
                    worst = max(worst, held_sum(port))
                    await trio.sleep(0.05)
            finally:
                os.kill(n1.pid, signal.SIGCONT)

            async def settled() -> bool:
                nonlocal worst
                worst = max(worst, held_sum(port))
                view = await cluster_view(http, n2)
                ids = {n["id"] for n in view["nodes"]}
                if n1.node_id in ids or len(ids) != 3:
                    return False
                return all(len(terminal_events(port, sid)) >= 1 for sid in mine)

            try:
                await eventually(settled, 8.0, "the paused node left and rejoined", 0.1)
            except BaseException:
                print("view:", await cluster_view(http, n2))
                print("events:", events(port))
                raise
            for sid in mine:
                ends = terminal_events(port, sid)
                assert len(ends) == 1, ends
                assert ends[0]["reason"] in ("fenced", "node-lost"), ends

            async def rejoined() -> bool:
                nonlocal worst
                worst = max(worst, held_sum(port))
                view = await cluster_view(http, n1)
                return bool(view["node"] != n1.node_id and view["state"] == "ready")

            await eventually(rejoined, 8.0, "the paused node serves under a new id", 0.1)
            new_id = (await cluster_view(http, n1))["node"]
            admitted = await open_session(http, n1.url)
            assert admitted.endswith("." + new_id)
            assert worst <= cap, f"held {worst} slots with a cap of {cap}"
            assert held_sum(port) <= cap


# -- 6. redis-server kill -9 and restart ---------------------------------------------------------


@pytest.mark.slow
async def test_the_nodes_survive_a_store_restart(redis_server: RedisServer) -> None:
    # Sessions that are not durable (--store none) keep serving while Redis is down; a durable
    # session's change cannot be confirmed then (the next test).
    cap = 4
    port = redis_server.port
    with trio.fail_after(TIMEOUT):
        async with (
            cluster_nodes(redis_server, 3, "--max-sessions", str(cap), "--store", "none") as (
                n1,
                n2,
                n3,
            ),
            httpx.AsyncClient(timeout=10) as http,
        ):
            sid = await open_session(http, n1.url)
            assert await counter(http, n2.url, sid) == 1

            redis_server.kill9()
            try:
                assert await counter(http, n1.url, sid) == 2
                assert await counter(http, n3.url, sid) == 3

                async def refused() -> bool:
                    answer = await initialize(http, n2.url)
                    assert answer.status_code in (200, 503), answer.text
                    if answer.status_code == 200:
                        # Admitted from a spare slot the node held: fine, it counts.
                        return False
                    assert "retry-after" in answer.headers
                    return True

                await eventually(refused, 5.0, "503 while the store is down", 0.1)
            finally:
                redis_server.start()

            async def registered() -> bool:
                answer = await http.get(n2.admin + "/cluster")
                if answer.status_code != 200:
                    return False
                view = answer.json()
                owner = [n for n in view["nodes"] if n["id"] == n1.node_id]
                return bool(owner and owner[0]["sessions"] >= 1)

            await eventually(registered, 8.0, "the owner registers its session again", 0.1)

            async def admits() -> bool:
                answer = await initialize(http, n3.url)
                assert answer.status_code in (200, 503), answer.text
                return answer.status_code == 200

            took = await eventually(admits, 8.0, "new sessions after the restart", 0.2)
            print(f"admitting {took:.2f} s after the registry came back")
            assert await counter(http, n2.url, sid) == 4
            await fill(http, [n1.url, n2.url, n3.url])
            view = await cluster_view(http, n1)
            assert view["held"] <= cap and view["sessions"] <= cap, view
            assert held_sum(port) <= cap


async def test_a_durable_session_refuses_changes_while_redis_is_down(
    redis_server: RedisServer,
) -> None:
    # Write-through: while Redis is down a change cannot be confirmed, so the call that made
    # it is answered with an error, never with a count that could be lost; once Redis is
    # back, the same session goes on.
    with trio.fail_after(TIMEOUT):
        async with (
            cluster_nodes(redis_server, 2) as (n1, n2),
            httpx.AsyncClient(timeout=10) as http,
        ):
            sid = await open_session(http, n1.url)
            assert await counter(http, n1.url, sid) == 1
            redis_server.kill9()
            try:
                answer = await http.post(n1.url, json=call("counter"), headers=headers_for(sid))
                if answer.status_code == 200:
                    error = rpc_message(answer.text)["error"]
                    assert error["data"]["reason"] == "store-error", error
                else:
                    assert answer.status_code == 503, answer.text
            finally:
                redis_server.start()

            async def counts() -> bool:  # through the other node: relayed to the owner
                answer = await http.post(n2.url, json=call("counter"), headers=headers_for(sid))
                if answer.status_code != 200:
                    return False
                message = rpc_message(answer.text)
                return "result" in message and message["result"]["structuredContent"]["count"] > 1

            await eventually(counts, 10.0, "the durable session counts again", 0.2)


# -- 3. the caps under concurrency, across processes -------------------------------------------

PRINCIPALS = ["p0", "p1"]
CAP = 6
PCAP = 3
NODES = 3


def _task(tag_base: str) -> st.SearchStrategy[list[list[Any]]]:
    op = st.one_of(
        st.tuples(st.just("admit"), st.integers(0, 3), st.sampled_from([None, *PRINCIPALS])),
        st.tuples(st.just("bind"), st.integers(0, 3), st.sampled_from(PRINCIPALS)),
        st.tuples(st.just("close"), st.integers(0, 3)),
        st.tuples(st.just("sleep"), st.sampled_from([0, 0.01, 0.05])),
    )
    return st.lists(op, min_size=4, max_size=14).map(
        lambda ops: [
            [o[0], f"{tag_base}{o[1]}", *o[2:]] if o[0] != "sleep" else list(o) for o in ops
        ]
    )


PLANS = st.lists(st.lists(_task("t"), min_size=1, max_size=3), min_size=NODES, max_size=NODES)


def _readline(process: subprocess.Popen[str], deadline: float) -> str:
    assert process.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(process.stdout, selectors.EVENT_READ)
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not sel.select(left):
                raise AssertionError("a node did not answer in time")
            line = process.stdout.readline()
            if not line:
                raise AssertionError(f"a node exited with {process.poll()}")
            return line.strip()


def _merged(logs: list[Path]) -> list[tuple[float, int, str | None]]:
    rows = []
    for log in logs:
        for line in log.read_text().splitlines():
            t, delta, principal = json.loads(line)
            rows.append((float(t), int(delta), principal))
    # At equal times a release sorts first: the logged -1 comes before the slot is free.
    rows.sort(key=lambda r: (r[0], r[1]))
    return rows


def _run_plan(redis: RedisServer, prefix: str, plan: list[list[list[list[Any]]]]) -> None:
    processes: list[subprocess.Popen[str]] = []
    with tempfile.TemporaryDirectory(prefix="tss-plan-") as directory:
        folder = Path(directory)
        logs = [folder / f"log{i}" for i in range(NODES)]
        try:
            for i, tasks in enumerate(plan):
                (folder / f"plan{i}").write_text(json.dumps(tasks))
                processes.append(
                    subprocess.Popen(
                        [
                            sys.executable,
                            "-m",
                            "tests._cluster_node",
                            redis.url,
                            prefix,
                            str(CAP),
                            str(PCAP),
                            str(folder / f"plan{i}"),
                            str(logs[i]),
                        ],
                        cwd=str(REPO),
                        stdin=subprocess.PIPE,
                        stdout=subprocess.PIPE,
                        text=True,
                    )
                )
            deadline = time.monotonic() + 20
            node_ids = [_readline(p, deadline).split()[1] for p in processes]
            for p in processes:
                assert p.stdin is not None
                p.stdin.write("go\n")
                p.stdin.flush()
            for p in processes:
                assert _readline(p, deadline) == "done"

            rows = _merged(logs)
            total = 0
            per: dict[str, int] = {}
            for t, delta, principal in rows:
                if principal is None:
                    total += delta
                    assert total <= CAP, f"{total} sessions at {t} with a cap of {CAP}"
                else:
                    per[principal] = per.get(principal, 0) + delta
                    assert per[principal] <= PCAP, f"{principal}: {per[principal]} at {t}"

            # The store agrees once the nodes' records are written: sessions registered
            # equal those logged live, held slots cover them and stay within the cap.
            wait_until = time.monotonic() + 5
            while True:
                registered = sum(
                    int(str(command(redis.port, "HLEN", f"{{{prefix}}}:reg:{node}")))
                    for node in node_ids
                )
                if registered == total or time.monotonic() > wait_until:
                    break
                time.sleep(0.05)
            assert registered == total, (registered, total)
            held = held_sum(redis.port, prefix)
            assert total <= held <= CAP, (total, held)
            for principal, live in per.items():
                values = command(redis.port, "HVALS", f"{{{prefix}}}:ph:{principal}")
                assert isinstance(values, list)
                slots = sum(int(v) for v in values if isinstance(v, bytes))
                assert live <= slots <= PCAP, (principal, live, slots)
        finally:
            for p in processes:
                if p.poll() is None:
                    p.kill()
                p.wait(timeout=10)
                assert not pid_alive(p.pid)


_counter = iter(range(10**6))


@pytest.mark.slow
@settings(
    max_examples=5,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(plan=PLANS)
def test_caps_hold_across_node_processes(
    redis_server: RedisServer, plan: list[list[list[list[Any]]]]
) -> None:
    _run_plan(redis_server, f"p{next(_counter)}", plan)
