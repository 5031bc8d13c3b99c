"""Users, sessions and API tokens on the wire (``/api/v2/users...``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from sdk.types.wire import OMIT_NONE, Wire


@dataclass(frozen=True)
class User(Wire):
    """A user (never the password hash)."""

    id: str
    username: str
    email: str
    roles: list[str]
    created_at: float


@dataclass(frozen=True)
class FirstUser(Wire):
    """Whether the first user (the owner) exists yet."""

    exists: bool


@dataclass(frozen=True)
class Session(Wire):
    """A new session: the token (also set as a cookie) and when it expires."""

    session_token: str
    expires_at: float
    user_id: str
    redirect: str | None = field(default=None, metadata=OMIT_NONE)


@dataclass(frozen=True)
class TokenCreated(Wire):
    """A new API token; ``key`` is shown only this once."""

    key: str
    id: str
    expires_at: float


@dataclass(frozen=True)
class Token(Wire):
    """An API token as listed (never its secret)."""

    id: str
    name: str
    created_at: float
    expires_at: float
    expired: bool


@dataclass(frozen=True)
class Message(Wire):
    """A plain acknowledgement, e.g. after logging out."""

    message: str
