"""Serving `McpHttpApp` with hypercorn: `serve_http`, its hypercorn configuration, GC tuning."""

from __future__ import annotations

import gc
import logging
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from functools import partial
from typing import TYPE_CHECKING, Any

import trio

from ._http import McpHttpApp
from ._session import ServerSource

if TYPE_CHECKING:
    from .. import Supervisor

__all__ = ["serve_http"]

logger = logging.getLogger("supervisor.mcp")

#: Seconds a connection may stay idle between requests; it also bounds how long a client may take
#: to send a request's headers (hypercorn's idle timer runs until the head is complete), so a
#: client trickling headers is cut off after this long.
_KEEP_ALIVE_TIMEOUT = 5.0

#: The young-generation threshold of CPython's garbage collector while `serve_http` runs (the
#: interpreter's default is 700). See `serve_http`.
_GC_THRESHOLD = 20_000


async def serve_http(
    supervisor: Supervisor,
    server: ServerSource,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    path: str = "/mcp",
    shutdown_trigger: Callable[[], Awaitable[None]] | None = None,
    wrap: Callable[[McpHttpApp], Any] | None = None,
    graceful_timeout: float | None = None,
    keep_alive_timeout: float = _KEEP_ALIVE_TIMEOUT,
    backlog: int = 1024,
    read_timeout: float | None = None,
    gc_threshold: int | None = _GC_THRESHOLD,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
    **app_options: Any,
) -> None:
    """Serve `McpHttpApp` with ``hypercorn.trio.serve`` until cancelled or ``shutdown_trigger``.

    ``port=0`` picks a free port. ``task_status.started(url)`` reports the endpoint URL (e.g.
    ``http://127.0.0.1:54321/mcp``) once the socket is listening, so
    ``url = await nursery.start(partial(serve_http, sup, server, port=0))`` works. Other
    keywords go to `McpHttpApp`.

    Returning does not close the supervisor's sessions: that is the supervisor's block's job.
    For a graceful stop, fire ``shutdown_trigger`` and call ``sup.shutdown()`` concurrently:
    hypercorn stops listening and waits up to ``graceful_timeout`` (default: the supervisor's
    ``shutdown_grace`` plus one second) for open requests, while the sessions let theirs finish
    within the grace period and answer the rest with a JSON-RPC error.

    Args:
        wrap: Called with the app; its result (an ASGI middleware around it) is served instead.
        graceful_timeout: Seconds hypercorn waits for open connections after the trigger.
        keep_alive_timeout: Seconds a connection may be idle before its next request's headers
            are complete: an idle keep-alive connection, and a client trickling its headers
            (slowloris), are closed after this long. Open responses (a GET stream, a long tool
            call) are not affected. A slow body is bounded by the app's ``body_timeout``.
        backlog: connections the kernel queues before hypercorn accepts them (hypercorn's
            default is 100; a burst of clients beyond it is reset by the kernel).
        read_timeout: hypercorn's ``read_timeout``: seconds any single read from a client may
            wait, *including* while a response is being streamed, when clients are silent.
            Leave it ``None`` (the default) unless no GET stream or request ever lasts that
            long: with it set, such a connection is cut when the timeout passes.
        gc_threshold: While serving, raise the young-generation threshold of CPython's garbage
            collector to at least this (``None``: leave the collector alone). With thousands of
            sessions the live heap holds millions of objects; at the interpreter's default
            (700) the objects of requests in flight keep being promoted and trigger a full
            collection every second or so, each one stalling the server for about as long as
            the heap is large. The previous thresholds are restored on return.
    """
    from hypercorn.config import Config
    from hypercorn.trio import serve

    app = McpHttpApp(supervisor, server, path=path, **app_options)
    served: Any = app if wrap is None else wrap(app)
    config = Config()
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.accesslog = None
    config.errorlog = logger
    if graceful_timeout is None:
        graceful_timeout = supervisor.config.shutdown_grace + 1.0
    config.graceful_timeout = graceful_timeout
    if not keep_alive_timeout > 0:
        raise ValueError("keep_alive_timeout must be a positive number of seconds")
    config.keep_alive_timeout = keep_alive_timeout
    if not backlog > 0:
        raise ValueError("backlog must be a positive number of connections")
    config.backlog = backlog
    if read_timeout is not None and not read_timeout > 0:
        raise ValueError("read_timeout must be a positive number of seconds or None")
    config.read_timeout = read_timeout  # type: ignore[assignment]  # hypercorn says int
    with _gc_tuned(gc_threshold):
        async with trio.open_nursery() as nursery:
            binds: list[str] = await nursery.start(
                partial(serve, served, config, shutdown_trigger=shutdown_trigger)
            )
            task_status.started(binds[0] + path)


_gc_users = 0
_gc_saved: tuple[int, int, int] | None = None


@contextmanager
def _gc_tuned(threshold: int | None) -> Iterator[None]:
    """Raise the collector's young threshold to ``threshold`` while any server runs."""
    global _gc_users, _gc_saved
    if threshold is None:
        yield
        return
    if threshold <= 0:
        raise ValueError("gc_threshold must be positive or None")
    current = gc.get_threshold()
    if _gc_users == 0:
        _gc_saved = current
    _gc_users += 1
    if current[0] < threshold:
        gc.set_threshold(threshold, current[1], current[2])
    try:
        yield
    finally:
        _gc_users -= 1
        if _gc_users == 0 and _gc_saved is not None:
            gc.set_threshold(*_gc_saved)
            _gc_saved = None
