"""The operator surface in both protocol eras: metrics, ``/sessions`` and ``top`` (issue 10).

A 2026-07-28 client (the official ``mcp.Client`` in its default mode) has no protocol session;
it opens a state handle (a session of the core) and passes it back. A legacy client has its
protocol session. Both are served by one `McpHttpApp` in memory (``httpx2.ASGITransport``)
wrapped by the metrics middleware, as ``serve --admin-port`` wraps it; deadlines on MockClock.
"""

from __future__ import annotations

import json
import logging
import re
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from io import StringIO
from typing import Any

import httpx
import httpx2
import pytest
import trio
import trio.testing
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._stream_protocols import ReadStream, WriteStream
from mcp.shared.message import SessionMessage
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS, MODERN_PROTOCOL_VERSIONS
from rich.console import Console

from supervisor import Supervisor, Transport, open_supervisor
from supervisor._ops._admin import AdminApp
from supervisor._ops._feed import event_frame, session_era, snapshot_frame
from supervisor._ops._logging import log_events
from supervisor._ops._metrics import KNOWN_REASONS, MODERN_ERAS, OperatorMetrics
from supervisor._ops._top import TopModel, render
from supervisor.mcp import HANDLE_ERA, McpHttpApp, create_demo_server, open_in_process_streams
from tests._serve import serve_process

from ._mcp_helpers import count, open_handle

URL = "http://127.0.0.1:8000/mcp"
REQUESTS = "supervisor_mcp_requests_total"
DURATION = "supervisor_mcp_request_duration_seconds_count"


def value(metrics: OperatorMetrics, name: str, **labels: str) -> float:
    found = metrics.registry.get_sample_value(name, labels)
    return 0.0 if found is None else found


@asynccontextmanager
async def http_client(app: Any, mode: str) -> AsyncIterator[Client]:
    transport = httpx2.ASGITransport(app=app)
    async with (
        httpx2.AsyncClient(transport=transport) as http,
        Client(streamable_http_client(URL, http_client=http), mode=mode) as client,
    ):
        yield client


class _InProcess:
    """A client ``Transport`` over `open_in_process_streams`."""

    def __init__(self, sup: Supervisor) -> None:
        self._cm = open_in_process_streams(sup, create_demo_server())

    async def __aenter__(
        self,
    ) -> tuple[ReadStream[SessionMessage | Exception], WriteStream[SessionMessage]]:
        connection = await self._cm.__aenter__()
        return connection.read_stream, connection.write_stream

    async def __aexit__(self, *exc_info: Any) -> None:
        await self._cm.__aexit__(*exc_info)


async def admin_get(app: AdminApp, path: str) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8001") as http:
        return await http.get(path)


def text_of(model: TopModel, now: float, width: int = 140) -> str:
    console = Console(file=StringIO(), width=width, record=True, color_system=None)
    console.print(render(model, now, height=40))
    return console.export_text()


async def test_requests_are_counted_by_era_and_sessions_shown_with_theirs(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_supervisor(max_sessions=8, idle_timeout=600) as sup:
        metrics = OperatorMetrics(sup, process=False)
        app = metrics.timed(McpHttpApp(sup, create_demo_server()))
        admin = AdminApp(sup, metrics)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(metrics.run)
            await trio.testing.wait_all_tasks_blocked()
            async with http_client(app, "auto") as modern, http_client(app, "legacy") as legacy:
                assert modern.session.protocol_version == HANDLE_ERA
                # Without a handle: the SDK's stateless path, no session, but counted.
                assert [await count(modern), await count(modern)] == [1, 1]
                assert len(sup) == 1  # only the legacy client's protocol session
                sessionless = value(metrics, REQUESTS, era=HANDLE_ERA, handle="no")
                assert sessionless >= 2
                handle = await open_handle(modern)
                assert [await count(modern, handle) for _ in range(3)] == [1, 2, 3]
                assert [await count(legacy), await count(legacy)] == [1, 2]

                assert value(metrics, REQUESTS, era=HANDLE_ERA, handle="yes") == 3
                assert value(metrics, REQUESTS, era=HANDLE_ERA, handle="no") == sessionless + 1
                handshake = value(metrics, REQUESTS, era="handshake", handle="no")
                assert handshake >= 4  # initialize, initialized, 2 calls (and a list)
                assert value(metrics, REQUESTS, era="handshake", handle="yes") == 0
                modern_timed = value(metrics, DURATION, method="POST", status="200", era=HANDLE_ERA)
                assert modern_timed == sessionless + 4
                assert value(metrics, DURATION, method="POST", status="200", era="handshake") > 0
                assert value(metrics, "supervisor_sessions_by_kind", kind="handle") == 1
                assert value(metrics, "supervisor_sessions_by_kind", kind="protocol") == 1
                text = metrics.exposition().decode()
                assert f'{REQUESTS}{{era="{HANDLE_ERA}",handle="yes"}} 3.0' in text

                snapshot = (await admin_get(admin, "/sessions")).json()
                rows = {row["id"]: row for row in snapshot["sessions"]}
                assert set(map(len, rows)) == {8}
                assert handle[:8] in rows
                assert handle not in json.dumps(snapshot)
                by_handle = rows.pop(handle[:8])
                assert (by_handle["era"], by_handle["state_handle"]) == (HANDLE_ERA, True)
                [protocol] = rows.values()
                assert protocol["state_handle"] is False
                assert protocol["era"] == legacy.session.protocol_version
                assert protocol["era"] in HANDSHAKE_PROTOCOL_VERSIONS
                assert snapshot["stats"]["by_kind"] == {"handle": 1, "protocol": 1}

                model = TopModel("http://127.0.0.1:8001")
                model.apply(snapshot, now=0.0)
                view = text_of(model, now=0.0)
                short = str(protocol["era"])[:7]
                assert re.search(rf"{handle[:8]}\s+-\s+http\s+handle\s+ready", view), view
                assert re.search(rf"{protocol['id']}\s+-\s+http\s+{short}\s+ready", view), view
                assert re.search(r"handles\s+1\b", view) and re.search(r"protocol\s+1\b", view)

                closed = await modern.call_tool("close_session", {"session": handle})
                assert not closed.is_error
                assert value(metrics, REQUESTS, era=HANDLE_ERA, handle="yes") == 4
                await trio.sleep(1)
                ended = "supervisor_sessions_ended_total"
                assert value(metrics, ended, kind="closed", reason="closed-by-client") == 1
                assert value(metrics, "supervisor_sessions_by_kind", kind="handle") == 0
            nursery.cancel_scope.cancel()
        sup.close_all()


async def test_a_modern_client_in_process_has_a_connection_and_handles(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Over a duplex stream the 2026-07-28 client's connection is a session of that era too,
    # but not a handle: the kinds tell them apart.
    async with open_supervisor(max_sessions=8) as sup:
        metrics = OperatorMetrics(sup, process=False)
        async with Client(_InProcess(sup)) as client:
            handle = await open_handle(client)
            assert await count(client, handle) == 1
            frame = snapshot_frame(sup)
            rows = {row["id"]: row for row in frame["sessions"]}
            assert rows[handle[:8]]["state_handle"] is True
            others = [row for key, row in rows.items() if key != handle[:8]]
            assert [(row["era"], row["state_handle"]) for row in others] == [(HANDLE_ERA, False)]
            assert frame["stats"]["by_kind"] == {"handle": 1, "protocol": 1}
            assert value(metrics, "supervisor_sessions_by_kind", kind="handle") == 1
            assert value(metrics, "supervisor_sessions_by_kind", kind="protocol") == 1
            assert session_era(sup.get_session(handle)) == HANDLE_ERA
        sup.close_all()


async def test_a_session_that_has_negotiated_nothing_is_of_the_handshake_era(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def silent(ctx: Any) -> None:
        await trio.sleep_forever()

    async with open_supervisor() as sup:
        session = sup.create_session_nowait(silent, transport=Transport.HTTP)
        await trio.testing.wait_all_tasks_blocked()
        [row] = snapshot_frame(sup)["sessions"]
        assert (row["era"], row["state_handle"]) == ("handshake", False)
        async with sup.subscribe() as events:
            sup.close_session(session.id)
            async for item in events:
                frame = event_frame(item)  # type: ignore[arg-type]
                assert (frame["era"], frame["state_handle"]) == ("handshake", False)
                break


def _request(version: str | None, body: bytes, chunks: int = 1) -> tuple[dict[str, Any], list[Any]]:
    headers = [(b"content-type", b"application/json")]
    if version is not None:
        headers.append((b"mcp-protocol-version", version.encode()))
    scope = {"type": "http", "method": "POST", "path": "/mcp", "headers": headers}
    size = max(1, len(body) // chunks + 1)
    parts = [body[i : i + size] for i in range(0, len(body), size)] or [b""]
    messages: list[Any] = [
        {"type": "http.request", "body": part, "more_body": i < len(parts) - 1}
        for i, part in enumerate(parts)
    ]
    return scope, messages


def _call(arguments: dict[str, Any]) -> bytes:
    params = {"name": "counter", "arguments": arguments}
    return json.dumps(
        {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": params}
    ).encode()


@pytest.mark.parametrize(
    ("version", "body", "chunks", "era", "handle"),
    [
        (HANDLE_ERA, _call({"session": "h" * 32}), 1, HANDLE_ERA, "yes"),
        (HANDLE_ERA, _call({"session": "h" * 32}), 7, HANDLE_ERA, "yes"),  # body in pieces
        (HANDLE_ERA, _call({}), 1, HANDLE_ERA, "no"),
        (HANDLE_ERA, _call({"text": '"session": "x"'}), 1, HANDLE_ERA, "no"),
        (HANDLE_ERA, _call({"session": 5}), 1, HANDLE_ERA, "no"),
        (HANDLE_ERA, b'{"session": not json', 1, HANDLE_ERA, "no"),
        ("2025-11-25", _call({"session": "h" * 32}), 1, "handshake", "yes"),
        ("2025-11-25", _call({}), 1, "handshake", "no"),
        (None, _call({}), 1, "handshake", "no"),
        ("1999-01-01", _call({}), 1, "handshake", "no"),  # any other value: one label value
    ],
)
async def test_the_middleware_labels_era_and_handle_from_header_and_body(
    version: str | None, body: bytes, chunks: int, era: str, handle: str
) -> None:
    async with open_supervisor() as sup:
        metrics = OperatorMetrics(sup, process=False)

        async def app(scope: Any, receive: Any, send: Any) -> None:
            while (await receive()).get("more_body"):
                pass
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"{}"})

        scope, messages = _request(version, body, chunks)
        sent: list[Any] = []

        async def receive() -> Any:
            return messages.pop(0)

        async def send(message: Any) -> None:
            sent.append(message)

        await metrics.timed(app)(scope, receive, send)
        assert sent[0]["status"] == 200
        assert value(metrics, REQUESTS, era=era, handle=handle) == 1
        total = sum(
            value(metrics, REQUESTS, era=e, handle=h)
            for e in ("handshake", *MODERN_ERAS)
            for h in ("yes", "no")
        )
        assert total == 1
        assert value(metrics, DURATION, method="POST", status="200", era=era) == 1


def test_modern_eras_are_the_handle_era_and_handle_closes_are_a_known_reason() -> None:
    # Kept in step with the SDK (the metrics do not import it), and with the handles' era.
    assert frozenset(MODERN_PROTOCOL_VERSIONS) == MODERN_ERAS
    assert HANDLE_ERA in MODERN_ERAS
    assert "closed-by-client" in KNOWN_REASONS


def test_top_shows_the_era_column_and_the_kinds() -> None:
    model = TopModel("x")
    stats = {"total": 3, "max_sessions": 10, "by_kind": {"handle": 2, "protocol": 1}}
    base = {"principal": None, "transport": "http", "state": "ready", "age": 1.0, "idle": 1.0}
    rows = [
        {**base, "id": "Hh111111", "era": HANDLE_ERA, "state_handle": True},
        {**base, "id": "Pp222222", "era": "2025-11-25", "state_handle": False},
        {**base, "id": "Nn333333", "era": "handshake", "state_handle": False},
    ]
    model.apply({"type": "snapshot", "stats": stats, "sessions": rows}, now=0.0)
    created = {"type": "event", "kind": "created", "session": "Cc444444", "wall": 0.0}
    model.apply({**created, "transport": "stdio", "state": "created", "era": HANDLE_ERA}, now=0.0)
    text = text_of(model, now=0.0)
    assert re.search(r"Hh111111\s+-\s+http\s+handle\s+ready", text), text
    assert re.search(r"Pp222222\s+-\s+http\s+2025-11\s+ready", text), text
    assert re.search(r"Nn333333\s+-\s+http\s+-\s+ready", text), text
    assert re.search(r"Cc444444\s+-\s+stdio\s+2026-07\s+created", text), text
    assert re.search(r"handles\s+2\b", text) and re.search(r"protocol\s+1\b", text)
    assert "by kind" in text
    # The negotiated version arrives with the `initialized` event, before the next snapshot.
    initialized = {**created, "kind": "initialized", "state": "ready", "era": "2025-06-18"}
    fresh = {**created, "session": "Ii555555", "transport": "http", "era": "handshake"}
    model.apply({**fresh, "state": "created"}, now=0.0)
    assert re.search(r"Ii555555\s+-\s+http\s+-\s+created", text_of(model, now=0.0))
    model.apply({**initialized, "session": "Ii555555", "transport": "http"}, now=0.0)
    assert re.search(r"Ii555555\s+-\s+\S+\s+2025-06\s+ready", text_of(model, now=0.0))


def sample(text: str, name: str, **labels: str) -> float:
    """One sample of a Prometheus text exposition (labels in its sorted order; 0 if absent)."""
    wanted = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    pattern = re.escape(name) + (r"\{" + re.escape(wanted) + r"\}" if labels else "") + r" (\S+)"
    match = re.search(r"^" + pattern + r"$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


async def test_serve_counts_both_eras_on_its_admin_endpoint() -> None:
    # The real wiring: `python -m supervisor serve --admin-port 0` on loopback, both clients.
    with trio.fail_after(40):
        async with (
            serve_process("--admin-port", "0", ready="Ctrl-C stops") as serve,
            httpx.AsyncClient(timeout=10) as http,
        ):
            url = serve.line_after("serving MCP on")
            admin = serve.line_after("admin endpoint on")
            async with Client(url) as modern, Client(url, mode="legacy") as legacy:
                assert modern.session.protocol_version == HANDLE_ERA
                assert await count(modern) == 1  # sessionless: no handle, still counted
                handle = await open_handle(modern)
                assert [await count(modern, handle) for _ in range(2)] == [1, 2]
                assert [await count(legacy) for _ in range(2)] == [1, 2]
                metrics = (await http.get(admin + "/metrics")).text
                requests = "supervisor_mcp_requests_total"
                assert sample(metrics, requests, era=HANDLE_ERA, handle="yes") == 2
                assert sample(metrics, requests, era=HANDLE_ERA, handle="no") >= 2
                assert sample(metrics, requests, era="handshake", handle="no") >= 4
                timed = "supervisor_mcp_request_duration_seconds_count"
                assert sample(metrics, timed, era=HANDLE_ERA, method="POST", status="200") >= 4
                kinds = "supervisor_sessions_by_kind"
                assert sample(metrics, kinds, kind="handle") == 1
                assert sample(metrics, kinds, kind="protocol") == 1
                rows = (await http.get(admin + "/sessions")).json()["sessions"]
                eras = {row["id"]: (row["era"], row["state_handle"]) for row in rows}
                assert eras.pop(handle[:8]) == (HANDLE_ERA, True)
                assert list(eras.values()) == [(legacy.session.protocol_version, False)]
                assert handle not in metrics
            serve.signal(signal.SIGTERM)
            assert await serve.wait() == 0


async def test_lifecycle_logs_carry_the_era_of_handles_and_protocol_sessions(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="supervisor.sessions")
    async with open_supervisor(max_sessions=8) as sup:
        app = McpHttpApp(sup, create_demo_server())
        async with trio.open_nursery() as nursery:
            nursery.start_soon(log_events, sup)
            await trio.testing.wait_all_tasks_blocked()
            async with http_client(app, "auto") as modern, http_client(app, "legacy") as legacy:
                handle = await open_handle(modern)
                await count(legacy)
                version = legacy.session.protocol_version
                protocol = next(s.id for s in sup.sessions() if s.id != handle)
                await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()
        sup.close_all()
    records = [r for r in caplog.records if r.name == "supervisor.sessions"]

    def fields(session_id: str) -> list[tuple[str, Any, Any]]:
        return [
            (r.getMessage(), getattr(r, "era", None), getattr(r, "state_handle", None))
            for r in records
            if getattr(r, "session", None) == session_id[:8]
            and r.getMessage() in ("session created", "session initialized")
        ]

    assert fields(handle) == [
        ("session created", HANDLE_ERA, True),
        ("session initialized", HANDLE_ERA, True),
    ]
    assert fields(protocol) == [
        ("session created", None, None),  # nothing negotiated yet: no era to tell
        ("session initialized", version, None),
    ]
