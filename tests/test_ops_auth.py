"""Who may reach ``serve``: the token file, ``--auth module:attr`` and the public-bind checks.

No process and no socket here: the checks run on parsed arguments, and a test that goes through
`main` replaces the server with one that fails, so a regression can never bind anything.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest
import trio
from mcp.server.auth.provider import AccessToken

from supervisor import _cli
from supervisor._cli import build_parser, main
from supervisor._ops._auth import (
    TokenFile,
    check_exposure,
    is_loopback,
    load_verifier,
    verifier_from_args,
)


def parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["serve", *argv])


# -- the token file ------------------------------------------------------------------------------


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "tokens"
    path.write_text(text, encoding="utf-8")
    return path


async def test_token_file_maps_tokens_to_principals(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "# tokens for the staging server\n"
        "\n"
        "s3cr3t-alice   alice@example.com\n"
        "  s3cr3t-bob bob  \n"
        "s3cr3t-anon\n"
        "   # an indented comment\n",
    )
    tokens = TokenFile.load(path)
    assert len(tokens) == 3
    assert await tokens("s3cr3t-alice") == "alice@example.com"
    assert await tokens("s3cr3t-bob") == "bob"
    # A token without a principal gets one naming its line, never the token itself.
    anon = await tokens("s3cr3t-anon")
    assert anon == "token-line-5"
    assert "s3cr3t" not in anon
    for wrong in ("", "s3cr3t", "s3cr3t-alice ", "S3CR3T-ALICE", "alice@example.com", "#"):
        assert await tokens(wrong) is None


async def test_token_file_verifier_is_what_the_http_app_accepts(tmp_path: Path) -> None:
    # McpHttpApp treats anything with verify_token as an SDK verifier: the file is a plain
    # async callable, so its principals come through unchanged.
    tokens = TokenFile.load(write(tmp_path, "t1 alice\n"))
    assert not hasattr(tokens, "verify_token")
    assert await tokens("t1") == "alice"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "no tokens"),
        ("# only a comment\n\n   \n", "no tokens"),
        ("tok alice\ntok bob\n", "line 2: the same token as line 1"),
    ],
)
def test_token_file_refuses_a_file_without_usable_tokens(
    tmp_path: Path, text: str, message: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ValueError, match=message) as exc:
        TokenFile.load(path)
    assert str(path) in str(exc.value)
    assert "tok " not in str(exc.value)  # a token never appears in an error


def test_token_file_refuses_missing_and_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no such file") as exc:
        TokenFile.load(tmp_path / "absent")
    assert "--auth-token-file" in str(exc.value)
    with pytest.raises(ValueError, match="cannot read"):
        TokenFile.load(tmp_path)  # a directory
    binary = tmp_path / "binary"
    binary.write_bytes(b"\xff\xfe tok\n")
    with pytest.raises(ValueError, match="cannot read"):
        TokenFile.load(binary)


# -- --auth module:attr ----------------------------------------------------------------------


async def verify_alice(token: str) -> str | None:
    return "alice" if token == "alice-token" else None


def verify_sync(token: str) -> str | None:
    return "sync" if token == "sync-token" else None


class SdkVerifier:
    async def verify_token(self, token: str) -> AccessToken | None:
        if token != "sdk-token":
            return None
        return AccessToken(token=token, client_id="sdk-client", scopes=[])


sdk_verifier = SdkVerifier()
not_callable = 42


def make_verifier() -> Any:
    return verify_alice


def make_sdk_verifier() -> SdkVerifier:
    return sdk_verifier


def make_nothing() -> int:
    return 3


async def two_arguments(token: str, other: str) -> str | None:
    return None


async def test_auth_loads_an_async_function() -> None:
    verifier: Any = load_verifier(f"{__name__}:verify_alice")
    assert await verifier("alice-token") == "alice"
    assert await verifier("other") is None


async def test_auth_accepts_a_plain_function_too() -> None:
    verifier: Any = load_verifier(f"{__name__}:verify_sync")
    assert await verifier("sync-token") == "sync"
    assert await verifier("other") is None


def test_auth_passes_an_sdk_token_verifier_through() -> None:
    assert load_verifier(f"{__name__}:sdk_verifier") is sdk_verifier


async def test_auth_calls_a_zero_argument_factory_once() -> None:
    assert load_verifier(f"{__name__}:make_sdk_verifier") is sdk_verifier
    verifier: Any = load_verifier(f"{__name__}:make_verifier")
    assert await verifier("alice-token") == "alice"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("no-colon", "must look like module:attr"),
        ("no_such_module_xyz:verify", "cannot import no_such_module_xyz"),
        (f"{__name__}:no_such_attr", "has no attribute 'no_such_attr'"),
        (f"{__name__}:not_callable", "is not callable"),
        (f"{__name__}:SdkVerifier", "is a class"),
        (f"{__name__}:two_arguments", "does not take one argument"),
        (f"{__name__}:make_nothing", "did not return a verifier"),
    ],
)
def test_auth_explains_what_is_wrong(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as exc:
        load_verifier(spec)
    assert str(exc.value).startswith("--auth ")


def test_verifier_from_args(tmp_path: Path) -> None:
    assert verifier_from_args(parse()) is None
    path = write(tmp_path, "t alice\n")
    assert isinstance(verifier_from_args(parse("--auth-token-file", str(path))), TokenFile)
    assert verifier_from_args(parse("--auth", f"{__name__}:sdk_verifier")) is sdk_verifier


def test_token_file_and_auth_are_exclusive(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        parse("--auth-token-file", "f", "--auth", "m:a")
    assert exc.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


# -- a public bind ---------------------------------------------------------------------------


def test_is_loopback() -> None:
    assert all(map(is_loopback, ["127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost"]))
    assert not any(map(is_loopback, ["0.0.0.0", "10.0.0.1", "::", "", "example.com"]))


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.7", "mcp.example.com"])
def test_a_public_bind_without_authentication_is_refused(host: str) -> None:
    with pytest.raises(ValueError) as exc:
        check_exposure(parse("--host", host))
    message = str(exc.value)
    assert "\n" not in message
    assert host in message
    for remedy in ("--auth-token-file", "--auth", "--allow-unauthenticated"):
        assert remedy in message


def test_a_public_bind_with_default_allowed_hosts_is_warned_about(tmp_path: Path) -> None:
    path = str(write(tmp_path, "t\n"))
    [warning] = check_exposure(parse("--host", "0.0.0.0", "--auth-token-file", path))
    assert "--allowed-hosts" in warning and "403" in warning
    [warning] = check_exposure(parse("--host", "0.0.0.0", "--allow-unauthenticated"))
    assert "--allowed-hosts" in warning
    assert (
        check_exposure(
            parse(
                "--host", "0.0.0.0", "--auth-token-file", path, "--allowed-hosts", "mcp.example.com"
            )
        )
        == []
    )


def test_loopback_and_stdio_need_nothing() -> None:
    assert check_exposure(parse()) == []
    assert check_exposure(parse("--host", "::1")) == []
    assert check_exposure(parse("--host", "localhost")) == []
    assert check_exposure(parse("--stdio", "--host", "0.0.0.0")) == []


def test_a_per_principal_limit_without_authentication_is_warned_about(tmp_path: Path) -> None:
    [warning] = check_exposure(parse("--max-sessions-per-principal", "2"))
    assert "limits nothing without authentication" in warning
    assert "--auth-token-file" in warning
    path = str(write(tmp_path, "t\n"))
    assert (
        check_exposure(parse("--max-sessions-per-principal", "2", "--auth-token-file", path)) == []
    )


def refuse_to_serve(*args: Any) -> Any:
    raise AssertionError("serve got as far as starting a server")


@pytest.fixture
def no_server(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_cli, "_serve", refuse_to_serve)


def test_main_refuses_a_public_bind_before_serving(
    no_server: None, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["serve", "--host", "0.0.0.0", "--port", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith("error: ") and "--auth-token-file" in err


@pytest.mark.parametrize(
    "argv",
    [
        ["--auth-token-file", "/nonexistent/tokens"],
        ["--auth", "no_such_module_xyz:verify"],
    ],
)
def test_main_reports_bad_authentication_options(
    no_server: None, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    assert main(["serve", "--port", "0", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ")


def test_main_warns_about_default_allowed_hosts(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    served: list[argparse.Namespace] = []

    async def fake_serve(args: argparse.Namespace, verifier: Any = None) -> int:
        await trio.lowlevel.checkpoint()
        served.append(args)
        return 0

    monkeypatch.setattr(_cli, "_serve", fake_serve)
    assert main(["serve", "--host", "0.0.0.0", "--allow-unauthenticated"]) == 0
    assert len(served) == 1
    assert "--allowed-hosts" in capsys.readouterr().err
