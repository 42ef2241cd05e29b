"""Who may reach ``serve``: bearer tokens without writing Python, and the public-bind checks.

* `TokenFile`: ``--auth-token-file PATH``, a static list of tokens (one a line, optionally
  followed by the principal it stands for), checked in constant time.
* `load_verifier`: ``--auth module:attr``, a verifier of your own: ``async (token) -> principal
  | None`` (a plain function works too) or an SDK ``TokenVerifier``.
* `check_exposure`: ``serve`` refuses a bind that is not loopback without authentication
  (unless ``--allow-unauthenticated``), and warns when such a bind keeps the loopback-only
  default of ``--allowed-hosts`` (every remote client would get 403), or sets a per-principal
  limit without authentication.

Everything here runs before anything binds, and every error is one line naming the option and
what to add. No token ever appears in an error, a log line or a principal.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import importlib
import inspect
import ipaddress
from collections.abc import Callable
from pathlib import Path
from typing import Any, final

__all__ = [
    "TokenFile",
    "check_exposure",
    "is_loopback",
    "load_verifier",
    "verifier_from_args",
]

_LOOPBACK_NAMES = ("localhost", "localhost.")


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or name, optionally ``[bracketed]``) is loopback."""
    host = host.strip("[]")
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _digest(token: str) -> bytes:
    # Comparing digests keeps the comparison constant-time whatever the lengths.
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


@final
class TokenFile:
    """Bearer tokens from a file: ``await tokens(token)`` is its principal, or ``None``.

    The file has one token a line, optionally followed by whitespace and the principal it
    stands for (``TOKEN alice@example.com``); blank lines and lines starting with ``#`` are
    ignored. A token without a principal stands for ``token-line-N`` (N its line number), so
    two tokens never share a session and no principal reveals a token. A token is compared with
    every entry in constant time (`hmac.compare_digest` on SHA-256 digests), so timing tells
    nothing about how much of it matched or which entry did. The file is read once, when
    `load` is called. Never blocks.
    """

    def __init__(self, entries: list[tuple[str, str]], source: str = "tokens") -> None:
        self.source = source
        self._entries = [(_digest(token), principal) for token, principal in entries]

    @classmethod
    def load(cls, path: str | Path) -> TokenFile:
        """Read a token file.

        Raises:
            ValueError: the file is missing, unreadable, not UTF-8, has no token, or has the
                same token twice; the message names the file and line, never a token.
        """
        where = f"--auth-token-file {path}"
        try:
            text = Path(path).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ValueError(f"{where}: no such file") from None
        except (OSError, UnicodeDecodeError) as exc:
            reason = (
                exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
            )
            raise ValueError(f"{where}: cannot read it ({reason})") from None
        entries: list[tuple[str, str]] = []
        seen: dict[str, int] = {}
        for number, line in enumerate(text.splitlines(), start=1):
            stripped = line.strip()
            if not stripped or stripped.startswith("#"):
                continue
            token, *rest = stripped.split(None, 1)
            principal = rest[0].strip() if rest else f"token-line-{number}"
            if token in seen:
                raise ValueError(f"{where}: line {number}: the same token as line {seen[token]}")
            seen[token] = number
            entries.append((token, principal))
        if not entries:
            raise ValueError(
                f"{where}: no tokens (expected one a line, optionally 'TOKEN PRINCIPAL'; "
                "blank lines and # comments are ignored)"
            )
        return cls(entries, source=str(path))

    def __len__(self) -> int:
        return len(self._entries)

    async def __call__(self, token: str) -> str | None:
        given = _digest(token)
        found: str | None = None
        for digest, principal in self._entries:
            if hmac.compare_digest(given, digest) and found is None:
                found = principal
        return found

    def __repr__(self) -> str:
        return f"TokenFile({self.source!r}, {len(self)} tokens)"


@final
class _FunctionVerifier:
    """``--auth`` pointing at a function: awaited if it returns an awaitable."""

    def __init__(self, fn: Callable[[str], Any], spec: str) -> None:
        self.fn = fn
        self.spec = spec

    async def __call__(self, token: str) -> Any:
        result = self.fn(token)
        if inspect.isawaitable(result):
            result = await result
        return result

    def __repr__(self) -> str:
        return f"--auth {self.spec}"


def load_verifier(spec: str) -> Any:
    """Import ``--auth module:attr``: an SDK ``TokenVerifier``, or a token -> principal function.

    An object with a ``verify_token`` method is returned as it is (`McpHttpApp` derives the
    principal from the ``AccessToken``); a function of the token (``async`` or not) is wrapped
    so it is awaited when it returns an awaitable; a zero-argument function is taken for a
    factory and called once, here, for one of those.

    Raises:
        ValueError: ``spec`` is not ``module:attr``, the module cannot be imported, the
            attribute is missing, is a class (point at an instance), is not callable, or does
            not take one argument (nor zero, as a factory of a verifier).
    """
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"--auth must look like module:attr, got {spec!r}")
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"--auth {spec}: cannot import {module_name} ({exc})") from None
    for part in attr.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise ValueError(f"--auth {spec}: {module_name} has no attribute {attr!r}") from None
    expected = "expected async (token) -> principal | None, or an SDK TokenVerifier"
    if inspect.isclass(target):
        raise ValueError(f"--auth {spec} is a class; point it at an instance ({expected})")
    if callable(getattr(target, "verify_token", None)):
        return target
    if not callable(target):
        raise ValueError(f"--auth {spec} is not callable (a {type(target).__name__}); {expected}")
    if not _accepts(target, 1):
        if not _accepts(target, 0):
            raise ValueError(f"--auth {spec} does not take one argument (the token); {expected}")
        # A zero-argument factory of a verifier (as --app takes a factory of a server).
        made = target()
        if inspect.isawaitable(made):
            close = getattr(made, "close", None)
            if callable(close):
                close()
            raise ValueError(f"--auth {spec} takes no token and is async; {expected}")
        if callable(getattr(made, "verify_token", None)):
            return made
        if not callable(made) or not _accepts(made, 1):
            raise ValueError(f"--auth {spec}() did not return a verifier; {expected}")
        return _FunctionVerifier(made, spec)
    return _FunctionVerifier(target, spec)


def _accepts(fn: Callable[..., Any], count: int) -> bool:
    try:
        inspect.signature(fn).bind(*range(count))
    except TypeError:
        return False
    except ValueError:  # no signature to be had (some builtins): assume it does
        return True
    return True


def verifier_from_args(args: argparse.Namespace) -> Any:
    """The token verifier ``serve``'s options ask for, or ``None``; raises `ValueError`."""
    if getattr(args, "auth_token_file", None):
        return TokenFile.load(args.auth_token_file)
    if getattr(args, "auth", None):
        return load_verifier(args.auth)
    return None


def check_exposure(args: argparse.Namespace) -> list[str]:
    """Check who ``serve``'s options let in; the warnings to print.

    Warns about a bind that is not loopback with the default (loopback-only) allowed hosts,
    and about ``--max-sessions-per-principal`` without authentication (sessions then have no
    principal, so it limits nothing).

    Raises:
        ValueError: a bind that is not loopback without ``--auth-token-file``/``--auth`` or
            ``--allow-unauthenticated``.
    """
    warnings: list[str] = []
    authenticated = bool(getattr(args, "auth_token_file", None) or getattr(args, "auth", None))
    if getattr(args, "max_sessions_per_principal", None) is not None and not authenticated:
        warnings.append(
            "--max-sessions-per-principal limits nothing without authentication (sessions have "
            "no principal): add --auth-token-file PATH or --auth module:attr"
        )
    if args.stdio or is_loopback(args.host):
        return warnings
    if not authenticated and not args.allow_unauthenticated:
        raise ValueError(
            f"serving on {args.host} (not loopback) needs authentication: add "
            "--auth-token-file PATH or --auth module:attr (or --allow-unauthenticated to serve "
            "anyone who can reach it)"
        )
    if args.allowed_hosts is None:
        warnings.append(
            f"serving on {args.host} with the default --allowed-hosts (loopback names only): "
            "every client that sends another Host gets 403; add --allowed-hosts with the "
            "names clients use (e.g. --allowed-hosts mcp.example.com)"
        )
    return warnings
