"""``python -m supervisor serve`` as an operator runs it: a subprocess on free loopback ports with
the admin endpoint, JSON logs, the official client, an idle session expiring, metrics that move,
SIGTERM (exit 0 within the grace period with a summary) and a second signal (cancel at once);
and as it is put in front of real users: a named Host and Origin, bearer tokens from a file or
from an ``--auth`` verifier. Every process binds 127.0.0.1 and is stopped by its PID.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from mcp import Client

from supervisor._cli import FORCE_EXIT_AFTER
from tests._serve import (
    ACCEPT,
    HANG_STARTED,
    INITIALIZE,
    INITIALIZED,
    REPO,
    rpc_message,
    serve_process,
    tool_call,
)

TIMEOUT = 40  # seconds; generous for a loaded 2-core machine
SHUTDOWN_GRACE = 5.0  # SupervisorConfig.shutdown_grace's default, which serve uses
#: How soon after a second signal the process must be gone: well inside the grace period, so
#: only a real "cancel at once" passes.
AT_ONCE = 3.0


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample in a Prometheus text exposition (0 if absent)."""
    wanted = ",".join(f'{key}="{value}"' for key, value in labels.items())
    pattern = re.escape(name) + (r"\{" + re.escape(wanted) + r"\}" if labels else "") + r" (\S+)"
    match = re.search(r"^" + pattern + r"$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


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
        async with serve_process(
            "--admin-port",
            "0",
            "--idle-timeout",
            "0.5",
            "--log-level",
            "info",
            "--log-format",
            "json",
            ready="Ctrl-C stops",
        ) as serve:
            url = serve.line_after("serving MCP on")
            admin = serve.line_after("admin endpoint on")
            assert url.startswith("http://127.0.0.1:") and url.endswith("/mcp")
            assert admin.startswith("http://127.0.0.1:")
            assert f"python -m supervisor top --url {admin}" in serve.output

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
                    era="handshake",
                    method="POST",
                    status="200",
                )
                assert posts >= 5  # initialize x2, list/call tools; notifications answer 202
                assert "process_resident_memory_bytes" in metrics
                feed = (await http.get(admin + "/sessions")).text
                assert session_id not in feed and session_id not in metrics

            with trio.move_on_after(SHUTDOWN_GRACE + 5) as waited:
                serve.signal(signal.SIGTERM)
                assert await serve.wait() == 0
            assert not waited.cancelled_caught, "serve did not exit within the grace period"

    out = serve.output
    assert "received SIGTERM, shutting down" in out
    assert out.strip().splitlines()[-1] == (
        "supervisor stopped: 2 sessions created, 1 closed, 1 expired, 0 failed, 0 rejected"
    )
    # Logs: one JSON object per line; lifecycle events with the id prefix, never the full id.
    stderr = serve.stderr.decode()
    records: list[dict[str, Any]] = [json.loads(line) for line in stderr.splitlines()]
    lifecycle = [r for r in records if r["logger"] == "supervisor.sessions"]
    mine = [r for r in lifecycle if r.get("session") == session_id[:8]]
    assert [r["event"] for r in mine] == ["created", "initialized", "expired"]
    assert mine[-1]["reason"] == "idle-timeout"
    assert all(r["transport"] == "http" and r["level"] == "info" for r in mine)
    # No log line and no operator message carries more than the 8-character prefix.
    for text in (stderr, out):
        for line in text.splitlines():
            assert not any(session_id[i : i + 9] in line for i in range(len(session_id) - 8))


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


# -- a second signal ---------------------------------------------------------------------------


async def open_session(
    http: httpx.AsyncClient, url: str, headers: dict[str, str] | None = None
) -> dict[str, str]:
    """Initialize a session; the headers that address it."""
    base = {**ACCEPT, **(headers or {})}
    opened = await http.post(url, json=INITIALIZE, headers=base)
    assert opened.status_code == 200, (opened.status_code, opened.text)
    assert "result" in rpc_message(opened.text)
    session = {**base, "mcp-session-id": opened.headers["mcp-session-id"]}
    done = await http.post(url, json=INITIALIZED, headers=session)
    assert done.status_code == 202
    return session


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_a_second_signal_cancels_an_in_flight_call_at_once(signum: signal.Signals) -> None:
    name = signum.name
    with trio.fail_after(TIMEOUT):
        async with (
            serve_process("--app", "tests._serve:hanging_server") as serve,
            httpx.AsyncClient(timeout=httpx.Timeout(TIMEOUT)) as http,
        ):
            session = await open_session(http, serve.url)
            call_ended = trio.Event()

            async def hang() -> None:
                try:
                    await http.post(serve.url, json=tool_call(2, "hang"), headers=session)
                except httpx.HTTPError:
                    pass  # the connection closes under it: what "at once" means here
                finally:
                    call_ended.set()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(hang)
                await serve.read_until(HANG_STARTED.encode(), stderr=True)
                serve.signal(signum)
                # The first signal drains: the call is still in flight, the process still up.
                await serve.read_until(f"received {name}, shutting down".encode())
                assert serve.process.returncode is None and not call_ended.is_set()
                started = time.monotonic()
                serve.signal(signum)
                with trio.move_on_after(AT_ONCE) as waited:
                    code = await serve.wait()
                    await call_ended.wait()
                elapsed = time.monotonic() - started
                assert not waited.cancelled_caught, (
                    f"serve still running {AT_ONCE} s after the second {name} "
                    f"(grace is {SHUTDOWN_GRACE} s); printed {serve.output!r}"
                )
    assert code == 0, (serve.output, serve.stderr.decode()[-3000:])
    assert elapsed < SHUTDOWN_GRACE
    lines = serve.output.strip().splitlines()
    assert f"received {name} again, cancelling what is left" in lines
    assert lines[-1].startswith("supervisor stopped: 1 sessions created, ")
    assert lines[-1].endswith(" 0 rejected")


async def test_sigterm_stops_stdio_cleanly_while_the_client_is_connected() -> None:
    # The client keeps stdin open: serve must not die in the interpreter's shutdown (SIGABRT
    # from a thread still blocked reading stdin).
    with trio.fail_after(TIMEOUT):
        async with serve_process(stdio=True) as serve:
            await serve.send(INITIALIZE)
            await serve.read_until(b'"id":1')
            await serve.send(INITIALIZED)
            await serve.send(tool_call(2, "echo", text="still here"))
            await serve.read_until(b"still here")
            serve.signal(signal.SIGTERM)
            code = await serve.wait()
    assert code == 0, serve.stderr.decode()[-2000:]
    lines = serve.stderr.decode().strip().splitlines()
    assert lines[-1] == (
        "supervisor stopped: 1 sessions created, 1 closed, 0 expired, 0 failed, 0 rejected"
    )


async def test_a_second_signal_cancels_an_in_flight_stdio_call_at_once() -> None:
    with trio.fail_after(TIMEOUT):
        async with serve_process("--app", "tests._serve:hanging_server", stdio=True) as serve:
            await serve.send(INITIALIZE)
            await serve.read_until(b'"id":1')
            await serve.send(INITIALIZED)
            await serve.send(tool_call(2, "hang"))
            await serve.read_until(HANG_STARTED.encode(), stderr=True)
            serve.signal(signal.SIGTERM)
            await serve.read_until(b"received SIGTERM, shutting down", stderr=True)
            started = time.monotonic()
            serve.signal(signal.SIGTERM)
            with trio.move_on_after(AT_ONCE) as waited:
                code = await serve.wait()
            assert not waited.cancelled_caught, serve.stderr.decode()
            elapsed = time.monotonic() - started
    assert code == 0, serve.stderr.decode()[-4000:]
    assert elapsed < SHUTDOWN_GRACE
    # The operator's messages are on stderr: stdout carries the protocol only.
    lines = serve.stderr.decode().strip().splitlines()
    assert "received SIGTERM again, cancelling what is left" in lines
    assert lines[-1].startswith("supervisor stopped: 1 sessions created, ")
    for line in serve.output.splitlines():
        assert json.loads(line)["jsonrpc"] == "2.0"


async def test_serve_exits_anyway_when_something_ignores_the_second_signal() -> None:
    with trio.fail_after(TIMEOUT):
        async with (
            serve_process("--app", "tests._serve:hanging_server") as serve,
            httpx.AsyncClient(timeout=httpx.Timeout(TIMEOUT)) as http,
        ):
            session = await open_session(http, serve.url)

            async def hang() -> None:
                with contextlib.suppress(httpx.HTTPError):
                    await http.post(serve.url, json=tool_call(2, "hang_shielded"), headers=session)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(hang)
                await serve.read_until(HANG_STARTED.encode(), stderr=True)
                serve.signal(signal.SIGTERM)
                await serve.read_until(b"received SIGTERM, shutting down")
                started = time.monotonic()
                serve.signal(signal.SIGTERM)
                with trio.move_on_after(FORCE_EXIT_AFTER + AT_ONCE) as waited:
                    code = await serve.wait()
                assert not waited.cancelled_caught, serve.output
                elapsed = time.monotonic() - started
                nursery.cancel_scope.cancel()
    assert code == 1
    assert elapsed >= FORCE_EXIT_AFTER - 0.5
    assert serve.output.strip().splitlines()[-1] == (
        f"error: still running {FORCE_EXIT_AFTER:g} s after the second signal "
        "(something ignores cancellation); exiting now"
    )


# -- in front of real users: a named host, an origin, bearer tokens ----------------------------

PUBLIC = {"host": "mcp.example.com", "origin": "https://mcp.example.com"}


def bearer(token: str) -> dict[str, str]:
    return {**PUBLIC, "authorization": f"Bearer {token}"}


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "tokens"
    path.write_text("# who may use the server\nalice-token alice\n\nbob-token bob\n")
    return path


@pytest.mark.parametrize("auth", ["token-file", "verifier"])
async def test_a_named_host_reaches_serve_with_a_token_and_is_refused_without(
    token_file: Path, auth: str
) -> None:
    if auth == "token-file":
        auth_args = ["--auth-token-file", str(token_file)]
    else:
        auth_args = ["--auth", "tests._serve:verify_token"]
    with trio.fail_after(TIMEOUT):
        async with (
            serve_process(
                "--allowed-hosts",
                "mcp.example.com",
                "--allowed-origins",
                "https://mcp.example.com",
                *auth_args,
                "--app",
                "tests._serve:hanging_server",
            ) as serve,
            httpx.AsyncClient(timeout=10) as http,
        ):
            assert serve.url.startswith("http://127.0.0.1:")  # loopback, whatever Host says
            url = serve.url
            # With a token: initialize, then tools work.
            session = await open_session(http, url, bearer("alice-token"))
            listed = await http.post(
                url, json={"jsonrpc": "2.0", "id": 2, "method": "tools/list"}, headers=session
            )
            assert listed.status_code == 200
            names = {tool["name"] for tool in rpc_message(listed.text)["result"]["tools"]}
            assert {"echo", "hang"} <= names
            called = await http.post(url, json=tool_call(3, "echo", text="hi"), headers=session)
            assert called.status_code == 200
            assert rpc_message(called.text)["result"]["content"][0]["text"] == "hi"

            # Without a token, with a wrong one, or not as a bearer: refused, no session.
            for headers in (
                PUBLIC,
                bearer("wrong-token"),
                bearer("alice-token-but-longer"),
                {**PUBLIC, "authorization": "Basic YWxpY2UtdG9rZW46"},
                {**PUBLIC, "authorization": "alice-token"},
            ):
                refused = await http.post(url, json=INITIALIZE, headers={**ACCEPT, **headers})
                assert refused.status_code == 401, headers
                assert refused.headers["www-authenticate"].startswith("Bearer")
                assert "mcp-session-id" not in refused.headers
            # The session is bound to alice: bob's token cannot use it.
            stolen = {**session, **bearer("bob-token")}
            used = await http.post(url, json=tool_call(4, "echo", text="x"), headers=stolen)
            assert used.status_code == 404
            # The allowed host and origin replace the loopback defaults.
            for headers in (
                {**bearer("alice-token"), "origin": "https://evil.example"},
                {**bearer("alice-token"), "host": "evil.example"},
            ):
                refused = await http.post(url, json=INITIALIZE, headers={**ACCEPT, **headers})
                assert refused.status_code == 403, headers


async def test_a_named_host_is_refused_without_allowed_hosts(token_file: Path) -> None:
    with trio.fail_after(TIMEOUT):
        async with (
            serve_process("--auth-token-file", str(token_file)) as serve,
            httpx.AsyncClient(timeout=10) as http,
        ):
            headers = {**ACCEPT, **bearer("alice-token")}
            refused = await http.post(serve.url, json=INITIALIZE, headers=headers)
            assert refused.status_code == 403
            # Loopback still works with the token, and needs it.
            await open_session(http, serve.url, {"authorization": "Bearer alice-token"})
            anonymous = await http.post(serve.url, json=INITIALIZE, headers=ACCEPT)
            assert anonymous.status_code == 401


async def test_sessions_per_principal_are_limited(token_file: Path) -> None:
    with trio.fail_after(TIMEOUT):
        async with (
            serve_process(
                "--auth-token-file", str(token_file), "--max-sessions-per-principal", "1"
            ) as serve,
            httpx.AsyncClient(timeout=10) as http,
        ):
            alice = {"authorization": "Bearer alice-token"}
            await open_session(http, serve.url, alice)
            second = await http.post(serve.url, json=INITIALIZE, headers={**ACCEPT, **alice})
            assert second.status_code == 503
            assert "retry-after" in second.headers
            await open_session(http, serve.url, {"authorization": "Bearer bob-token"})
