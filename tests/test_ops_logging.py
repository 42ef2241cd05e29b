"""Logging: text and JSON lines with structured fields; lifecycle events logged by id prefix."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
import trio
import trio.testing

from supervisor import SessionContext, open_supervisor
from supervisor._ops._logging import (
    JsonFormatter,
    TextFormatter,
    configure_logging,
    log_events,
)


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    mcp_level = logging.getLogger("mcp").level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.getLogger("mcp").setLevel(mcp_level)


def record(**fields: Any) -> logging.LogRecord:
    rec = logging.LogRecord(
        "supervisor.sessions", logging.INFO, __file__, 1, "session %s", ("x",), None
    )
    for key, value in fields.items():
        setattr(rec, key, value)
    return rec


def test_json_formatter_puts_structured_fields_beside_the_message() -> None:
    line = JsonFormatter().format(record(session="AbCdEfGh", transport="http", reason="closed"))
    payload = json.loads(line)
    assert payload["message"] == "session x" and payload["level"] == "info"
    assert payload["logger"] == "supervisor.sessions" and payload["ts"].endswith("Z")
    assert (payload["session"], payload["transport"], payload["reason"]) == (
        "AbCdEfGh",
        "http",
        "closed",
    )
    assert "principal" not in payload


def test_text_formatter_appends_key_value_pairs() -> None:
    line = TextFormatter().format(record(session="AbCdEfGh", reason="idle-timeout"))
    assert line.endswith("supervisor.sessions session x session=AbCdEfGh reason=idle-timeout")


def test_configure_logging_is_quiet_by_default_and_validates(restore_logging: None) -> None:
    stream = io.StringIO()
    configure_logging(stream=stream)
    logging.getLogger("supervisor.sessions").info("not shown")
    logging.getLogger("supervisor.mcp").warning("shown")
    configure_logging("info", "json", stream=stream)  # replaces the handler, no duplicates
    logging.getLogger("mcp.server").info("SDK chatter stays hidden")
    logging.getLogger("supervisor.x").info("hello")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2 and "shown" in lines[0]
    assert json.loads(lines[1])["message"] == "hello"
    with pytest.raises(ValueError, match="log level"):
        configure_logging("loud")
    with pytest.raises(ValueError, match="log format"):
        configure_logging("info", "xml")  # type: ignore[arg-type]


async def actor(ctx: SessionContext[Any]) -> None:
    ctx.initialize()
    async for msg in ctx.mailbox:
        raise RuntimeError(f"cannot handle {msg.payload}")


async def test_log_events_logs_lifecycle_with_the_id_prefix_only(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="supervisor.sessions")
    async with open_supervisor(idle_timeout=10) as sup:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(log_events, sup)
            await trio.testing.wait_all_tasks_blocked()  # subscribed
            quiet = sup.create_session_nowait(actor, principal="alice")
            failing = sup.create_session_nowait(actor)
            sup.send_nowait(failing.id, "this")
            await trio.sleep(11)
            await sup.shutdown()
    records = [r for r in caplog.records if r.name == "supervisor.sessions"]
    by_session = {
        sid[:8]: [
            (r.levelname, r.getMessage(), getattr(r, "reason", None))
            for r in records
            if getattr(r, "session", None) == sid[:8]
        ]
        for sid in (quiet.id, failing.id)
    }
    assert by_session[quiet.id[:8]] == [
        ("INFO", "session created", None),
        ("INFO", "session authenticated", None),
        ("INFO", "session initialized", None),
        ("INFO", "session expired", "idle-timeout"),
    ]
    assert by_session[failing.id[:8]][-1] == ("WARNING", "session failed", "actor-error")
    failed = [r for r in records if r.getMessage() == "session failed"]
    assert vars(failed[0])["error"] == "RuntimeError: cannot handle this"
    created = [r for r in records if r.getMessage() == "session created"]
    assert vars(created[0])["principal"] == "alice"
    text = caplog.text + "".join(str(vars(r)) for r in records)
    assert quiet.id not in text and failing.id not in text


async def test_log_events_subscribes_to_nothing_when_info_is_off(
    autojump_clock: trio.testing.MockClock,
) -> None:
    logger = logging.getLogger("test_ops_logging.quiet")
    logger.setLevel(logging.WARNING)
    async with open_supervisor() as sup:
        await log_events(sup, logger)  # returns at once
        assert sup.statistics().subscribers == 0
