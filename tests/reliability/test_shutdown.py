"""Shutdown under load: SIGTERM while calls are in flight.

In process: a SIGTERM delivered to this process (caught with ``trio.open_signal_receiver``, as
the CLI does) starts ``sup.shutdown(grace)`` and stops the HTTP server while short and long tool
calls are in flight. Short calls (well inside the grace period) must complete; long ones must
end with an error or a cut-off response by the end of the grace period; nothing hangs; every
session gets exactly one terminal event.

Subprocess: ``python -m supervisor serve`` gets a real SIGTERM under the same load and must exit
0 within its grace period, reporting as many sessions ended as created.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from functools import partial
from typing import Any

import httpx
import pytest
import trio

from supervisor import Event, EventKind, Lagged, open_supervisor
from supervisor.mcp import serve_http

from ._support import (
    ACCEPT,
    INIT,
    INITIALIZED,
    REPO,
    Figures,
    rpc_messages,
    session_headers,
    slow_server,
    tool_call,
)

GRACE = 1.0
SHORT = 0.3  # seconds a short call takes: finishes inside the grace period
LONG = 60.0  # a long call: must be cut at the grace period
MARGIN = 2.0


async def load(
    http: httpx.AsyncClient, url: str, n_sessions: int, outcomes: Counter[str], started: trio.Event
) -> None:
    """n sessions, each with one short and one long call in flight."""
    ready = 0

    async def one_session() -> None:
        nonlocal ready
        opened = await http.post(url, json=INIT, headers=ACCEPT)
        assert opened.status_code == 200
        headers = session_headers(opened.headers["mcp-session-id"])
        await http.post(url, json=INITIALIZED, headers=headers)

        async def call(seconds: float, kind: str) -> None:
            nonlocal ready
            ready += 1
            if ready == 2 * n_sessions:
                started.set()
            t0 = trio.current_time()
            try:
                response = await http.post(
                    url,
                    json=tool_call("sleep", {"seconds": seconds}, request_id=int(seconds * 10)),
                    headers=headers,
                )
                messages = rpc_messages(response.headers.get("content-type", ""), response.content)
                ok = response.status_code == 200 and any(
                    m.get("result", {}).get("content", [{}])[0].get("text") == "slept"
                    for m in messages
                )
                rpc_error = any("error" in m for m in messages)
                outcome = (
                    "ok" if ok else "rpc-error" if rpc_error else f"http-{response.status_code}"
                )
            except (httpx.HTTPError, OSError, ValueError) as exc:
                outcome = f"error-{type(exc).__name__}"
            outcomes[f"{kind}:{outcome}"] += 1
            outcomes[f"{kind}:worst-ms"] = max(
                outcomes[f"{kind}:worst-ms"], int(1000 * (trio.current_time() - t0))
            )

        async with trio.open_nursery() as calls:
            calls.start_soon(call, SHORT, "short")
            calls.start_soon(call, LONG, "long")

    async with trio.open_nursery() as nursery:
        for _ in range(n_sessions):
            nursery.start_soon(one_session)


async def sigterm_scenario(n_sessions: int) -> dict[str, Any]:
    outcomes: Counter[str] = Counter()
    terminal: dict[str, list[Event]] = {}
    with trio.fail_after(30), trio.open_signal_receiver(signal.SIGTERM) as signals:
        async with (
            open_supervisor(max_sessions=64, shutdown_grace=GRACE) as sup,
            sup.subscribe(
                kinds=[EventKind.CLOSED, EventKind.EXPIRED, EventKind.FAILED], buffer=1000
            ) as events,
            trio.open_nursery() as nursery,
        ):
            stop = trio.Event()
            url: str = await nursery.start(
                partial(serve_http, sup, slow_server, port=0, shutdown_trigger=stop.wait)
            )

            async def collect() -> None:
                async for item in events:
                    if not isinstance(item, Lagged):
                        terminal.setdefault(item.session_id, []).append(item)

            nursery.start_soon(collect)
            started = trio.Event()
            async with httpx.AsyncClient(timeout=httpx.Timeout(30.0)) as http:
                async with trio.open_nursery() as clients:
                    clients.start_soon(load, http, url, n_sessions, outcomes, started)
                    await started.wait()
                    await trio.sleep(0.1)  # every call is in its tool now
                    os.kill(os.getpid(), signal.SIGTERM)
                    async for _signum in signals:
                        break
                    t0 = trio.current_time()
                    stop.set()
                    await sup.shutdown()
                    shutdown_s = trio.current_time() - t0
                clients_done_s = trio.current_time() - t0
            created = sup.statistics().created_total
    return {
        "outcomes": outcomes,
        "terminal": terminal,
        "created": created,
        "shutdown_s": shutdown_s,
        "clients_done_s": clients_done_s,
    }


async def test_sigterm_while_calls_are_in_flight(figures: Figures) -> None:
    """Nothing hangs, every call ends, every session gets exactly one terminal event."""
    n_sessions = 20
    result = await sigterm_scenario(n_sessions)
    outcomes, terminal = result["outcomes"], result["terminal"]
    figures.update(
        sessions=n_sessions,
        calls_in_flight=2 * n_sessions,
        shutdown_s=result["shutdown_s"],
        clients_done_s=result["clients_done_s"],
        outcomes=dict(outcomes),
        terminal_events=sum(len(v) for v in terminal.values()),
    )
    assert result["created"] == n_sessions
    assert len(terminal) == n_sessions and all(len(v) == 1 for v in terminal.values())
    assert result["shutdown_s"] <= GRACE + MARGIN
    assert result["clients_done_s"] <= GRACE + MARGIN
    ended = sum(v for k, v in outcomes.items() if not k.endswith("worst-ms"))
    assert ended == 2 * n_sessions  # every call came back, one way or another
    assert outcomes["long:ok"] == 0  # cut at the grace period


async def test_sigterm_lets_short_calls_finish_and_answers_long_ones(figures: Figures) -> None:
    n_sessions = 10
    result = await sigterm_scenario(n_sessions)
    outcomes = result["outcomes"]
    figures.update(sessions=n_sessions, outcomes=dict(outcomes))
    assert outcomes["short:ok"] == n_sessions, dict(outcomes)
    assert outcomes["long:rpc-error"] == n_sessions, dict(outcomes)


async def test_cli_exits_on_sigterm_under_load(figures: Figures) -> None:
    n_sessions = 10
    outcomes: Counter[str] = Counter()
    with trio.fail_after(60):
        process = await trio.lowlevel.open_process(
            [
                sys.executable,
                "-m",
                "supervisor",
                "serve",
                "--port",
                "0",
                "--app",
                "tests.reliability._support:slow_server",
            ],
            cwd=str(REPO),
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        assert process.stdout is not None
        try:
            buffer = b""
            while b"\n" not in buffer:
                chunk = await process.stdout.receive_some(4096)
                assert chunk, "serve exited before printing its URL"
                buffer += chunk
            url = buffer.split(b"\n", 1)[0].decode().rsplit(" ", 1)[1]
            started = trio.Event()
            async with httpx.AsyncClient(timeout=httpx.Timeout(30.0)) as http:
                async with trio.open_nursery() as clients:
                    clients.start_soon(load, http, url, n_sessions, outcomes, started)
                    await started.wait()
                    await trio.sleep(0.2)
                    t0 = time.monotonic()
                    process.send_signal(signal.SIGTERM)
                    output = buffer
                    while chunk := await process.stdout.receive_some(4096):
                        output += chunk
                    code = await process.wait()
                    exit_s = time.monotonic() - t0
        finally:
            if process.returncode is None:  # pragma: no cover - only when the test failed
                process.kill()
                await process.wait()
    summary = output.decode().strip().splitlines()[-1]
    figures.update(
        sessions=n_sessions, exit_code=code, exit_s=exit_s, outcomes=dict(outcomes), summary=summary
    )
    assert code == 0
    assert exit_s <= 5.0 + MARGIN  # the CLI's shutdown grace is the default 5 s
    created, ended = _totals(summary)
    assert created == ended == n_sessions
    assert outcomes["long:ok"] == 0


def _totals(summary: str) -> tuple[int, int]:
    # "supervisor stopped: N sessions created, C closed, E expired, F failed, R rejected"
    words = summary.replace(",", "").split()
    numbers: dict[str, Any] = {
        words[i + 1]: int(words[i]) for i in range(len(words) - 1) if words[i].isdigit()
    }
    return numbers["sessions"], numbers["closed"] + numbers["expired"] + numbers["failed"]


pytestmark = pytest.mark.filterwarnings("ignore::ResourceWarning")
