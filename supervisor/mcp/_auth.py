"""Bearer-token authentication of the HTTP and WebSocket front ends: who a request comes from."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Protocol, TypeAlias, runtime_checkable

from mcp.server.auth.provider import AccessToken, principal_components

from ._asgi import Scope, _header

__all__ = ["Principal", "TokenVerifierFn"]

logger = logging.getLogger("supervisor.mcp")

#: A principal is a string naming who a bearer token belongs to.
Principal: TypeAlias = str

#: ``async (token) -> principal | None``: the bearer-token hook of `McpHttpApp`.
TokenVerifierFn: TypeAlias = Callable[[str], Awaitable[Principal | None]]


@runtime_checkable
class _SdkTokenVerifier(Protocol):
    async def verify_token(self, token: str) -> AccessToken | None: ...


class _VerifierFailed(Exception):
    """The token verifier raised, or returned something that is neither a principal nor None."""


async def _authenticate(
    verifier: TokenVerifierFn | _SdkTokenVerifier | None, scope: Scope
) -> tuple[bool, Principal | None]:
    """(ok, principal); ok is False when a verifier is set and the token is refused.

    Raises `_VerifierFailed` (logged here) when the verifier raises or answers nonsense.
    """
    if verifier is None:
        return True, None
    authorization = _header(scope, b"authorization") or ""
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return False, None
    try:
        if isinstance(verifier, _SdkTokenVerifier):
            access: object = await verifier.verify_token(token)
        else:
            principal: object = await verifier(token)
    except Exception as exc:
        logger.exception("the token verifier raised: answered 500")
        raise _VerifierFailed from exc
    if isinstance(verifier, _SdkTokenVerifier):
        if access is None:
            return False, None
        if not isinstance(access, AccessToken):
            logger.error(
                "the token verifier returned a %s, not an AccessToken or None: answered 500",
                type(access).__name__,
            )
            raise _VerifierFailed
        if access.expires_at is not None and access.expires_at < time.time():
            return False, None
        client_id, issuer, subject = principal_components(access)
        if issuer is None and subject is None:
            return True, client_id
        return True, json.dumps([client_id, issuer, subject])
    if principal is None:
        return False, None
    if not isinstance(principal, str):
        logger.error(
            "the token verifier returned a %s, not a str principal or None: answered 500",
            type(principal).__name__,
        )
        raise _VerifierFailed
    if not principal:
        logger.error("the token verifier returned an empty principal: answered 500")
        raise _VerifierFailed
    return True, str.__str__(principal)


def _www_authenticate(resource_metadata_url: str | None) -> tuple[str, str]:
    """The ``WWW-Authenticate`` header of a 401 (RFC 6750; RFC 9728's ``resource_metadata``)."""
    value = 'Bearer error="invalid_token", error_description="Authentication required"'
    if resource_metadata_url is not None:
        value += f', resource_metadata="{resource_metadata_url}"'
    return ("WWW-Authenticate", value)
