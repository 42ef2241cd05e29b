"""``python -m supervisor serve`` as an operator runs it: a subprocess on free loopback ports with
the admin endpoint, JSON logs, the official client, an idle session expiring, metrics that move,
and SIGTERM: exit 0 within the grace period with a summary.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from mcp import Client

REPO = Path(__file__).resolve().parents[1]
TIMEOUT = 40  # seconds; generous for a loaded 2-core machine
SHUTDOWN_GRACE = 5.0  # SupervisorConfig.shutdown_grace's default, which serve uses

INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-11-25",
        "capabilities": {},
        "clientInfo": {"name": "test_ops_serve", "version": "0"},
    },
}
INITIALIZED = {"jsonrpc": "2.0", "method": "notifications/initialized"}
ACCEPT = {"accept": "application/json, text/event-stream"}


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample in a Prometheus text exposition (0 if absent)."""
    wanted = ",".join(f'{key}="{value}"' for key, value in labels.items())
    pattern = re.escape(name) + (r"\{" + re.escape(wanted) + r"\}" if labels else "") + r" (\S+)"
    match = re.search(r"^" + pattern + r"$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


class Serve:
    """The ``serve`` subprocess and what it printed."""

    def __init__(self, process: trio.Process) -> None:
        self.process = process
        self.stdout = b""

    async def read_until(self, marker: bytes) -> None:
        assert self.process.stdout is not None
        while marker not in self.stdout:
            chunk = await self.process.stdout.receive_some(4096)
            assert chunk, f"serve exited early; it printed {self.stdout.decode()!r}"
            self.stdout += chunk

    def url_after(self, prefix: str) -> str:
        for line in self.stdout.decode().splitlines():
            if line.strip().startswith(prefix):
                return line.split()[-1]
        raise AssertionError(f"no line starting with {prefix!r} in {self.stdout.decode()!r}")


async def wait_for_event(http: httpx.AsyncClient, admin: str, kind: str, session: str) -> None:
    """Read the admin event stream until ``session`` (an id prefix) has a ``kind`` event."""
    async with http.stream("GET", admin + "/events") as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            frame = json.loads(line)
            if frame["type"] == "event" and frame["kind"] == kind and frame["session"] == session:
                return
    raise AssertionError("event stream ended")  # pragma: no cover


async def test_serve_admin_metrics_logs_and_sigterm() -> None:
    with trio.fail_after(TIMEOUT):
        process = await trio.lowlevel.open_process(
            [
                sys.executable,
                "-m",
                "supervisor",
                "serve",
                "--port",
                "0",
                "--admin-port",
                "0",
                "--idle-timeout",
                "0.5",
                "--log-level",
                "info",
                "--log-format",
                "json",
            ],
            cwd=str(REPO),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        serve = Serve(process)
        stderr = b""
        try:
            await serve.read_until(b"Ctrl-C stops")
            url = serve.url_after("serving MCP on")
            admin = serve.url_after("admin endpoint on")
            assert url.startswith("http://127.0.0.1:") and url.endswith("/mcp")
            assert admin.startswith("http://127.0.0.1:")
            assert f"python -m supervisor top --url {admin}" in serve.stdout.decode()

            async with httpx.AsyncClient(timeout=10) as http:
                # The official client: one session, three calls, DELETE on the way out.
                async with Client(url, mode="legacy") as client:
                    for expected in (1, 2, 3):
                        result = await client.call_tool("counter", {})
                        assert result.structured_content == {"count": expected}
                    metrics = (await http.get(admin + "/metrics")).text
                    assert sample(metrics, "supervisor_sessions_created_total") == 1
                    assert sample(metrics, "supervisor_sessions", state="ready") == 1
                    by_transport = "supervisor_sessions_by_transport"
                    assert sample(metrics, by_transport, transport="http") == 1
                    snapshot = (await http.get(admin + "/sessions")).json()
                    [row] = snapshot["sessions"]
                    assert (row["transport"], row["state"], len(row["id"])) == ("http", "ready", 8)

                # A client that initializes and goes quiet: its session expires on its own.
                opened = await http.post(url, json=INITIALIZE, headers=ACCEPT)
                assert opened.status_code == 200
                session_id = opened.headers["mcp-session-id"]
                headers = {**ACCEPT, "mcp-session-id": session_id}
                await http.post(url, json=INITIALIZED, headers=headers)
                await wait_for_event(http, admin, "expired", session_id[:8])

                metrics = (await http.get(admin + "/metrics")).text
                assert sample(metrics, "supervisor_sessions_created_total") == 2
                assert sample(metrics, "supervisor_sessions_closed_total") == 1
                assert sample(metrics, "supervisor_sessions_expired_total") == 1
                assert sample(metrics, "supervisor_sessions_live") == 0
                ended = "supervisor_sessions_ended_total"
                assert sample(metrics, ended, kind="expired", reason="idle-timeout") == 1
                assert sample(metrics, ended, kind="closed", reason="client-delete") == 1
                assert sample(metrics, "supervisor_session_duration_seconds_count") == 2
                posts = sample(
                    metrics,
                    "supervisor_mcp_request_duration_seconds_count",
                    method="POST",
                    status="200",
                )
                assert posts >= 5  # initialize x2, list/call tools; notifications answer 202
                assert "process_resident_memory_bytes" in metrics
                feed = (await http.get(admin + "/sessions")).text
                assert session_id not in feed and session_id not in metrics

            with trio.move_on_after(SHUTDOWN_GRACE + 5) as waited:
                process.send_signal(signal.SIGTERM)
                await serve.read_until(b"supervisor stopped")
                assert await process.wait() == 0
            assert not waited.cancelled_caught, "serve did not exit within the grace period"
            assert process.stderr is not None
            while chunk := await process.stderr.receive_some(65536):
                stderr += chunk
        finally:
            if process.returncode is None:  # pragma: no cover - only when the test failed
                process.kill()
                await process.wait()

    out = serve.stdout.decode()
    assert "received SIGTERM, shutting down" in out
    assert out.strip().splitlines()[-1] == (
        "supervisor stopped: 2 sessions created, 1 closed, 1 expired, 0 failed, 0 rejected"
    )
    # Logs: one JSON object per line; lifecycle events with the id prefix, never the full id.
    records: list[dict[str, Any]] = [json.loads(line) for line in stderr.decode().splitlines()]
    lifecycle = [r for r in records if r["logger"] == "supervisor.sessions"]
    mine = [r for r in lifecycle if r.get("session") == session_id[:8]]
    assert [r["event"] for r in mine] == ["created", "initialized", "expired"]
    assert mine[-1]["reason"] == "idle-timeout"
    assert all(r["transport"] == "http" and r["level"] == "info" for r in mine)
    assert session_id not in stderr.decode()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--admin-port", "0", "--admin-host", "0.0.0.0"], "needs a token"),
        (["--stdio", "--top"], "--top draws on stdout"),
    ],
)
async def test_serve_refuses_unsafe_operator_options(argv: list[str], message: str) -> None:
    with trio.fail_after(TIMEOUT):
        env = {k: v for k, v in os.environ.items() if k != "SUPERVISOR_ADMIN_TOKEN"}
        result = await trio.run_process(
            [sys.executable, "-m", "supervisor", "serve", "--port", "0", *argv],
            cwd=str(REPO),
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            env=env,
        )
    assert result.returncode == 2
    assert message in result.stderr.decode()
