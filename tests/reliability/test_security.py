"""Security: unguessable ids, ids kept out of logs, principal isolation, Origin/Host, no listing."""

from __future__ import annotations

import base64
import itertools
import json
import logging
import math
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
import trio
import trio.lowlevel
import trio.testing

from supervisor import SessionContext, open_supervisor

from ._support import (
    ACCEPT,
    INIT,
    INITIALIZED,
    Figures,
    asgi_app,
    asgi_request,
    http_server,
    session_headers,
    size,
    slow_server,
    tool_call,
)

ALPHABET = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def _json(value: Any) -> bytes:
    return json.dumps(value).encode()


# -- ids ------------------------------------------------------------------------------------------


async def returns_at_once(ctx: SessionContext[Any]) -> None:
    return None


async def test_session_ids_are_unguessable(figures: Figures) -> None:
    """100,000 ids from the real creation path: >= 128 bits, unique, no counter, no clock."""
    n = size(100_000)
    started = time.perf_counter()
    ids: list[str] = []
    async with open_supervisor(max_sessions=10_000) as sup:
        while len(ids) < n:
            batch = [sup.create_session_nowait(returns_at_once).id for _ in range(10_000)]
            ids.extend(batch)
            await trio.lowlevel.checkpoint()  # the actors return, the slots free
            while len(sup):
                await trio.lowlevel.checkpoint()
    elapsed = time.perf_counter() - started
    assert len(set(ids)) == n, "duplicate id"
    raw = []
    for session_id in ids:
        assert set(session_id) <= ALPHABET and session_id.isascii() and session_id.isprintable()
        raw.append(base64.urlsafe_b64decode(session_id + "=" * (-len(session_id) % 4)))
    bits = min(len(r) for r in raw) * 8
    assert bits >= 128
    # Every bit position is a fair coin (a counter or a timestamp fixes or biases high bits).
    # 5 sigma of a binomial(n, 1/2) around n/2.
    sigma = math.sqrt(n) / 2
    worst = 0.0
    for bit in range(bits):
        byte, shift = divmod(bit, 8)
        ones = sum((r[byte] >> shift) & 1 for r in raw)
        worst = max(worst, abs(ones - n / 2) / sigma)
    assert worst < 6.0, f"a bit position is biased: {worst:.1f} sigma"
    # Consecutive ids (created microseconds apart) share no prefix beyond chance: a time or
    # counter component would make neighbours share leading characters.
    shared = [_common_prefix(a, b) for a, b in itertools.pairwise(ids)]
    mean_shared = sum(shared) / len(shared)
    assert mean_shared < 0.05, mean_shared  # chance: 1/63 ~ 0.016
    # Consecutive ids as numbers: no constant or small difference (a counter).
    values = [int.from_bytes(r, "big") for r in raw]
    small_steps = sum(1 for a, b in itertools.pairwise(values) if abs(b - a) < 2**64)
    assert small_steps == 0
    # Per-position character frequencies are flat (chi-square, 63 degrees of freedom).
    positions = len(ids[0])
    worst_chi = 0.0
    for pos in range(positions - 1):  # the last character carries only 2 of its 6 bits
        counts = Counter(session_id[pos] for session_id in ids)
        expected = n / 64
        chi = sum((counts.get(c, 0) - expected) ** 2 / expected for c in ALPHABET)
        worst_chi = max(worst_chi, chi)
    assert worst_chi < 150, worst_chi  # p ~ 1e-9 for 63 dof
    figures.update(
        ids_checked=n,
        bits=bits,
        duplicates=0,
        worst_bit_bias_sigma=worst,
        mean_shared_prefix_chars=mean_shared,
        worst_position_chi2=worst_chi,
        wall_seconds=elapsed,
    )


def _common_prefix(a: str, b: str) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


# -- ids in logs ----------------------------------------------------------------------------------


class Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def texts(self, level: int) -> list[str]:
        out = []
        for record in self.records:
            if record.levelno >= level:
                text = record.getMessage()
                if record.exc_info:
                    text += logging.Formatter().formatException(record.exc_info)
                out.append(text)
        return out


@contextmanager
def capture_logs() -> Iterator[Capture]:
    handler = Capture()
    root = logging.getLogger()
    old = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(old)


async def test_session_ids_never_logged_in_full_at_info(
    autojump_clock: trio.testing.MockClock, figures: Figures
) -> None:
    """Every path that logs (refusals, other principal, crashing tool, capacity, expiry)."""
    tokens = {"token-a": "alice", "token-b": "bob"}

    async def verify(token: str) -> str | None:
        return tokens.get(token)

    alice = {"authorization": "Bearer token-a"}
    bob = {"authorization": "Bearer token-b"}
    ids: list[str] = []
    with capture_logs() as logs:
        async with asgi_app(
            slow_server,
            app_options={"token_verifier": verify},
            max_sessions=2,
            idle_timeout=30.0,
            init_timeout=10.0,
        ) as (sup, app):
            for _ in range(2):
                opened = await asgi_request(
                    app, "POST", headers={**ACCEPT, **alice}, body=_json(INIT)
                )
                session_id = opened.headers["mcp-session-id"]
                ids.append(session_id)
                headers = session_headers(session_id, **alice)
                await asgi_request(app, "POST", headers=headers, body=_json(INITIALIZED))
                await asgi_request(app, "POST", headers=headers, body=_json(tool_call("crash", {})))
                await asgi_request(app, "POST", headers=headers, body=_json(tool_call("echo", {})))
                # Bob tries Alice's session on every method.
                for method in ("POST", "GET", "DELETE"):
                    await asgi_request(
                        app,
                        method,
                        headers=session_headers(session_id, **bob),
                        body=_json(tool_call("echo", {})),
                    )
                # A malformed request in the session, a bad protocol version.
                await asgi_request(app, "POST", headers=headers, body=b"{nope")
                bad_version = {**headers, "mcp-protocol-version": "1999-01-01"}
                await asgi_request(app, "POST", headers=bad_version, body=_json(INIT))
            # At capacity: refused.
            await asgi_request(app, "POST", headers={**ACCEPT, **alice}, body=_json(INIT))
            await asgi_request(app, "DELETE", headers=session_headers(ids[0], **alice))
            await trio.sleep(60)  # the other one expires
            assert len(sup) == 0
    leaked_info = [t for t in logs.texts(logging.INFO) if any(i in t for i in ids)]
    leaked_debug = [t for t in logs.texts(logging.DEBUG) if any(i in t for i in ids)]
    figures.update(
        log_records=len(logs.records),
        records_at_info_or_above=len(logs.texts(logging.INFO)),
        full_ids_at_info=len(leaked_info),
        full_ids_at_debug=len(leaked_debug),
    )
    assert len(logs.texts(logging.INFO)) > 0  # the paths above did log
    assert not leaked_info, leaked_info[:3]


# -- principals -----------------------------------------------------------------------------------


async def test_a_session_of_principal_a_is_invisible_to_b(figures: Figures) -> None:
    tokens = {f"token-{p}": p for p in ("alice", "bob", "carol")}

    async def verify(token: str) -> str | None:
        return tokens.get(token)

    def auth(principal: str) -> dict[str, str]:
        return {"authorization": f"Bearer token-{principal}"}

    probes = 0
    async with asgi_app(app_options={"token_verifier": verify}, max_sessions=8) as (sup, app):
        owned: dict[str, str] = {}
        for principal in ("alice", "bob", "carol"):
            opened = await asgi_request(
                app, "POST", headers={**ACCEPT, **auth(principal)}, body=_json(INIT)
            )
            owned[opened.headers["mcp-session-id"]] = principal
        unknown = await asgi_request(
            app,
            "POST",
            headers=session_headers("x" * 32, **auth("alice")),
            body=_json(tool_call("echo", {})),
        )
        assert unknown.status == 404
        for session_id, owner in owned.items():
            for other in ("alice", "bob", "carol"):
                if other == owner:
                    continue
                for method in ("POST", "GET", "DELETE"):
                    response = await asgi_request(
                        app,
                        method,
                        headers=session_headers(session_id, **auth(other)),
                        body=_json(tool_call("echo", {"text": "x"})),
                    )
                    probes += 1
                    assert response.status == 404, (owner, other, method, response)
                    # Indistinguishable from an id that does not exist: no oracle.
                    assert response.body == unknown.body
                    assert session_id not in response.body.decode()
                    assert "mcp-session-id" not in response.headers
            # Without a token: 401, and nothing about the session.
            anonymous = await asgi_request(
                app, "POST", headers=session_headers(session_id), body=_json(tool_call("echo", {}))
            )
            assert anonymous.status == 401
            assert session_id not in anonymous.body.decode()
            # The owner's session survived the others' DELETEs.
            assert sup.has_session(session_id)
            mine = await asgi_request(
                app,
                "POST",
                headers=session_headers(session_id, **auth(owner)),
                body=_json(tool_call("echo", {"text": "mine"})),
            )
            assert mine.status == 200
    figures.update(cross_principal_probes=probes, visible=0)


# -- Origin and Host ------------------------------------------------------------------------------

REFUSED = [
    {"origin": "http://evil.example"},
    {"origin": "http://localhost.evil.example"},
    {"origin": "http://127.0.0.1.evil.example:8000"},
    {"origin": "http://127.0.0.1@evil.example"},
    {"origin": "http://evil.example#http://localhost"},
    {"origin": "null"},
    {"origin": "file://"},
    {"origin": ""},
    {"origin": "http://localhost:80abc"},
    {"origin": "http://localhost:"},
    {"origin": "http://LOCALHOST.evil.example"},
    {"origin": "ftp://localhost"},
    {"host": "evil.example"},
    {"host": "evil.example:8000"},
    {"host": "localhost.evil.example"},
    {"host": "127.0.0.1.nip.io"},
    {"host": "localhost:8000@evil.example"},
    {"host": "localhost:"},
    {"host": "localhost:80 "},
    {"host": ""},
    {"host": "localhost:\u00b2"},  # a superscript digit is not a port
]
ALLOWED = [
    {},
    {"origin": "http://localhost:3000"},
    {"origin": "http://127.0.0.1:8000"},
    {"origin": "https://[::1]:9"},
    {"host": "localhost"},
    {"host": "127.0.0.1:65535"},
    {"host": "[::1]:8000"},
]


@pytest.mark.parametrize("headers", REFUSED)
async def test_bad_origin_or_host_is_refused(headers: dict[str, str]) -> None:
    async with asgi_app(max_sessions=2) as (sup, app):
        for method in ("POST", "GET", "DELETE"):
            response = await asgi_request(
                app, method, headers={**ACCEPT, **headers}, body=_json(INIT)
            )
            assert response.status == 403, (method, response)
            assert response.json()["error"]["code"] < 0
        assert sup.statistics().created_total == 0


@pytest.mark.parametrize("headers", ALLOWED)
async def test_loopback_origin_and_host_are_allowed(headers: dict[str, str]) -> None:
    async with asgi_app(max_sessions=2) as (sup, app):
        response = await asgi_request(app, "POST", headers={**ACCEPT, **headers}, body=_json(INIT))
        assert response.status == 200
        assert len(sup) == 1


# -- no listing -----------------------------------------------------------------------------------

PROBE_PATHS = [
    "/",
    "/mcp",
    "/mcp/",
    "/mcp/sessions",
    "/sessions",
    "/session",
    "/status",
    "/stats",
    "/metrics",
    "/health",
    "/debug",
    "/admin",
    "/api/sessions",
    "/.well-known/oauth-protected-resource",
    "/.well-known/mcp",
    "/mcp?list=1",
]


@pytest.mark.parametrize("authenticated_app", [False, True])
async def test_no_endpoint_lists_sessions(figures: Figures, authenticated_app: bool) -> None:
    """Over a real socket: no path, method or header reveals the ids of live sessions."""

    async def verify(token: str) -> str | None:
        return "owner" if token == "good" else None

    options: dict[str, Any] = {"token_verifier": verify} if authenticated_app else {}
    auth = {"authorization": "Bearer good"} if authenticated_app else {}
    probes = 0
    with trio.fail_after(30):
        async with http_server(app_options=options) as (sup, url), httpx.AsyncClient() as http:
            base = url.removesuffix("/mcp")
            ids = []
            for _ in range(3):
                opened = await http.post(url, json=INIT, headers={**ACCEPT, **auth})
                assert opened.status_code == 200
                ids.append(opened.headers["mcp-session-id"])
            for path in PROBE_PATHS:
                for method in ("GET", "POST", "OPTIONS", "HEAD", "PROPFIND"):
                    for headers in ({}, ACCEPT, {"accept": "text/event-stream"}):
                        response = await http.request(
                            method, base + path, headers=headers, content=b"{}", timeout=5
                        )
                        probes += 1
                        text = response.text + json.dumps(dict(response.headers))
                        assert not any(i in text for i in ids), (method, path, response)
                        assert response.status_code != 200 or path.startswith("/.well-known")
            assert len(sup) == 3
    figures.update(probes=probes, ids_revealed=0)
