"""Durable sessions across real processes, the acceptance checks of issue 13.

- One ``serve --store sqlite:///...`` process: the demo's ``counter`` answers 1, 2, 3 in a
  handshake-era session (the official client, ``mode="legacy"``) and through a 2026-07-28
  handle (the official client's default mode); the server is killed with SIGKILL and started
  again on the same file; the same ``Mcp-Session-Id`` and the same handle continue at 4.
- Three ``serve --cluster`` nodes on one redis-server (the cluster's Redis is their store by
  default): counter 1, 2, 3 on the owner, kill -9 the owner, the next call through another node
  answers 4, for a protocol session and a handle.

Everything binds 127.0.0.1 on free ports; every wait is bounded; every process is stopped by
its PID (in ``serve_process``'s ``finally``) and checked gone.
"""

from __future__ import annotations

import itertools
import os
import signal
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import httpx2
import pytest
import trio
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from ._mcp_helpers import count, open_handle
from ._redis import RedisServer, pid_alive, redis_server_fixture  # noqa: F401
from ._serve import ACCEPT, ServeProcess, rpc_message, serve_process, tool_call
from .test_cluster_processes import Node, cluster_nodes, eventually

TIMEOUT = 60  # seconds, per test; generous for a loaded 2-core machine
VERSION = "2025-11-25"  # what the official client negotiates in legacy mode


# -- helpers ---------------------------------------------------------------------------------


@asynccontextmanager
async def legacy_client(url: str) -> AsyncIterator[tuple[Client, list[str]]]:
    """The official client in the handshake era, and the ``Mcp-Session-Id`` values the server
    answered with (read off the responses: the SDK does not expose its session id). It does not
    DELETE its session on the way out, as a client that merely went away (or that outlives the
    server) would not."""
    ids: list[str] = []

    async def seen(response: httpx2.Response) -> None:
        sid = response.headers.get("mcp-session-id")
        if sid and sid not in ids:
            ids.append(sid)

    async with (
        httpx2.AsyncClient(event_hooks={"response": [seen]}) as http,
        Client(
            streamable_http_client(url, http_client=http, terminate_on_close=False),
            mode="legacy",
        ) as client,
    ):
        assert client.protocol_version == VERSION
        yield client, ids


#: JSON-RPC ids of the raw requests: unique, as requests in flight in one session must be.
_REQUEST_IDS = itertools.count(100)


def session_headers(session_id: str) -> dict[str, str]:
    return {**ACCEPT, "mcp-session-id": session_id, "mcp-protocol-version": VERSION}


async def raw_count(http: httpx.AsyncClient, url: str, session_id: str) -> httpx.Response:
    """One ``counter`` call in the protocol session ``session_id``, as a client that kept the
    id across the server's restart sends it (the SDK client cannot be given an id)."""
    request = tool_call(next(_REQUEST_IDS), "counter")
    return await http.post(url, json=request, headers=session_headers(session_id))


def counted(response: httpx.Response) -> int:
    assert response.status_code == 200, (response.status_code, response.text[:500])
    value = rpc_message(response.text)["result"]["structuredContent"]["count"]
    assert isinstance(value, int)
    return value


@asynccontextmanager
async def announced(*args: str) -> AsyncIterator[ServeProcess]:
    """`serve_process` that waits for the whole startup banner (the admin line and the cluster
    line come after the URL)."""
    async with serve_process(*args, ready="Ctrl-C stops") as serve:
        serve.url = serve.line_after("serving MCP on")
        yield serve


def kill9(serve: ServeProcess) -> float:
    """SIGKILL the server; the monotonic time it was sent."""
    os.kill(serve.pid, signal.SIGKILL)
    return time.monotonic()


async def wait_gone(serve: ServeProcess) -> None:
    with trio.fail_after(10):
        await serve.process.wait()
    assert not pid_alive(serve.pid)


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"no {name} in the scrape")


# -- 1. one node, the embedded store, kill -9 and start again ----------------------------------


@pytest.mark.slow
async def test_a_restarted_server_continues_both_eras_at_4(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    store = ("--store", f"sqlite:///{db}", "--admin-port", "0")
    pids: list[int] = []
    with trio.fail_after(TIMEOUT):
        try:
            async with announced(*store) as first:
                pids.append(first.pid)
                assert f"durable sessions in SQLite file {db}" in first.output
                async with legacy_client(first.url) as (legacy, ids):
                    assert [await count(legacy) for _ in range(3)] == [1, 2, 3]
                [session_id] = ids
                async with Client(first.url) as modern:
                    assert modern.protocol_version == "2026-07-28"
                    handle = await open_handle(modern)
                    assert [await count(modern, handle) for _ in range(3)] == [1, 2, 3]
                killed = kill9(first)
                await wait_gone(first)
                assert "supervisor stopped" not in first.output  # no graceful exit: killed

            # The same file, a new process: the lock of the dead one is gone with it.
            async with (
                announced(*store) as second,
                httpx.AsyncClient(timeout=10) as http,
            ):
                pids.append(second.pid)
                started = time.monotonic()
                assert counted(await raw_count(http, second.url, session_id)) == 4
                answered = time.monotonic()
                async with Client(second.url) as modern:
                    assert await count(modern, handle) == 4
                    assert await count(modern, handle) == 5
                assert counted(await raw_count(http, second.url, session_id)) == 5
                # Another client's request without the id is a new session (from 1).
                async with legacy_client(second.url) as (other, other_ids):
                    assert await count(other) == 1
                assert other_ids != [session_id]

                admin = second.line_after("admin endpoint on")
                scrape = (await http.get(admin + "/metrics")).text
                assert metric(scrape, "supervisor_sessions_activated_total") == 2
                assert metric(scrape, "supervisor_sessions_created_total") == 1
                print(
                    f"restart to 4: {started - killed:.2f} s from kill -9 until the new server "
                    f"listened, first call (activation) {answered - started:.3f} s"
                )
                second.signal(signal.SIGTERM)
                with trio.fail_after(15):
                    assert await second.wait() == 0
                summary = next(x for x in second.output.splitlines() if "stopped" in x)
                # The two activated ones and the new one are passivated for the next process.
                assert "durable: 3 passivated, 2 activated, 0 restarted" in summary, summary
        finally:
            for pid in pids:
                assert not pid_alive(pid), f"serve process {pid} still runs"


@pytest.mark.slow
async def test_a_second_server_on_the_same_file_is_refused(tmp_path: Path) -> None:
    store = ("--store", f"sqlite:///{tmp_path / 's.db'}")
    with trio.fail_after(TIMEOUT):
        async with serve_process(*store) as first:
            async with serve_process(*store, ready=None) as second:
                with trio.fail_after(20):
                    assert await second.wait() == 1
                err = second.stderr.decode(errors="replace")
                assert "error:" in err and str(first.pid) in err, err
                assert "Traceback" not in err
            assert first.process.returncode is None  # the first one serves on


# -- 2. three nodes on one Redis, kill -9 the owner -------------------------------------------


@asynccontextmanager
async def demo_nodes(redis: RedisServer, count: int = 3) -> AsyncIterator[list[Node]]:
    """``count`` demo servers in one cluster, durable in the cluster's Redis by default."""
    async with cluster_nodes(redis, count, app=None) as nodes:
        for node in nodes:
            assert "durable sessions in the cluster's Redis at" in node.serve.output
        yield nodes


async def activations(http: httpx.AsyncClient, nodes: list[Node]) -> float:
    """``supervisor_sessions_activated_total`` summed over ``nodes``."""
    total = 0.0
    for node in nodes:
        scrape = await http.get(node.admin + "/metrics")
        assert scrape.status_code == 200, scrape.text[:200]
        total += metric(scrape.text, "supervisor_sessions_activated_total")
    return total


@pytest.mark.slow
async def test_a_killed_owners_sessions_continue_at_4_on_another_node(
    redis_server: RedisServer,
) -> None:
    """Counter 1, 2, 3 on the owner; kill -9 it; requests through the two other nodes at the
    same time: the first answer is 4, no number is given twice, and the session was activated
    once (on one of them; the other relays to it)."""
    with trio.fail_after(TIMEOUT):
        async with (
            demo_nodes(redis_server) as (n1, n2, n3),
            httpx.AsyncClient(timeout=10) as http,
        ):
            async with legacy_client(n1.url) as (legacy, ids):
                assert [await count(legacy) for _ in range(3)] == [1, 2, 3]
            [session_id] = ids
            assert session_id.endswith("." + n1.node_id)
            async with Client(n1.url) as modern:
                handle = await open_handle(modern)
                assert [await count(modern, handle) for _ in range(3)] == [1, 2, 3]
            assert handle.endswith("." + n1.node_id)

            killed = kill9(n1.serve)
            await wait_gone(n1.serve)
            counts: list[int] = []
            refused: list[int] = []

            async def through(node: Node) -> None:
                response = await raw_count(http, node.url, session_id)
                if response.status_code == 200:
                    counts.append(counted(response))
                else:
                    refused.append(response.status_code)

            async def continued() -> bool:
                async with trio.open_nursery() as nursery:  # both survivors at once
                    nursery.start_soon(through, n2)
                    nursery.start_soon(through, n3)
                return bool(counts)

            took = await eventually(continued, 10.0, "the session answers through node 2 or 3")
            assert sorted(counts) == list(range(4, 4 + len(counts))), counts
            assert set(refused) <= {503}, refused  # while the dead owner's lease lasts
            assert await activations(http, [n2, n3]) == 1
            after = 4 + len(counts)
            assert counted(await raw_count(http, n2.url, session_id)) == after
            assert counted(await raw_count(http, n3.url, session_id)) == after + 1
            async with Client(n3.url) as modern:
                assert await count(modern, handle) == 4
            async with Client(n2.url) as modern:
                assert await count(modern, handle) == 5
            assert await activations(http, [n2, n3]) == 2
            print(
                f"kill -9 of the owner to 4 through another node: {took:.2f} s "
                f"({len(refused)} answered 503 before); from the kill "
                f"{time.monotonic() - killed:.2f} s to here"
            )
