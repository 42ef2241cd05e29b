"""``python -m supervisor serve``: argument parsing and ``--app`` loading (no processes here).

The command itself (HTTP and stdio, signals, exit status, summary) runs as a subprocess in
``test_mcp_interop.py``.
"""

from __future__ import annotations

import pytest

from supervisor._cli import build_parser, load_app, main
from supervisor.mcp import create_demo_server


def test_serve_defaults() -> None:
    args = build_parser().parse_args(["serve"])
    assert (args.host, args.port, args.path) == ("127.0.0.1", 8000, "/mcp")
    assert (args.max_sessions, args.idle_timeout, args.init_timeout) == (100, 1800.0, None)
    assert args.app is None
    assert not args.stdio


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


@pytest.mark.parametrize(
    "argv",
    [
        ["serve", "--max-sessions", "0"],
        ["serve", "--idle-timeout", "-1"],
        ["serve", "--init-timeout", "0"],
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
