"""The operator surface of durable sessions: ``serve --store`` and the durable flags, the
metrics, the log lines and ``top``.

Supervisors here use the in-memory store of tests/_memory_store.py on trio's MockClock; the
real processes (``serve --store sqlite:///...``, a cluster on redis-server) are in
tests/test_durable_processes.py.
"""

from __future__ import annotations

import logging
import re
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from rich.console import Console

from supervisor import SessionClosed, SessionContext, SupervisorConfig, open_supervisor
from supervisor._cli import (
    StoreSpec,
    build_parser,
    check_store_options,
    describe_store,
    durable_config,
    main,
    make_cluster,
    make_store,
    store_url,
    supervisor_config,
)
from supervisor._ids import short_id
from supervisor._ops._feed import Frame, run_feed, snapshot_frame
from supervisor._ops._logging import log_events
from supervisor._ops._metrics import OperatorMetrics
from supervisor._ops._top import TopModel, render
from supervisor.durable import SqliteStore

from ._helpers import echo_actor
from ._memory_store import MemoryStore, Shelf


async def counter(ctx: SessionContext[Any]) -> None:
    """A durable counter: ``"inc"`` adds one, saves, replies; ``"boom"`` raises."""
    if not ctx.session.is_initialized:
        ctx.initialize(client_info={"name": "ops-durable", "version": "0"})
    count = (ctx.saved or {}).get("count", 0)
    async for msg in ctx.mailbox:
        if msg.payload == "boom":
            raise RuntimeError("boom")
        if msg.payload == "inc":
            count += 1
            await ctx.save({"count": count})
        msg.reply(count)


def serve_args(*argv: str) -> Any:
    return build_parser().parse_args(["serve", *argv])


# -- the command line ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "spec"),
    [
        ("sqlite:///sessions.db", StoreSpec("sqlite", "sessions.db")),  # relative to the cwd
        ("sqlite:///data/s.db", StoreSpec("sqlite", "data/s.db")),
        ("sqlite:////var/lib/mcp/s.db", StoreSpec("sqlite", "/var/lib/mcp/s.db")),  # absolute
        ("SQLite:///s.db", StoreSpec("sqlite", "s.db")),
        ("redis://127.0.0.1:6379/0", StoreSpec("redis", "redis://127.0.0.1:6379/0")),
        ("valkeys://:pw@cache:6380", StoreSpec("redis", "valkeys://:pw@cache:6380")),
        ("none", StoreSpec("none")),
        ("NONE", StoreSpec("none")),
    ],
)
def test_store_values_that_parse(text: str, spec: StoreSpec) -> None:
    assert store_url(text) == spec
    assert serve_args("--store", text).store == spec


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("sqlite://sessions.db", "three slashes"),
        ("sqlite:///", "names no file"),
        ("sqlite:////var/lib/", "names no file"),
        ("sqlite:///:memory:", "no :memory:"),
        ("sqlite:///s.db?mode=ro", "no ?options"),
        ("postgresql://db/sessions", "expected sqlite:///PATH"),
        ("sessions.db", "expected sqlite:///PATH"),
        ("", "expected sqlite:///PATH"),
        ("redis://", "HOST"),
    ],
)
def test_bad_store_values_are_usage_errors(
    text: str, said: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        serve_args("--store", text)
    assert exc.value.code == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "--store" in err and said in err


def test_a_refused_store_url_does_not_show_its_password(
    capsys: pytest.CaptureFixture[str],
) -> None:
    for text in ("postgresql://user:hunter2@db/sessions", "redis://:hunter2@"):
        with pytest.raises(SystemExit):
            serve_args("--store", text)
        err = capsys.readouterr().err
        assert "--store" in err and "hunter2" not in err and "***" in err


def test_a_redis_store_needs_the_cluster_and_must_be_its_url(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Refused before anything binds (exit 2), naming the way out.
    assert main(["serve", "--port", "0", "--store", "redis://127.0.0.1:1/0"]) == 2
    err = capsys.readouterr().err
    assert "needs --cluster" in err and "sqlite:///PATH" in err
    argv = ["serve", "--cluster", "redis://127.0.0.1:1/0", "--store", "redis://:pw@other:2/0"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "is not the --cluster URL" in err and "pw" not in err
    same = serve_args("--cluster", "redis://127.0.0.1:1/0", "--store", "redis://127.0.0.1:1/0")
    assert check_store_options(same) == []


def test_a_sqlite_store_needs_an_existing_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nowhere" / "s.db"
    assert main(["serve", "--port", "0", "--store", f"sqlite:///{missing}"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert check_store_options(serve_args("--store", f"sqlite:///{tmp_path}/s.db")) == []


def test_make_store_picks_the_store_the_options_ask_for(tmp_path: Path) -> None:
    args = serve_args("--store", f"sqlite:///{tmp_path}/s.db")
    store = make_store(args, None)
    assert isinstance(store, SqliteStore) and store.path == f"{tmp_path}/s.db"
    assert describe_store(args) == f"durable sessions in SQLite file {tmp_path}/s.db"
    assert make_store(serve_args(), None) is None and describe_store(serve_args()) is None
    assert make_store(serve_args("--store", "none"), None) is None

    # With --cluster the cluster's Redis is the default store; --store none opts out.
    url = "redis://:secret@127.0.0.1:1/0"
    clustered = serve_args("--cluster", url)
    cluster = make_cluster(clustered)
    assert cluster is not None
    assert make_store(clustered, cluster) is cluster.store
    described = describe_store(clustered)
    assert described == "durable sessions in the cluster's Redis at redis://:***@127.0.0.1:1/0"
    explicit = serve_args("--cluster", url, "--store", url)
    assert make_store(explicit, cluster) is cluster.store
    off = serve_args("--cluster", url, "--store", "none")
    assert make_store(off, cluster) is None and describe_store(off) is None


def test_durable_flags_map_to_the_supervisor_config() -> None:
    assert durable_config(serve_args()) == {}  # the library's defaults
    args = serve_args(
        "--store",
        "sqlite:///s.db",
        "--retention",
        "3600",
        "--max-restarts",
        "0",
        "--restart-window",
        "2.5",
        "--passivate-at-capacity",
    )
    assert durable_config(args) == {
        "retention": 3600.0,
        "max_restarts": 0,
        "restart_window": 2.5,
        "passivate_at_capacity": True,
    }
    config = SupervisorConfig(**supervisor_config(args), **durable_config(args))
    assert (config.retention, config.max_restarts, config.restart_window) == (3600.0, 0, 2.5)
    assert config.passivate_at_capacity is True


@pytest.mark.parametrize(
    "argv",
    [
        ["--retention", "0"],
        ["--retention", "-5"],
        ["--max-restarts", "-1"],
        ["--max-restarts", "1.5"],
        ["--restart-window", "0"],
        ["--store"],
    ],
)
def test_bad_durable_flags_exit_2(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        serve_args(*argv)
    assert exc.value.code == 2


def test_durable_flags_without_a_store_warn() -> None:
    [warning] = check_store_options(serve_args("--retention", "60", "--passivate-at-capacity"))
    assert "--retention, --passivate-at-capacity: no effect without a store" in warning
    assert check_store_options(serve_args("--store", "none", "--max-restarts", "1")) != []
    assert check_store_options(serve_args("--cluster", "redis://h:1", "--retention", "9")) == []


def test_serve_help_shows_the_durable_flags(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        serve_args("--help")
    text = " ".join(capsys.readouterr().out.split())
    for flag in (
        "--store URL",
        "--retention SECONDS",
        "--max-restarts N",
        "--restart-window SECONDS",
        "--passivate-at-capacity",
    ):
        assert flag in text
    assert "sqlite:///s.db is relative to the working directory" in text
    assert "sqlite:////var/lib/s.db absolute" in text
    assert "Default: the cluster's Redis with --cluster" in text


# -- metrics ---------------------------------------------------------------------------------


def value(metrics: OperatorMetrics, name: str, **labels: str) -> float:
    found = metrics.registry.get_sample_value(name, labels)
    return 0.0 if found is None else found


async def test_metrics_count_passivations_activations_restarts_and_retained(
    autojump_clock: trio.testing.MockClock,
) -> None:
    by_reason = "supervisor_sessions_passivated_by_reason_total"
    ended = "supervisor_sessions_ended_total"
    async with open_supervisor(
        store=MemoryStore(Shelf()),
        idle_timeout=10,
        retention=100,
        max_sessions=2,
        passivate_at_capacity=True,
        max_restarts=1,
    ) as sup:
        sup.register_durable("counter", counter)
        metrics = OperatorMetrics(sup, process=False)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(metrics.run)
            await trio.testing.wait_all_tasks_blocked()  # subscribed
            assert value(metrics, "supervisor_sessions_passivated_total") == 0
            first = sup.create_session_nowait(counter, durable=True).id
            assert await sup.call(first, "inc") == 1
            await trio.sleep(10.5)  # idle: passivated, not expired
            assert value(metrics, "supervisor_sessions_passivated_total") == 1
            assert value(metrics, by_reason, reason="idle-timeout") == 1
            assert value(metrics, "supervisor_sessions_retained") == 1
            assert value(metrics, "supervisor_sessions_live") == 0  # its slot is free
            assert value(metrics, "supervisor_sessions_expired_total") == 0
            assert value(metrics, "supervisor_session_duration_seconds_count") == 0

            await sup.activate(first)  # like a created session for the gauges
            assert value(metrics, "supervisor_sessions_activated_total") == 1
            assert value(metrics, "supervisor_sessions_created_total") == 1
            assert value(metrics, "supervisor_sessions_retained") == 0
            assert value(metrics, "supervisor_sessions_live") == 1
            assert value(metrics, "supervisor_sessions", state="ready") == 1

            with pytest.raises(SessionClosed, match="restarted"):
                await sup.call(first, "boom")
            assert await sup.call(first, "inc") == 2  # same id, from the last save
            assert value(metrics, "supervisor_sessions_restarted_total") == 1
            assert value(metrics, "supervisor_sessions_failed_total") == 0

            await trio.sleep(1)
            sup.create_session_nowait(echo_actor)
            await trio.sleep(1)
            await sup.create_session(echo_actor, wait=False)  # full: `first` makes room
            await trio.testing.wait_all_tasks_blocked()
            assert value(metrics, by_reason, reason="capacity") == 1
            assert value(metrics, "supervisor_sessions_passivated_total") == 2
            assert value(metrics, "supervisor_sessions_live") == 2
            assert value(metrics, "supervisor_sessions_rejected_total") == 0

            await trio.sleep(100.5)  # the echo sessions expire; `first`'s retention ends
            assert value(metrics, ended, kind="expired", reason="retention") == 1
            assert value(metrics, ended, kind="expired", reason="idle-timeout") == 2
            assert value(metrics, "supervisor_sessions_retained") == 0

            second = sup.create_session_nowait(counter, durable=True).id
            assert await sup.call(second, "inc") == 1
            await sup.shutdown()  # a durable session is passivated at shutdown
    assert value(metrics, by_reason, reason="shutdown") == 1
    assert value(metrics, "supervisor_sessions_passivated_total") == 3
    assert value(metrics, "supervisor_metrics_subscriber_lagged_total") == 0
    text = metrics.exposition().decode()
    for name in (
        "supervisor_sessions_passivated_total",
        "supervisor_sessions_activated_total",
        "supervisor_sessions_restarted_total",
        "supervisor_sessions_retained",
        "supervisor_sessions_passivated_by_reason_total",
    ):
        assert re.search(rf"^{name}[ {{]", text, re.M), name


# -- logging ---------------------------------------------------------------------------------


async def test_log_lines_of_passivation_activation_and_restart(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="supervisor.sessions")
    async with open_supervisor(store=MemoryStore(), idle_timeout=10) as sup:
        sup.register_durable("counter", counter)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(log_events, sup)
            await trio.testing.wait_all_tasks_blocked()  # subscribed
            sid = sup.create_session_nowait(counter, durable=True, principal="alice").id
            await sup.call(sid, "inc")
            await trio.sleep(10.5)
            await sup.activate(sid)
            with pytest.raises(SessionClosed):
                await sup.call(sid, "boom")
            await trio.testing.wait_all_tasks_blocked()
            await sup.shutdown()
    records = [
        r
        for r in caplog.records
        if r.name == "supervisor.sessions" and getattr(r, "session", None) == short_id(sid)
    ]
    lines = [(r.levelname, r.getMessage(), getattr(r, "reason", None)) for r in records]
    durable = [
        line for line in lines if line[1].split()[-1] in ("passivated", "activated", "restarted")
    ]
    assert durable == [
        ("INFO", "session passivated", "idle-timeout"),
        ("INFO", "session activated", None),
        ("WARNING", "session restarted", "actor-error"),
        ("INFO", "session passivated", "shutdown"),
    ]
    restarted = next(r for r in records if r.getMessage() == "session restarted")
    assert vars(restarted)["error"] == "RuntimeError: boom"
    activated = next(r for r in records if r.getMessage() == "session activated")
    assert vars(activated)["principal"] == "alice" and vars(activated)["event"] == "activated"
    assert sid not in caplog.text + "".join(str(vars(r)) for r in records)


# -- top -------------------------------------------------------------------------------------


def text_of(model: TopModel, now: float, width: int = 120, height: int = 40) -> str:
    console = Console(file=StringIO(), width=width, record=True, color_system=None)
    console.print(render(model, now, height=height))
    return console.export_text()


def test_top_shows_the_durable_totals_and_events() -> None:
    model = TopModel("http://127.0.0.1:8001")
    stats = {
        "total": 1,
        "max_sessions": 10,
        "created": 4,
        "passivated": 3,
        "activated": 2,
        "restarted": 1,
        "retained": 5,
    }
    model.apply({"type": "snapshot", "stats": stats, "sessions": [], "durable": True}, now=0.0)
    for kind, session, extra in (
        ("passivated", "Pp111111", {"reason": "idle-timeout", "leaves": True}),
        ("activated", "Aa222222", {}),
        ("restarted", "Rr333333", {"reason": "actor-error", "error": "RuntimeError: boom"}),
    ):
        frame = {"type": "event", "kind": kind, "session": session, "transport": "http"}
        model.apply({**frame, "wall": 0.0, "terminal": False, **extra}, now=0.0)
    text = text_of(model, now=1.0)
    for name, count in (("passivated", 3), ("activated", 2), ("restarted", 1), ("retained", 5)):
        assert re.search(rf"\b{name}\s+{count}\b", text), name
    assert re.search(r"created\s+4\b", text)
    assert "Pp111111 http       passivated (idle-timeout)" in text
    assert "Aa222222 http       activated" in text
    assert "Rr333333 http       restarted (actor-error) RuntimeError: boom" in text
    # A server without a store shows the totals it always did.
    plain = TopModel("x")
    plain.apply({"type": "snapshot", "stats": {"created": 1}, "sessions": []}, now=0.0)
    assert "passivated" not in text_of(plain, now=0.0)


def test_top_rows_leave_at_passivation_and_come_back_at_activation() -> None:
    model = TopModel("x")
    model.apply({"type": "snapshot", "stats": {}, "sessions": [], "durable": True}, now=0.0)
    event = {"type": "event", "session": "s1234567", "transport": "http", "wall": 0.0}
    model.apply({**event, "kind": "created", "state": "created"}, now=1.0)
    assert [row["id"] for row in model.rows] == ["s1234567"]
    passivated = {"kind": "passivated", "reason": "idle-timeout", "terminal": False}
    model.apply({**event, **passivated, "leaves": True}, now=2.0)
    assert model.rows == []
    model.apply({**event, "kind": "activated", "state": "ready", "leaves": False}, now=3.0)
    assert [(row["id"], row["state"]) for row in model.rows] == [("s1234567", "ready")]


async def test_feed_frames_of_a_durable_session_keep_the_live_table_right(
    autojump_clock: trio.testing.MockClock,
) -> None:
    frames: list[Frame] = []

    async def emit(batch: list[Frame]) -> None:
        frames.extend(batch)

    async with open_supervisor(store=MemoryStore(), idle_timeout=10) as sup:
        sup.register_durable("counter", counter)
        assert snapshot_frame(sup)["durable"] is True
        model = TopModel("in-process")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run_feed, sup, emit)
            await trio.testing.wait_all_tasks_blocked()
            sid = sup.create_session_nowait(counter, durable=True).id
            await sup.call(sid, "inc")
            await trio.sleep(10.5)
            events = [f for f in frames if f["type"] == "event"]
            [passivated] = [f for f in events if f["kind"] == "passivated"]
            assert passivated["leaves"] and not passivated["terminal"]
            assert passivated["reason"] == "idle-timeout"
            assert passivated["session"] == short_id(sid)
            applied = len(frames)
            for frame in frames:
                model.apply(frame)
            assert model.rows == [] and model.stats["passivated"] == 1
            assert model.stats["retained"] == 1

            await sup.activate(sid)
            await trio.sleep(1)
            [activated] = [f for f in frames if f.get("kind") == "activated"]
            assert not activated["leaves"] and not activated["terminal"]
            for frame in frames[applied:]:
                model.apply(frame)
            assert [row["id"] for row in model.rows] == [short_id(sid)]
            assert model.stats["activated"] == 1 and model.stats["retained"] == 0
            await sup.shutdown()
    assert sid not in repr(frames)

    async with open_supervisor() as sup:
        assert snapshot_frame(sup)["durable"] is False
