"""Authentication: passwords, session and API tokens, cookies, roles, redirects.

Tokens look like ``<id>-<secret>``: ``id`` (10 hex chars) names the row in
``api_keys``; only ``sha256(secret)`` is stored, and it is compared with
``hmac.compare_digest``.  The secret has 192 bits of entropy, so a fast hash
is enough (no password-style stretching needed).  A token is accepted from
the ``Burrow-Session-Token`` header or the ``burrow_session`` cookie.

Passwords are hashed with argon2id (argon2-cffi), in a worker thread so the
event loop never stalls for the ~50 ms a hash takes.

Roles: ``owner`` may do everything; ``template-admin`` also manages
templates; ``member`` uses workspaces.  Every API route names the least role
it needs (or ``public``), and the router checks it before the handler runs.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from http.cookies import CookieError, SimpleCookie

import argon2
import trio

from coderd.store.base import Agent, ApiKey, Role, Store, User

SESSION_HEADER = "Burrow-Session-Token"
AGENT_HEADER = "Burrow-Agent-Token"
SESSION_COOKIE = "burrow_session"
SESSION_LIFETIME = 24 * 3600.0
TOKEN_LIFETIME_DEFAULT = 30 * 24 * 3600.0
TOKEN_LIFETIME_MAX = 365 * 24 * 3600.0
MAX_PASSWORD = 256
MIN_PASSWORD = 8

_hasher = argon2.PasswordHasher()
# A real hash to verify against when the user does not exist, so a login for
# an unknown name costs the same time as one with a wrong password.
_DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))

# The least role each role satisfies, in rank order.
_RANK = {Role.MEMBER: 0, Role.TEMPLATE_ADMIN: 1, Role.OWNER: 2}


class AuthError(Exception):
    """Authentication failed; ``status`` is 401 (who are you) or 403 (not allowed)."""

    def __init__(self, message: str, status: int = 401) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Authenticated:
    user: User
    key: ApiKey


async def hash_password(password: str) -> str:
    return await trio.to_thread.run_sync(_hasher.hash, password)


async def verify_password(hashed: str | None, password: str) -> bool:
    """True if ``password`` matches ``hashed`` (None: no such user, still costs a hash)."""

    def check() -> bool:
        try:
            return _hasher.verify(hashed or _DUMMY_HASH, password) and hashed is not None
        except (argon2.exceptions.VerificationError, argon2.exceptions.InvalidHashError):
            return False

    return await trio.to_thread.run_sync(check)


def _hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


async def issue_key(
    store: Store, user_id: str, *, kind: str, name: str = "", lifetime: float
) -> tuple[str, ApiKey]:
    """Create a session or API token; returns ``(token, key)``.  The token is shown once."""
    key_id = secrets.token_hex(5)
    secret = secrets.token_urlsafe(24)
    now = time.time()
    key = ApiKey(key_id, user_id, _hash_secret(secret), kind, name, now, now + lifetime)
    await store.insert_api_key(key)
    return f"{key_id}-{secret}", key


def token_from_headers(headers: dict[str, str]) -> str | None:
    """The token from the header, else from the cookie; None if neither is present."""
    token = headers.get(SESSION_HEADER.lower(), "").strip()
    if token:
        return token
    raw = headers.get("cookie", "")
    if not raw:
        return None
    try:
        jar: SimpleCookie = SimpleCookie()
        jar.load(raw)
    except CookieError:
        return None
    morsel = jar.get(SESSION_COOKIE)
    return morsel.value if morsel is not None and morsel.value else None


async def authenticate(store: Store, token: str | None) -> Authenticated:
    """Check a token.

    Raises:
        AuthError: missing, malformed, unknown, forged or expired token (401).
    """
    if not token:
        raise AuthError("authentication required: send the Burrow-Session-Token header")
    key_id, sep, secret = token.partition("-")
    if not sep or len(key_id) != 10 or not secret or len(token) > 200:
        raise AuthError("invalid session token")
    found = await store.get_api_key_and_user(key_id)
    candidate = _hash_secret(secret)
    if found is None or not hmac.compare_digest(candidate, found[0].hashed_secret):
        raise AuthError("invalid session token")
    key, user = found
    if key.expires_at <= time.time():
        raise AuthError("session token expired: log in again")
    return Authenticated(user, key)


def has_role(user: User, least: Role) -> bool:
    """True if any of the user's roles ranks at least ``least``."""
    best = max((_RANK.get(Role(r), -1) for r in user.roles if r in _RANK), default=-1)
    return best >= _RANK[least]


def require_role(user: User, least: Role) -> None:
    """Raises AuthError(403) unless the user has ``least`` or a higher role."""
    if not has_role(user, least):
        raise AuthError(f"this needs the {least.value} role", status=403)


def session_cookie(token: str, *, secure: bool, max_age: int) -> str:
    """A ``Set-Cookie`` value for the session token (HttpOnly, SameSite=Lax, Secure on https)."""
    parts = [f"{SESSION_COOKIE}={token}", "Path=/", f"Max-Age={max_age}", "HttpOnly"]
    parts.append("SameSite=Lax")
    if secure:
        parts.append("Secure")
    return "; ".join(parts)


def safe_redirect(target: str) -> bool:
    """True if ``target`` is a same-origin path (``/x``), never another host.

    Refuses scheme-relative ``//host``, ``/\\host``, schemes, and control characters.
    """
    if not target.startswith("/") or target.startswith(("//", "/\\")):
        return False
    return "\\" not in target and not any(ord(c) < 0x20 or ord(c) == 0x7F for c in target)


async def authenticate_agent(store: Store, token: str | None) -> Agent:
    """Check a workspace agent's token (sent in ``Burrow-Agent-Token``).

    The token is valid only for the agents of the workspace's latest build
    while the workspace exists: a new start issues a new token.

    Raises:
        AuthError: missing, unknown or superseded token (401).
    """
    if not token or len(token) > 200:
        raise AuthError("agent authentication required: send the Burrow-Agent-Token header")
    digest = hashlib.sha256(token.encode()).hexdigest()
    agent = await store.get_agent_by_token_hash(digest)
    if agent is None or not hmac.compare_digest(agent.token_hash, digest):
        raise AuthError("invalid agent token")
    workspace = await store.get_workspace(agent.workspace_id)
    latest = await store.latest_build(agent.workspace_id)
    if workspace is None or workspace.deleted or latest is None or latest.id != agent.build_id:
        raise AuthError("agent token is no longer valid: the workspace was rebuilt")
    return agent
