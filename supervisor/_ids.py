"""Session ids: how they are made and the only form of them that may reach a log or a message."""

from __future__ import annotations

import secrets

__all__ = ["ID_PREFIX", "new_session_id", "short_id"]

_ID_BYTES = 24  # 192 bits; token_urlsafe gives 32 visible ASCII characters

#: How many characters of a session id may be shown or logged: full ids are credentials.
ID_PREFIX = 8


def new_session_id() -> str:
    """A fresh session id: 192 bits from `secrets`, URL-safe base64 (32 characters)."""
    return secrets.token_urlsafe(_ID_BYTES)


def short_id(session_id: object) -> str:
    """The first `ID_PREFIX` characters of an id: the only part of it a log line may carry."""
    return str(session_id)[:ID_PREFIX]
