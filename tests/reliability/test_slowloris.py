"""Slowloris over real sockets: clients trickling headers or bodies to `serve_http` are cut off.

A served app on 127.0.0.1:<free port>, raw trio sockets as clients, real clock. hypercorn's
keep-alive timer runs from the moment a connection is accepted (or its last response ended)
until a request's head is complete, so `serve_http`'s ``keep_alive_timeout`` bounds how long
headers may take; the app's ``body_timeout`` bounds a body. Responses in progress (a GET stream,
a long tool call) are not subject to either. Every wait is bounded.
"""

from __future__ import annotations

import json
from urllib.parse import urlsplit

import trio

from ._support import (
    ACCEPT,
    INIT,
    INITIALIZED,
    Figures,
    _H11Client,
    http_server,
    rpc_messages,
    session_headers,
    size,
    slow_server,
    tool_call,
)

KEEP_ALIVE = 1.0
MARGIN = 1.0  # real-clock scheduling margin on a loaded 2-core machine


def _address(url: str) -> tuple[str, int, str]:
    parts = urlsplit(url)
    assert parts.hostname == "127.0.0.1" and parts.port is not None
    return parts.hostname, parts.port, parts.path


async def _trickle_until_cut(
    url: str, head: bytes, trickle: bytes, every: float, limit: float
) -> tuple[float, bytes]:
    """Send ``head``, then ``trickle`` a byte at a time every ``every`` s until the server closes
    the connection. Returns (seconds until closed, what the server sent)."""
    host, port, _ = _address(url)
    stream = await trio.open_tcp_stream(host, port)
    received = bytearray()
    started = trio.current_time()
    closed_at: float | None = None
    async with stream:
        with trio.fail_after(limit):
            async with trio.open_nursery() as nursery:

                async def trickler() -> None:
                    try:
                        await stream.send_all(head)
                        for i in range(10_000):
                            await trio.sleep(every)
                            await stream.send_all(trickle[i % len(trickle) : i % len(trickle) + 1])
                    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                        pass

                nursery.start_soon(trickler)
                try:
                    while chunk := await stream.receive_some(65536):
                        received += chunk
                except (trio.BrokenResourceError, OSError):
                    pass
                closed_at = trio.current_time()
                nursery.cancel_scope.cancel()
    assert closed_at is not None
    return closed_at - started, bytes(received)


async def test_trickled_headers_are_cut_off_by_the_keep_alive_timeout(figures: Figures) -> None:
    """Many connections trickling header bytes (one every 0.1 s, never finishing the head) are
    all closed once ``keep_alive_timeout`` has passed, and the server answers others meanwhile."""
    n = size(20, 200, 500)
    async with http_server(app_options={"keep_alive_timeout": KEEP_ALIVE}) as (sup, url):
        head = b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        cuts: list[float] = []
        answers: list[bytes] = []

        async def slowloris() -> None:
            cut, sent = await _trickle_until_cut(
                url, head, b"X-Slow: aaaaaaaa\r\n", 0.1, KEEP_ALIVE + 10 * MARGIN
            )
            cuts.append(cut)
            answers.append(sent)

        async with trio.open_nursery() as nursery:
            for _ in range(n):
                nursery.start_soon(slowloris)
            await trio.sleep(KEEP_ALIVE / 2)
            # While they trickle, a normal client is served.
            client = _H11Client(*_address(url))
            try:
                with trio.fail_after(5):
                    status, headers, _ = await client.request("POST", INIT, ACCEPT)
            finally:
                await client.aclose()
            assert status == 200
            assert headers["mcp-session-id"] in sup

        figures.update(
            connections=n, keep_alive_s=KEEP_ALIVE, first_cut_s=min(cuts), last_cut_s=max(cuts)
        )
        assert len(cuts) == n
        assert min(cuts) >= KEEP_ALIVE - 0.05, "cut before the timeout"
        assert max(cuts) <= KEEP_ALIVE + MARGIN, "a trickling client held its connection"
        # No request was ever dispatched: nothing but (at most) an error status was sent.
        assert all(not sent or sent.startswith(b"HTTP/1.1 4") for sent in answers)
        assert sup.statistics().created_total == 1


async def test_trickled_body_is_cut_off_by_the_body_timeout(figures: Figures) -> None:
    """A complete head, then a body trickled a byte every 0.1 s: 408 after ``body_timeout``."""
    body_timeout = 1.0
    options = {"keep_alive_timeout": KEEP_ALIVE, "body_timeout": body_timeout}
    async with http_server(app_options=options) as (sup, url):
        host, port, path = _address(url)
        body = json.dumps(INIT).encode()
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
            "Content-Type: application/json\r\n"
            "Accept: application/json, text/event-stream\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        cut, sent = await _trickle_until_cut(url, head, body, 0.1, body_timeout + 10 * MARGIN)
        figures.update(body_timeout_s=body_timeout, cut_s=cut)
        assert sent.startswith(b"HTTP/1.1 408"), sent[:200]
        assert body_timeout - 0.05 <= cut <= body_timeout + KEEP_ALIVE + MARGIN
        assert sup.statistics().created_total == 0


async def test_responses_in_progress_outlive_the_keep_alive_timeout() -> None:
    """A silent client waiting on a slow tool call or holding a GET stream is not cut off."""
    keep_alive = 0.5
    async with http_server(slow_server(), app_options={"keep_alive_timeout": keep_alive}) as (
        sup,
        url,
    ):
        host, port, path = _address(url)
        client = _H11Client(host, port, path)
        try:
            with trio.fail_after(10):
                status, headers, _ = await client.request("POST", INIT, ACCEPT)
                assert status == 200
                session_id = headers["mcp-session-id"]
                status, _, _ = await client.request(
                    "POST", INITIALIZED, session_headers(session_id)
                )
                assert status == 202
            # The GET stream: its head arrives, then the client is silent for 3 keep-alives.
            stream = await trio.open_tcp_stream(host, port)
            async with stream:
                await stream.send_all(
                    (
                        f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
                        "Accept: text/event-stream\r\n"
                        f"Mcp-Session-Id: {session_id}\r\n"
                        "MCP-Protocol-Version: 2025-11-25\r\n\r\n"
                    ).encode()
                )
                with trio.fail_after(5):
                    first = await stream.receive_some(65536)
                assert first.startswith(b"HTTP/1.1 200"), first[:200]
                # A tool call lasting three keep-alive timeouts, on a silent connection.
                with trio.fail_after(10):
                    status, headers, body = await client.request(
                        "POST",
                        tool_call("sleep", {"seconds": 3 * keep_alive}, request_id=2),
                        session_headers(session_id),
                    )
                assert status == 200
                [message] = rpc_messages(headers.get("content-type", ""), body)
                assert message["result"]["content"][0]["text"] == "slept"
                # The GET stream is still open (nothing, not EOF, comes in).
                with trio.move_on_after(0.2):
                    more = await stream.receive_some(65536)
                    assert more, "the GET stream was closed"
        finally:
            await client.aclose()
        assert session_id in sup


async def test_read_timeout_cuts_a_silent_get_stream() -> None:
    """Why ``read_timeout`` stays off by default: it bounds every read, also while a response
    streams, so a GET stream whose client (rightly) sends nothing is cut when it passes."""
    read_timeout = 0.5
    async with http_server(app_options={"read_timeout": read_timeout}) as (_sup, url):
        host, port, path = _address(url)
        client = _H11Client(host, port, path)
        try:
            with trio.fail_after(10):
                status, headers, _ = await client.request("POST", INIT, ACCEPT)
                session_id = headers["mcp-session-id"]
                await client.request("POST", INITIALIZED, session_headers(session_id))
        finally:
            await client.aclose()
        head = (
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAccept: text/event-stream\r\n"
            f"Mcp-Session-Id: {session_id}\r\nMCP-Protocol-Version: 2025-11-25\r\n\r\n"
        ).encode()
        stream = await trio.open_tcp_stream(host, port)
        async with stream:
            await stream.send_all(head)
            started = trio.current_time()
            with trio.fail_after(read_timeout + 5 * MARGIN):
                try:
                    while await stream.receive_some(65536):
                        pass
                except (trio.BrokenResourceError, OSError):
                    pass
            assert trio.current_time() - started >= read_timeout - 0.05
        assert status == 200
