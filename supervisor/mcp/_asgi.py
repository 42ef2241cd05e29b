"""The ASGI vocabulary of the HTTP and WebSocket front ends: types, headers, plain responses.

The bottom of the front end's modules: the others import it, it imports none of them.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any, TypeAlias

Scope: TypeAlias = MutableMapping[str, Any]
ASGIMessage: TypeAlias = MutableMapping[str, Any]
Receive: TypeAlias = Callable[[], Awaitable[ASGIMessage]]
Send: TypeAlias = Callable[[ASGIMessage], Awaitable[None]]


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return bytes(value).decode("latin-1")
    return None


async def _respond(
    send: Send,
    status: int,
    body: bytes = b"",
    *,
    content_type: str | None = "application/json",
    headers: Sequence[tuple[str, str]] = (),
) -> None:
    raw: list[tuple[bytes, bytes]] = []
    if content_type is not None and body:
        raw.append((b"content-type", content_type.encode()))
    raw.extend((k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers)
    raw.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def _rpc_error(
    send: Send,
    status: int,
    code: int,
    message: str,
    *,
    data: Any = None,
    headers: Sequence[tuple[str, str]] = (),
) -> None:
    error: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        error["data"] = data
    body = json.dumps({"jsonrpc": "2.0", "id": None, "error": error}).encode()
    await _respond(send, status, body, headers=headers)
