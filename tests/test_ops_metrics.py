"""Prometheus metrics and the admin endpoint, in process on trio's MockClock."""

from __future__ import annotations

import re
import subprocess
import sys
from typing import Any

import httpx
import pytest
import trio
import trio.testing

from supervisor import CapacityError, SessionClosed, SessionContext, Transport, open_supervisor
from supervisor._ops._admin import AdminApp, is_loopback
from supervisor._ops._metrics import CONTENT_TYPE, OperatorMetrics, TimedApp


async def ready_actor(ctx: SessionContext[Any]) -> None:
    ctx.initialize(client_info={"name": "metrics-test", "version": "0"})
    async for msg in ctx.mailbox:
        if msg.payload == "boom":
            raise ValueError("boom")
        msg.reply(msg.payload)


def value(metrics: OperatorMetrics, name: str, **labels: str) -> float:
    found = metrics.registry.get_sample_value(name, labels)
    return 0.0 if found is None else found


async def test_counters_move_with_sessions_created_expired_failed_and_rejected(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_supervisor(idle_timeout=30, max_sessions=3) as sup:
        metrics = OperatorMetrics(sup, process=False)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(metrics.run)
            await trio.testing.wait_all_tasks_blocked()  # subscribed
            assert value(metrics, "supervisor_sessions_created_total") == 0
            first, second, _third = (
                sup.create_session_nowait(ready_actor, transport=Transport.HTTP) for _ in range(3)
            )
            with pytest.raises(CapacityError):
                sup.create_session_nowait(ready_actor)
            await trio.sleep(1)
            assert value(metrics, "supervisor_sessions_created_total") == 3
            assert value(metrics, "supervisor_sessions_rejected_total") == 1
            assert value(metrics, "supervisor_sessions", state="ready") == 3
            assert value(metrics, "supervisor_sessions_by_transport", transport="http") == 3
            assert value(metrics, "supervisor_sessions_live") == 3
            assert value(metrics, "supervisor_sessions_max") == 3

            assert await sup.call(first.id, "ping") == "ping"
            with pytest.raises(SessionClosed):  # the actor raised instead of replying
                await sup.call(second.id, "boom")
            await trio.sleep(31)  # the two idle ones expire; `second` failed
            assert value(metrics, "supervisor_sessions_created_total") == 3
            assert value(metrics, "supervisor_sessions_expired_total") == 2
            assert value(metrics, "supervisor_sessions_failed_total") == 1
            assert value(metrics, "supervisor_sessions_live") == 0
            assert value(metrics, "supervisor_sessions", state="ready") == 0
            ended = "supervisor_sessions_ended_total"
            assert value(metrics, ended, kind="expired", reason="idle-timeout") == 2
            assert value(metrics, ended, kind="failed", reason="actor-error") == 1
            assert value(metrics, "supervisor_calls_total") == 2
            assert value(metrics, "supervisor_mailbox_high_water") >= 1
            assert value(metrics, "supervisor_session_duration_seconds_count") == 3
            # Durations on trio's clock: `second` failed at 1 s, `third` expired on time at its
            # idle deadline (30 s after its last activity, at creation), `first` at 31 s.
            assert value(metrics, "supervisor_session_duration_seconds_bucket", le="30.0") == 2
            assert value(metrics, "supervisor_session_duration_seconds_bucket", le="60.0") == 3

            sup.create_session_nowait(ready_actor)
            sup.close_all(reason="my own reason")  # free-form reasons are one label value
            await trio.sleep(1)
            assert value(metrics, ended, kind="closed", reason="other") == 1
            assert value(metrics, "supervisor_metrics_subscriber_lagged_total") == 0
            text = metrics.exposition().decode()
            assert "# TYPE supervisor_sessions_created_total counter" in text
            assert 'supervisor_sessions{state="ready"} 0.0' in text
            nursery.cancel_scope.cancel()


async def asgi_get(app: Any, path: str, **headers: str) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8001") as http:
        return await http.get(path, headers=headers)


async def test_admin_endpoint_serves_metrics_and_a_truncated_snapshot(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_supervisor(idle_timeout=30) as sup:
        app = AdminApp(sup, OperatorMetrics(sup, process=False))
        session = sup.create_session_nowait(ready_actor, principal="alice")
        await trio.sleep(2)
        response = await asgi_get(app, "/metrics")
        assert response.status_code == 200
        assert response.headers["content-type"] == CONTENT_TYPE
        assert "supervisor_sessions_created_total 1.0" in response.text
        snapshot = (await asgi_get(app, "/sessions")).json()
        [row] = snapshot["sessions"]
        assert row["id"] == session.id[:8] and row["principal"] == "alice"
        assert (row["age"], row["idle"], row["expires_in"]) == (2.0, 2.0, 28.0)
        assert session.id not in (await asgi_get(app, "/sessions")).text
        assert (await asgi_get(app, "/sessions?limit=0")).json()["more"] == 1
        odd = await asgi_get(app, "/sessions?limit=\u00b9")  # a digit, but not ASCII
        assert odd.status_code == 200 and odd.json()["more"] == 0
        assert (await asgi_get(app, "/")).status_code == 200
        assert (await asgi_get(app, "/nope")).status_code == 404
        no_metrics = AdminApp(sup, None)
        assert (await asgi_get(no_metrics, "/metrics")).status_code == 404
        sup.close_all()


async def test_admin_endpoint_checks_host_without_a_token_and_the_token_with_one(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_supervisor() as sup:
        open_app = AdminApp(sup)
        assert (await asgi_get(open_app, "/sessions")).status_code == 200
        rebinding = await asgi_get(open_app, "/sessions", host="evil.example:8001")
        assert rebinding.status_code == 403
        assert (await asgi_get(open_app, "/sessions", host="[::1]:8001")).status_code == 200
        locked = AdminApp(sup, token="s3cret")
        refused = await asgi_get(locked, "/sessions")
        assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"
        wrong = await asgi_get(locked, "/sessions", authorization="Bearer nope")
        assert wrong.status_code == 401
        right = await asgi_get(
            locked, "/sessions", authorization="Bearer s3cret", host="admin.internal"
        )
        assert right.status_code == 200


def test_is_loopback() -> None:
    assert all(map(is_loopback, ["127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost"]))
    assert not any(map(is_loopback, ["0.0.0.0", "10.0.0.1", "::", "example.com"]))


async def test_timed_app_observes_posts_and_deletes_by_status(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_supervisor() as sup:
        metrics = OperatorMetrics(sup, process=False)

        async def app(scope: Any, receive: Any, send: Any) -> None:
            await trio.sleep(0.3)
            status = 202 if scope["method"] == "POST" else 404
            await send({"type": "http.response.start", "status": status, "headers": []})
            await send({"type": "http.response.body", "body": b""})

        timed = metrics.timed(app)
        assert isinstance(timed, TimedApp)
        transport = httpx.ASGITransport(app=timed)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as http:
            await http.post("/mcp", json={})
            await http.delete("/mcp")
            await http.get("/mcp")  # a GET is an event stream, not a call: not observed
        name = "supervisor_mcp_request_duration_seconds"
        # perf_counter is real time: the histogram's count is what the test can pin down.
        # Without MCP-Protocol-Version a request is of the handshake era.
        era = "handshake"
        assert value(metrics, f"{name}_count", method="POST", status="202", era=era) == 1
        assert value(metrics, f"{name}_count", method="DELETE", status="404", era=era) == 1
        assert value(metrics, f"{name}_count", method="GET", status="200", era=era) == 0
        assert value(metrics, "supervisor_mcp_requests_total", era=era, handle="no") == 2
        text = metrics.exposition().decode()
        assert re.search(
            rf'{name}_bucket{{era="handshake",le="\+Inf",method="POST",status="202"}} 1.0', text
        )


def test_the_admin_endpoint_does_not_need_prometheus_client() -> None:
    # /sessions and /events work without the [metrics] extra; serve says /metrics is off.
    code = (
        "import sys; sys.modules['prometheus_client'] = None\n"
        "from supervisor._ops._admin import AdminApp, serve_admin\n"
        "import supervisor._ops._run as run, io\n"
        "out = io.StringIO(); assert run._load_metrics(None, out) is None\n"
        "assert '/metrics is off' in out.getvalue()\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
