"""Request checks of the HTTP front end: Host/Origin, path, POST headers, bodies, JSON-RPC shapes.

A check that refuses a request answers it with a JSON-RPC error body (see `_asgi._rpc_error`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

import trio
from mcp_types import INVALID_REQUEST

from ._asgi import ASGIMessage, Receive, Scope, Send, _header, _rpc_error

__all__ = ["DEFAULT_ALLOWED_HOSTS", "DEFAULT_ALLOWED_ORIGINS", "DEFAULT_MAX_BODY_SIZE"]

logger = logging.getLogger("supervisor.mcp")

#: Host header values accepted by default: loopback names, any port.
DEFAULT_ALLOWED_HOSTS: tuple[str, ...] = (
    "127.0.0.1",
    "127.0.0.1:*",
    "localhost",
    "localhost:*",
    "[::1]",
    "[::1]:*",
)

#: Origin header values accepted by default (a request without Origin is always accepted).
DEFAULT_ALLOWED_ORIGINS: tuple[str, ...] = tuple(
    f"{scheme}://{host}"
    for scheme in ("http", "https")
    for host in ("127.0.0.1", "127.0.0.1:*", "localhost", "localhost:*", "[::1]", "[::1]:*")
)

#: Largest accepted request body (4 MiB, as the SDK).
DEFAULT_MAX_BODY_SIZE = 4 * 1024 * 1024


def _allowed(value: str, patterns: Iterable[str]) -> bool:
    for pattern in patterns:
        if pattern == "*" or pattern == value:
            return True
        if pattern.endswith(":*"):
            base = pattern[:-1]
            port = value[len(base) :]
            if value.startswith(base) and port.isascii() and port.isdigit():
                return True
    return False


def _path_ok(path: str | None, scope: Scope) -> bool:
    """Whether the request is for ``path`` (``None``: any path), a trailing slash aside."""
    if path is None:
        return True
    requested = str(scope.get("path", ""))
    return requested == path or requested.rstrip("/") == path.rstrip("/")


def _origin_ok(scope: Scope, allowed_hosts: Iterable[str], allowed_origins: Iterable[str]) -> bool:
    """Whether Host and Origin (when sent) are allowed: DNS rebinding protection."""
    host = _header(scope, b"host")
    if host is not None and not _allowed(host, allowed_hosts):
        logger.warning("refused request with Host %r", host[:100])
        return False
    origin = _header(scope, b"origin")
    if origin is not None and not _allowed(origin, allowed_origins):
        logger.warning("refused request with Origin %r", origin[:100])
        return False
    return True


#: The Accept values clients send most, and whether they list JSON and SSE (the fast path).
_COMMON_ACCEPTS: dict[str, tuple[bool, bool]] = {
    "application/json, text/event-stream": (True, True),
    "text/event-stream, application/json": (True, True),
    "application/json,text/event-stream": (True, True),
    "application/json": (True, False),
    "*/*": (True, True),
}


def _accepts(accept: str) -> tuple[bool, bool]:
    """(lists JSON, lists SSE) for an Accept header, with RFC 7231 wildcards."""
    known = _COMMON_ACCEPTS.get(accept)
    if known is not None:
        return known
    types = [part.split(";")[0].strip().lower() for part in accept.split(",")]
    anything = "*/*" in types
    has_json = anything or "application/json" in types or "application/*" in types
    has_sse = anything or "text/event-stream" in types or "text/*" in types
    return has_json, has_sse


async def _post_headers_ok(scope: Scope, send: Send, *, json_response: bool) -> bool:
    """Content-Type and Accept of a POST (answered here so every refusal is JSON-RPC)."""
    content_type = _header(scope, b"content-type") or ""
    if (
        content_type != "application/json"
        and content_type.split(";")[0].strip().lower() != "application/json"
    ):
        await _rpc_error(
            send,
            415,
            INVALID_REQUEST,
            "Unsupported Media Type: Content-Type must be application/json",
        )
        return False
    has_json, has_sse = _accepts(_header(scope, b"accept") or "")
    if not has_json or (not json_response and not has_sse):
        await _rpc_error(
            send,
            406,
            INVALID_REQUEST,
            "Not Acceptable: Accept must list application/json and text/event-stream",
        )
        return False
    return True


class _BodyTooLarge(Exception):
    pass


def _queued(receive: Receive) -> Callable[[], ASGIMessage] | None:
    """``receive_nowait`` of the channel behind ``receive``, if it is a trio memory channel's.

    hypercorn's trio worker hands the app its channel's bound ``receive``, and queues a small
    body before the app first runs: it is then read at once, with no timer and no yield.
    """
    if getattr(receive, "__func__", None) is trio.MemoryReceiveChannel.receive:
        nowait: Callable[[], ASGIMessage] = getattr(receive, "__self__").receive_nowait  # noqa: B009
        return nowait
    return None


class _Body:
    """A request body being read: its chunks so far and their size."""

    __slots__ = ("chunks", "size")

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.size = 0

    def take(self, message: ASGIMessage, limit: int) -> tuple[bytes, bool] | None:
        """Add one message: (body, disconnected) once the body is whole, else None."""
        kind = message["type"]
        if kind == "http.disconnect":
            return b"".join(self.chunks), True
        if kind != "http.request":  # pragma: no cover - not in the ASGI spec
            return None
        chunk = bytes(message.get("body", b""))
        self.size += len(chunk)
        if self.size > limit:
            raise _BodyTooLarge
        if not message.get("more_body", False):
            if not self.chunks:
                return chunk, False
            self.chunks.append(chunk)
            return b"".join(self.chunks), False
        self.chunks.append(chunk)
        return None


def _read_queued(
    nowait: Callable[[], ASGIMessage], limit: int, body: _Body
) -> tuple[bytes, bool] | None:
    """The body from messages already queued, or None when the rest must be waited for."""
    while True:
        try:
            message = nowait()
        except trio.WouldBlock:
            return None
        read = body.take(message, limit)
        if read is not None:
            return read


async def _read_body(receive: Receive, limit: int, body: _Body) -> tuple[bytes, bool]:
    """Read the rest of the request body; returns (body, disconnected)."""
    while True:
        read = body.take(await receive(), limit)
        if read is not None:
            return read


async def _read_request_body(
    scope: Scope, receive: Receive, send: Send, *, limit: int, within: float
) -> bytes | None:
    """The request body, or None when answered here (413, 408) or the client left."""
    declared = _header(scope, b"content-length")
    if declared is not None and declared.isascii() and declared.isdigit() and int(declared) > limit:
        await _rpc_error(send, 413, INVALID_REQUEST, "Payload Too Large")
        return None
    body: bytes | None = None
    disconnected = False
    reading = _Body()
    nowait = _queued(receive)
    if nowait is not None:
        try:
            read = _read_queued(nowait, limit, reading)
        except _BodyTooLarge:
            await _rpc_error(send, 413, INVALID_REQUEST, "Payload Too Large")
            return None
        if read is not None:
            return None if read[1] else read[0]
    with trio.move_on_after(within):
        try:
            body, disconnected = await _read_body(receive, limit, reading)
        except _BodyTooLarge:
            await _rpc_error(send, 413, INVALID_REQUEST, "Payload Too Large")
            return None
    if body is None:
        logger.warning("request body not received within %s s", within)
        await _rpc_error(send, 408, INVALID_REQUEST, "Request Timeout: body too slow")
        return None
    return None if disconnected else body


def _is_initialize(decoded: Any) -> bool:
    """Whether a parsed body is an ``initialize`` request."""
    return (
        isinstance(decoded, dict)
        and decoded.get("method") == "initialize"
        and "id" in decoded
        and decoded.get("jsonrpc") == "2.0"
    )
