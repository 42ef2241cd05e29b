"""The operator surface in cluster mode, with a fake cluster (no Redis): the ``serve`` flags,
``/cluster`` and ``/sessions?scope=cluster``, the cluster gauges, and top's cluster panel."""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Callable
from functools import partial
from io import StringIO
from typing import Any

import httpx
import pytest
import trio
import trio.testing
from rich.console import Console

from supervisor import CapacityError, open_supervisor
from supervisor._cli import build_parser, check_cluster_options, main
from supervisor._ops._admin import AdminApp, serve_admin
from supervisor._ops._feed import Frame, cluster_frame
from supervisor._ops._metrics import OperatorMetrics
from supervisor._ops._run import Operations
from supervisor._ops._top import TopModel, render, run_top
from supervisor.cluster._store import redact as redact_url
from supervisor.cluster._view import ClusterEvent, ClusterView, NodeView
from supervisor.mcp import create_demo_server

# Full session ids are credentials: none of these may appear anywhere an operator reads.
SID_A = "AAAAaaaa0123456789abcdefghijklmn.n1"
SID_B = "BBBBbbbb0123456789abcdefghijklmn.n2"
NOW = 1_780_000_000.0


class Unreachable(CapacityError):
    """Stands for `supervisor.cluster.ClusterUnavailable` (a CapacityError)."""


def fixed_view(events: int = 20) -> ClusterView:
    nodes = (
        NodeView(
            id="n1", address="http://10.0.0.1:8000", sessions=2, held=5, lease=2.5, started=NOW
        ),
        NodeView(
            id="n2",
            address="http://10.0.0.2:8000",
            sessions=1,
            held=3,
            lease=None,
            started=NOW + 1,
            this=True,
        ),
    )
    stream = (
        ClusterEvent(
            id="1-0",
            node="n1",
            kind="created",
            session_id=SID_A,
            reason=None,
            at=NOW,
            fields={"principal": "alice"},
        ),
        ClusterEvent(
            id="2-0",
            node="n2",
            kind="closed",
            session_id=SID_B,
            reason="client-delete",
            at=NOW + 2,
        ),
        ClusterEvent(id="3-0", node="n3", kind="node-lost", session_id="", reason=None, at=NOW + 3),
    )
    return ClusterView(
        node="n2",
        state="ready",
        nodes=nodes,
        sessions=3,
        max_sessions=300,
        held=8,
        events=stream[-events:] if events else (),
    )


class FakeCluster:
    """The shape of `supervisor.cluster.Cluster` the operator surface uses."""

    def __init__(self, *, fail: BaseException | None = None, hang: bool = False) -> None:
        self.node_id = "n2"
        self.state = "ready"
        self.fail = fail
        self.hang = hang
        self.address: str | None = None
        self.forwarded: list[tuple[Any, str]] = []
        self.view_calls = 0

    def set_address(self, base_url: str) -> None:
        self.address = base_url

    async def view(self, events: int = 20) -> ClusterView:
        self.view_calls += 1
        if self.hang:
            await trio.sleep_forever()
        if self.fail is not None:
            raise self.fail
        return fixed_view(events)

    async def sessions(self, limit: int = 200) -> list[dict[str, object]]:
        if self.fail is not None:
            raise self.fail
        rows: list[dict[str, object]] = [
            {"id": SID_A, "node": "n1", "principal": "alice", "transport": "http", "created": NOW},
            {"id": SID_B, "node": "n2", "principal": None, "transport": "http", "created": NOW},
        ]
        return rows[:limit]

    def forwarding(self, app: Any, path: str = "/mcp") -> Any:
        self.forwarded.append((app, path))
        return app


async def asgi_get(app: Any, path: str) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8001") as http:
        return await http.get(path)


def no_full_ids(text: str) -> bool:
    return all(sid[:9] not in text for sid in (SID_A, SID_B))


# -- serve's flags ---------------------------------------------------------------------------


def serve_args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["serve", *argv])


@pytest.mark.parametrize(
    "url",
    ["redis://127.0.0.1:6379/0", "rediss://:pw@cache:6380", "valkey://h/1", "valkeys://h"],
)
def test_cluster_accepts_redis_and_valkey_urls(url: str) -> None:
    args = serve_args("--cluster", url)
    assert (args.cluster, args.node_lease, args.lease_check, args.advertise) == (
        url,
        3.0,
        1.0,
        None,
    )
    check_cluster_options(args)


@pytest.mark.parametrize(
    "argv",
    [
        ["--cluster", "http://127.0.0.1:6379"],
        ["--cluster", "127.0.0.1:6379"],
        ["--cluster", "redis://"],
        ["--cluster", "redis://h:port"],
        ["--cluster", "redis://h", "--advertise", "redis://h:1"],
        ["--cluster", "redis://h", "--advertise", "http://0.0.0.0:8000"],
        ["--cluster", "redis://h", "--node-lease", "0"],
    ],
)
def test_bad_cluster_flags_are_argparse_errors(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        serve_args(*argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "--cluster" in err or "--advertise" in err or "--node-lease" in err
    if argv[1] == "http://127.0.0.1:6379":
        assert "redis://, rediss://, valkey://, valkeys://" in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--cluster", "redis://h", "--host", "0.0.0.0", "--allow-unauthenticated"],
            "pass --advertise",
        ),
        (["--cluster", "redis://h", "--host", "::", "--allow-unauthenticated"], "--advertise"),
        (["--cluster", "redis://h", "--stdio"], "cluster mode is HTTP only"),
        (["--advertise", "http://10.0.0.1:8000"], "needs --cluster"),
        (["--cluster", "redis://h", "--lease-check", "3"], "shorter than --node-lease"),
    ],
)
def test_serve_refuses_cluster_options_that_cannot_work(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["serve", "--port", "0", *argv]) == 2
    assert message in capsys.readouterr().err


def test_a_wildcard_host_with_advertise_is_accepted() -> None:
    args = serve_args("--cluster", "redis://h", "--host", "0.0.0.0", "--advertise", "http://n1:80")
    check_cluster_options(args)
    assert args.advertise == "http://n1:80"


def test_cluster_without_coredis_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "coredis", None)  # import coredis raises ImportError
    assert main(["serve", "--port", "0", "--cluster", "redis://127.0.0.1:1/0"]) == 2
    assert "pip install 'trio-session-supervisor[cluster]'" in capsys.readouterr().err


def test_passwords_are_redacted() -> None:
    assert redact_url("redis://:s3cret@h:6379/0") == "redis://:***@h:6379/0"
    assert redact_url("rediss://user:s3cret@h/1") == "rediss://user:***@h/1"
    assert redact_url("redis://h/0?password=s3cret&x=1") == "redis://h/0?password=***&x=1"
    assert redact_url("valkey://h:6379") == "valkey://h:6379"


async def test_serve_http_forwards_through_the_cluster_and_announces_the_node() -> None:
    args = serve_args("--port", "0", "--path", "/m", "--cluster", "redis://:s3cret@127.0.0.1:1/0")
    cluster = FakeCluster()
    out = StringIO()
    ops = Operations(args, out, cluster=cluster)  # type: ignore[arg-type]
    with trio.fail_after(10):
        async with open_supervisor() as sup, trio.open_nursery() as nursery:
            stop = trio.Event()
            url = await nursery.start(partial(ops.serve_http, sup, create_demo_server(), stop))
            ops.bind_cluster(url)
            ops.announce(url)
            [(app, path)] = cluster.forwarded
            assert path == "/m" and type(app).__name__ == "McpHttpApp"
            port = url.rsplit(":", 1)[1].split("/")[0]
            assert cluster.address == f"http://127.0.0.1:{port}"
            stop.set()
    banner = out.getvalue()
    line = f"cluster node n2 in redis://:***@127.0.0.1:1/0, reached by peers at {cluster.address}"
    assert line in banner and "s3cret" not in banner


def test_bind_cluster_prefers_advertise_and_brackets_ipv6() -> None:
    cluster = FakeCluster()
    ops = Operations(
        serve_args("--cluster", "redis://h", "--advertise", "http://n2.internal:9000/"),
        StringIO(),
        cluster=cluster,  # type: ignore[arg-type]
    )
    ops.bind_cluster("http://127.0.0.1:5555/mcp")
    assert cluster.address == "http://n2.internal:9000"
    v6 = Operations(
        serve_args("--cluster", "redis://h", "--host", "::1"),
        StringIO(),
        cluster=cluster,  # type: ignore[arg-type]
    )
    v6.bind_cluster("http://[::1]:5555/mcp")
    assert cluster.address == "http://[::1]:5555"


# -- the admin endpoint ------------------------------------------------------------------------


async def test_cluster_endpoint_shows_the_view_with_truncated_ids(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_supervisor() as sup:
        response = await asgi_get(AdminApp(sup, cluster=FakeCluster()), "/cluster")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert {k: body[k] for k in ("type", "node", "state", "sessions", "max_sessions", "held")} == {
        "type": "cluster",
        "node": "n2",
        "state": "ready",
        "sessions": 3,
        "max_sessions": 300,
        "held": 8,
    }
    assert body["nodes"][1] == {
        "id": "n2",
        "address": "http://10.0.0.2:8000",
        "sessions": 1,
        "held": 3,
        "lease": None,
        "started": NOW + 1,
        "this": True,
    }
    assert body["nodes"][0]["lease"] == 2.5 and body["nodes"][0]["this"] is False
    assert [e["session"] for e in body["events"]] == ["AAAAaaaa", "BBBBbbbb", ""]
    assert body["events"][1] == {
        "id": "2-0",
        "node": "n2",
        "kind": "closed",
        "session": "BBBBbbbb",
        "reason": "client-delete",
        "at": NOW + 2,
    }
    assert no_full_ids(response.text) and "alice" not in response.text


async def test_cluster_endpoint_takes_an_events_count(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_supervisor() as sup:
        response = await asgi_get(AdminApp(sup, cluster=FakeCluster()), "/cluster?events=1")
    assert [e["kind"] for e in response.json()["events"]] == ["node-lost"]


async def test_cluster_endpoint_is_404_unclustered_and_503_unreachable(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_supervisor() as sup:
        alone = await asgi_get(AdminApp(sup), "/cluster")
        assert alone.status_code == 404 and "not in a cluster" in alone.text
        assert alone.text.count("\n") == 1
        assert (await asgi_get(AdminApp(sup), "/sessions?scope=cluster")).status_code == 404
        down = AdminApp(sup, cluster=FakeCluster(fail=Unreachable("store at h:6379 refused")))
        response = await asgi_get(down, "/cluster")
        assert response.status_code == 503 and "store at h:6379 refused" in response.text
        assert "node n2 is ready" in response.text
        assert (await asgi_get(down, "/sessions?scope=cluster")).status_code == 503
        hung = await asgi_get(AdminApp(sup, cluster=FakeCluster(hang=True)), "/cluster")
        assert hung.status_code == 503 and "no answer" in hung.text


async def test_sessions_in_cluster_scope_list_every_node(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_supervisor() as sup:
        app = AdminApp(sup, cluster=FakeCluster())
        response = await asgi_get(app, "/sessions?scope=cluster")
        assert response.status_code == 200
        body = response.json()
        assert body["type"] == "cluster-sessions" and body["node"] == "n2"
        rows = [(r["id"], r["node"], r["principal"], r["transport"]) for r in body["sessions"]]
        assert rows == [("AAAAaaaa", "n1", "alice", "http"), ("BBBBbbbb", "n2", None, "http")]
        assert no_full_ids(response.text)
        assert len((await asgi_get(app, "/sessions?scope=cluster&limit=1")).json()["sessions"]) == 1
        local = (await asgi_get(app, "/sessions?scope=local")).json()
        assert local["type"] == "snapshot"
        assert (await asgi_get(app, "/sessions?scope=moon")).status_code == 400
        index = (await asgi_get(app, "/")).text
        assert "/cluster" in index and "scope=cluster" in index


# -- metrics -----------------------------------------------------------------------------------


def samples(text: str) -> dict[str, str]:
    return {
        line.rpartition(" ")[0]: line.rpartition(" ")[2]
        for line in text.splitlines()
        if line.startswith("supervisor_cluster")
    }


async def test_metrics_carry_the_cluster_gauges(autojump_clock: trio.testing.MockClock) -> None:
    async with open_supervisor() as sup:
        cluster = FakeCluster()
        app = AdminApp(sup, OperatorMetrics(sup, process=False, cluster=cluster), cluster=cluster)
        response = await asgi_get(app, "/metrics")
    assert response.status_code == 200
    assert samples(response.text) == {
        'supervisor_cluster_state{state="joining"}': "0.0",
        'supervisor_cluster_state{state="ready"}': "1.0",
        'supervisor_cluster_state{state="unavailable"}': "0.0",
        'supervisor_cluster_state{state="fenced"}': "0.0",
        "supervisor_cluster_store_up": "1.0",
        "supervisor_cluster_nodes": "2.0",
        "supervisor_cluster_sessions": "3.0",
        "supervisor_cluster_slots_held": "8.0",
        "supervisor_cluster_max_sessions": "300.0",
        'supervisor_cluster_sessions_per_node{node="n1"}': "2.0",
        'supervisor_cluster_sessions_per_node{node="n2"}': "1.0",
    }
    assert cluster.view_calls == 1


@pytest.mark.parametrize("broken", [{"fail": Unreachable("down")}, {"hang": True}])
async def test_a_scrape_survives_an_unreachable_store(
    broken: dict[str, Any], autojump_clock: trio.testing.MockClock
) -> None:
    async with open_supervisor() as sup:
        cluster = FakeCluster(**broken)
        cluster.state = "unavailable"
        app = AdminApp(sup, OperatorMetrics(sup, process=False, cluster=cluster), cluster=cluster)
        response = await asgi_get(app, "/metrics")
    assert response.status_code == 200
    assert "supervisor_sessions_live 0.0" in response.text
    assert samples(response.text) == {
        'supervisor_cluster_state{state="joining"}': "0.0",
        'supervisor_cluster_state{state="ready"}': "0.0",
        'supervisor_cluster_state{state="unavailable"}': "1.0",
        'supervisor_cluster_state{state="fenced"}': "0.0",
        "supervisor_cluster_store_up": "0.0",
    }


async def test_metrics_without_a_cluster_have_no_cluster_gauges(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_supervisor() as sup:
        response = await asgi_get(AdminApp(sup, OperatorMetrics(sup, process=False)), "/metrics")
    assert "supervisor_cluster" not in response.text


# -- top ---------------------------------------------------------------------------------------


def text_of(model: TopModel, now: float, width: int = 120) -> str:
    console = Console(file=StringIO(), width=width, record=True, color_system=None)
    console.print(render(model, now, height=40))
    return console.export_text()


def test_top_draws_the_cluster_panel() -> None:
    model = TopModel("http://127.0.0.1:8001")
    model.apply({"type": "snapshot", "stats": {}, "sessions": []}, now=100.0)
    assert "cluster" not in text_of(model, 100.0)
    model.apply(cluster_frame(fixed_view()), now=100.0)
    text = text_of(model, 101.0)
    assert "cluster node n2 ready  2 nodes  3/300 sessions  8 slots held" in text
    lines = text.splitlines()
    [n1] = [line for line in lines if line.lstrip().startswith("n1 ")]
    assert n1.split() == ["n1", "http://10.0.0.1:8000", "2", "5", "1.5s"]  # 2.5 s, 1 s ago
    [n2] = [line for line in lines if line.lstrip().startswith("n2 *")]
    assert n2.split() == ["n2", "*", "http://10.0.0.2:8000", "1", "3", "lapsed"]
    assert "cluster events" in text
    [closed] = [line for line in lines if "closed" in line and "n2" in line]
    assert closed.split()[1:] == ["n2", "closed", "BBBBbbbb", "(client-delete)"]
    assert any(line.split()[1:] == ["n3", "node-lost"] for line in lines if "node-lost" in line)
    assert no_full_ids(text)
    # A failing read replaces the panel with one line; top goes on.
    model.apply({"type": "cluster-error", "error": "/cluster answered 503"}, now=102.0)
    text = text_of(model, 102.0)
    assert "cluster: unavailable (/cluster answered 503)" in text and "n1 " not in text
    assert "no live sessions" in text


async def test_top_once_prints_the_cluster_of_a_served_admin_endpoint() -> None:
    console = Console(file=StringIO(), width=120, record=True, color_system=None)
    with trio.fail_after(15):
        async with open_supervisor() as sup, trio.open_nursery() as nursery:
            done = trio.Event()
            url = await nursery.start(
                partial(
                    serve_admin,
                    sup,
                    None,
                    host="127.0.0.1",
                    port=0,
                    shutdown_trigger=done.wait,
                    cluster=FakeCluster(),
                )
            )
            assert await run_top(url, console=console, once=True) == 0
            plain = Console(file=StringIO(), width=120, record=True, color_system=None)
            down = partial(
                serve_admin,
                sup,
                None,
                host="127.0.0.1",
                port=0,
                shutdown_trigger=done.wait,
                cluster=FakeCluster(fail=Unreachable("down")),
            )
            down_url = await nursery.start(down)
            assert await run_top(down_url, console=plain, once=True) == 0
            done.set()
            sup.close_all()
    text = console.export_text()
    assert "cluster node n2 ready" in text and "http://10.0.0.1:8000" in text
    assert no_full_ids(text)
    down_text = plain.export_text()
    assert "cluster: unavailable (/cluster answered 503: Service Unavailable" in down_text
    assert "down" in down_text


async def test_serve_top_reads_the_cluster_in_process(
    autojump_clock: trio.testing.MockClock,
) -> None:
    from supervisor._ops._top import TopView, poll_cluster_view

    view = TopView("in-process", Console(file=StringIO()))
    pushed: list[Frame] = []
    original: Callable[[list[Frame]], None] = view.push

    def push(frames: list[Frame]) -> None:
        pushed.extend(frames)
        original(frames)

    view.push = push  # type: ignore[method-assign]
    cluster = FakeCluster()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(poll_cluster_view, cluster, view)
        await trio.sleep(2.5)
        cluster.fail = Unreachable("down")
        await trio.sleep(1)
        nursery.cancel_scope.cancel()
    assert [f["type"] for f in pushed] == ["cluster", "cluster", "cluster", "cluster-error"]
    assert view.model.cluster is None and view.model.cluster_error == "down"


async def test_serve_says_so_when_the_store_does_not_answer_the_join() -> None:
    with trio.fail_after(20):
        argv = ["serve", "--port", "0", "--cluster", "redis://:s3cret@127.0.0.1:1/0"]
        result = await trio.run_process(
            [sys.executable, "-m", "supervisor", *argv],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    err = result.stderr.decode()
    assert result.returncode == 1, err
    assert err.startswith("error: ") and "cannot join" in err and "Traceback" not in err
    assert "s3cret" not in err + result.stdout.decode()
    assert "serving MCP on" not in result.stdout.decode()


def test_the_operator_surface_does_not_import_the_cluster_layer() -> None:
    code = (
        "import sys; sys.modules['coredis'] = None\n"
        "import supervisor._cli, supervisor._ops._run, supervisor._ops._admin\n"
        "import supervisor._ops._metrics, supervisor._ops._top\n"
        "supervisor._cli.build_parser().parse_args(['serve', '--port', '0'])\n"
        "assert 'supervisor.cluster' not in sys.modules, 'imported'\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 0, result.stderr
