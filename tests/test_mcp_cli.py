"""``python -m supervisor serve``: argument parsing and ``--app`` loading (no processes here).

The command itself (HTTP and stdio, signals, exit status, summary) runs as a subprocess in
``test_mcp_interop.py``.
"""

from __future__ import annotations

import pytest

from supervisor import SupervisorConfig
from supervisor._cli import build_parser, load_app, main, supervisor_config
from supervisor.mcp import create_demo_server


def test_serve_defaults() -> None:
    args = build_parser().parse_args(["serve"])
    assert (args.host, args.port, args.path) == ("127.0.0.1", 8000, "/mcp")
    assert (args.max_sessions, args.idle_timeout, args.max_lifetime) == (100, 1800.0, None)
    # A production default: a client that never finishes the handshake frees its slot.
    assert args.init_timeout == 30.0
    assert args.max_sessions_per_principal is None
    assert args.app is None
    assert not args.stdio
    # Loopback only, no authentication (refused on a public bind, see test_ops_auth.py).
    assert (args.allowed_hosts, args.allowed_origins) == (None, None)
    assert (args.auth_token_file, args.auth, args.allow_unauthenticated) == (None, None, False)


def test_serve_options() -> None:
    args = build_parser().parse_args(
        [
            "serve",
            "--port",
            "0",
            "--max-sessions",
            "5",
            "--idle-timeout",
            "2.5",
            "--init-timeout",
            "1",
            "--app",
            "pkg.mod:attr",
        ]
    )
    assert (args.port, args.max_sessions, args.idle_timeout, args.init_timeout) == (0, 5, 2.5, 1.0)
    assert args.app == "pkg.mod:attr"


def test_allowed_hosts_and_origins_are_comma_separated_or_repeated() -> None:
    args = build_parser().parse_args(
        [
            "serve",
            "--allowed-hosts",
            "mcp.example.com, mcp.example.com:*",
            "--allowed-hosts",
            "*",
            "--allowed-origins",
            "https://mcp.example.com",
        ]
    )
    assert args.allowed_hosts == ["mcp.example.com", "mcp.example.com:*", "*"]
    assert args.allowed_origins == ["https://mcp.example.com"]


def test_limits_and_turning_the_init_timeout_off() -> None:
    args = build_parser().parse_args(
        ["serve", "--max-lifetime", "3600", "--max-sessions-per-principal", "4"]
    )
    assert (args.max_lifetime, args.max_sessions_per_principal) == (3600.0, 4)
    assert build_parser().parse_args(["serve", "--init-timeout", "none"]).init_timeout is None


def test_supervisor_config_carries_every_limit() -> None:
    args = build_parser().parse_args(
        [
            "serve",
            "--max-sessions",
            "7",
            "--idle-timeout",
            "60",
            "--init-timeout",
            "5",
            "--max-lifetime",
            "600",
            "--max-sessions-per-principal",
            "2",
        ]
    )
    assert supervisor_config(args) == {
        "max_sessions": 7,
        "idle_timeout": 60.0,
        "init_timeout": 5.0,
        "max_lifetime": 600.0,
        "max_sessions_per_principal": 2,
    }
    # Every key is a SupervisorConfig field.
    assert SupervisorConfig(**supervisor_config(args)).max_lifetime == 600.0


@pytest.mark.parametrize(
    "argv",
    [
        ["serve", "--max-sessions", "0"],
        ["serve", "--idle-timeout", "-1"],
        ["serve", "--init-timeout", "0"],
        ["serve", "--max-lifetime", "0"],
        ["serve", "--max-sessions-per-principal", "0"],
        ["serve", "--allowed-hosts", " , "],
        [],
    ],
)
def test_bad_arguments_exit_2(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(argv)
    assert exc.value.code == 2


def test_load_app() -> None:
    assert load_app("supervisor.mcp:create_demo_server") is create_demo_server
    with pytest.raises(ValueError):
        load_app("no-colon")
    with pytest.raises(ImportError):
        load_app("no_such_module_xyz:attr")
    with pytest.raises(AttributeError):
        load_app("supervisor.mcp:no_such_attr")


def test_bad_app_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--app", "no_such_module_xyz:server", "--port", "0"]) == 2
    assert "error:" in capsys.readouterr().err


def test_serve_help_documents_the_production_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default 30: a client that never finishes it would otherwise hold a slot" in text
    for flag in (
        "--allowed-hosts",
        "--allowed-origins",
        "--auth-token-file",
        "--auth MODULE:ATTR",
        "--allow-unauthenticated",
        "--max-lifetime",
        "--max-sessions-per-principal",
    ):
        assert flag in text
    assert "a second one cancels what is left at once" in text
