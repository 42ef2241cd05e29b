"""Logging for operators: stdlib `logging`, text or JSON lines, structured fields.

Lifecycle events are logged by `log_events` on the ``supervisor.sessions`` logger at INFO
(``FAILED`` and a durable session's ``RESTARTED`` at WARNING, with the error), with the fields
``session`` (the 8-character id prefix, never the full id), ``transport``, ``event``, ``state``
and ``reason``. Pass fields the same way from your own
code: ``logger.info("...", extra={"session": short_id(sid), "reason": "..."})``.

Quiet by default: ``serve`` logs warnings and errors only unless ``--log-level`` says otherwise.
The ``mcp`` SDK's own loggers stay at WARNING or above (it logs every request at INFO).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import TYPE_CHECKING, Any, Literal, TextIO

from .. import EventKind, Lagged
from .._ids import short_id
from ._feed import is_state_handle, session_era

if TYPE_CHECKING:
    from .. import Supervisor

__all__ = ["FIELDS", "JsonFormatter", "TextFormatter", "configure_logging", "log_events"]

#: Structured fields a record may carry (through ``extra=``); both formatters show them.
FIELDS = ("session", "transport", "event", "state", "reason", "principal", "error", "missed")

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")

sessions_logger = logging.getLogger("supervisor.sessions")


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {name: value for name in FIELDS if (value := getattr(record, name, None)) is not None}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts``, ``level``, ``logger``, ``message``, the structured
    fields present on the record, and ``exc`` with the traceback when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        payload.update(_fields(record))
        if record.exc_info:
            payload["exc"] = self.formatException(record.exc_info)
        return json.dumps(payload, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """``time level logger message key=value ...``, for people."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s %(message)s", "%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = _fields(record)
        if fields:
            text += " " + " ".join(f"{key}={value}" for key, value in fields.items())
        return text


def configure_logging(
    level: str = "warning",
    log_format: Literal["text", "json"] = "text",
    stream: TextIO | None = None,
) -> logging.Handler:
    """Send log records of ``level`` and above to ``stream`` (default stderr).

    The command line owns its process's logging: this replaces every handler on the root logger
    (the SDK's ``MCPServer`` installs one when constructed, so an ``--app`` imported first would
    otherwise log everything twice) with one of its own, and keeps the ``mcp`` SDK's loggers at
    WARNING or above. Returns the handler.

    Raises:
        ValueError: an unknown level or format.
    """
    if level.lower() not in LOG_LEVELS:
        raise ValueError(f"log level must be one of {', '.join(LOG_LEVELS)}, got {level!r}")
    if log_format not in ("text", "json"):
        raise ValueError(f"log format must be text or json, got {log_format!r}")
    numeric = getattr(logging, level.upper())
    handler = logging.StreamHandler(sys.stderr if stream is None else stream)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    handler.set_name("supervisor-ops")
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(numeric)
    logging.getLogger("mcp").setLevel(max(numeric, logging.WARNING))
    return handler


async def log_events(sup: Supervisor, logger: logging.Logger = sessions_logger) -> None:
    """Log every lifecycle event until the supervisor has shut down.

    ``CREATED``, ``ACTIVATED``, ``PASSIVATED`` (with its reason) and terminal events at INFO
    (``FAILED`` and ``RESTARTED`` at WARNING with the error), state changes at DEBUG; a
    subscriber that fell behind logs how many events it missed at WARNING. Does nothing (and
    subscribes to nothing) when the logger would drop INFO records. A state
    handle's records carry ``state_handle=True`` and ``era``; every session's ``initialized``
    record carries the ``era`` it negotiated (`session_era`).
    """
    if not logger.isEnabledFor(logging.INFO):
        return
    async with sup.subscribe(buffer=1024) as events:
        async for item in events:
            if isinstance(item, Lagged):
                logger.warning(
                    "log subscriber fell behind: %d events missed",
                    item.missed,
                    extra={"missed": item.missed},
                )
                continue
            snap = item.session
            extra: dict[str, Any] = {
                "session": short_id(item.session_id),
                "transport": snap.transport.value,
                "event": item.kind.value,
                "state": snap.state.value,
            }
            if item.reason is not None:
                extra["reason"] = item.reason
            handle = is_state_handle(snap)
            if handle:
                extra["state_handle"] = True
            if handle or item.kind is EventKind.INITIALIZED:  # an era known from the start, or now
                extra["era"] = session_era(snap)
            if item.kind is EventKind.FAILED or item.kind is EventKind.RESTARTED:
                if item.error is not None:
                    extra["error"] = f"{type(item.error).__name__}: {item.error}"[:200]
                logger.warning("session %s", item.kind.value, extra=extra)
            elif item.kind is EventKind.STATE_CHANGED:
                logger.debug("session state changed", extra=extra)
            elif item.kind is EventKind.CREATED or item.kind is EventKind.ACTIVATED:
                if snap.principal is not None:
                    extra["principal"] = snap.principal
                logger.info("session %s", item.kind.value, extra=extra)
            else:  # initialized, authenticated, closed, expired, passivated
                logger.info("session %s", item.kind.value, extra=extra)
