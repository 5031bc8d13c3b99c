"""Users, sessions and API tokens."""

from __future__ import annotations

import time
import urllib.parse

from coderd import auth
from coderd.api import views
from coderd.api.router import AUTHENTICATED, PUBLIC, Call, Route, answer, optional_auth
from coderd.api.schema import ApiError, Field
from coderd.store.base import Conflict, Role
from sdk import types as t
from web.http import Response

USERNAME = r"[a-z0-9](?:[a-z0-9_-]{0,30}[a-z0-9])?"
EMAIL = r"[^@\s]{1,64}@[^@\s]{1,190}"
ROLES = tuple(r.value for r in Role)

_new_user = {
    "username": Field("string", required=True, max_len=32, pattern=USERNAME),
    "email": Field("string", required=True, max_len=254, pattern=EMAIL),
    "password": Field(
        "string", required=True, max_len=auth.MAX_PASSWORD, description="at least 8 characters"
    ),
}


def _check_password(password: str) -> None:
    if len(password) < auth.MIN_PASSWORD:
        raise ApiError(
            400,
            "invalid request body",
            validations=[{"field": "password", "detail": "must be at least 8 characters"}],
        )


async def _session_response(
    call: Call, user_id: str, status: int, redirect: str | None = None
) -> Response:
    token, key = await auth.issue_key(
        call.cd.store, user_id, kind="session", lifetime=auth.SESSION_LIFETIME
    )
    secure = call.request.scheme == "https" or call.cd.secure_cookies
    cookie = auth.session_cookie(token, secure=secure, max_age=int(auth.SESSION_LIFETIME))
    headers = [("Set-Cookie", cookie)]
    if redirect is not None:
        headers.append(("Location", redirect))
    return answer(status, t.Session(token, key.expires_at, user_id, redirect), headers)


async def get_first(call: Call) -> Response:
    return answer(200, t.FirstUser(await call.cd.store.count_users() > 0))


async def post_first(call: Call) -> Response:
    b = call.body
    _check_password(b["password"])
    if await call.cd.store.count_users() > 0:
        raise ApiError(409, "the first user already exists", "log in instead")
    hashed = await auth.hash_password(b["password"])
    try:
        user = await call.cd.store.create_first_user(b["username"], b["email"], hashed)
    except Conflict:
        raise ApiError(409, "the first user already exists", "log in instead") from None
    return await _session_response(call, user.id, 201)


async def login(call: Call) -> Response:
    b = call.body
    redirect = b.get("redirect") or call.query("redirect")
    if redirect and not auth.safe_redirect(redirect):
        raise ApiError(
            400,
            "invalid redirect",
            validations=[{"field": "redirect", "detail": "must be a path on this server"}],
        )
    user = await call.cd.store.get_user_by_login(b["username"])
    ok = await auth.verify_password(user.hashed_password if user else None, b["password"])
    if user is None or not ok:
        raise ApiError(401, "incorrect username or password")
    quoted = urllib.parse.quote(redirect, safe="/?&=%#:@!$'()*+,;~-._") if redirect else None
    return await _session_response(call, user.id, 201, quoted)


async def logout(call: Call) -> Response:
    who = call.who or await optional_auth(call)
    if who is not None:
        await call.cd.store.delete_api_key(who.key.id)
    expired = f"{auth.SESSION_COOKIE}=; Path=/; Max-Age=0; HttpOnly; SameSite=Lax"
    return answer(200, t.Message("logged out"), [("Set-Cookie", expired)])


async def me(call: Call) -> Response:
    return answer(200, views.user(call.user))


async def list_users(call: Call) -> Response:
    return answer(200, [views.user(u) for u in await call.cd.store.list_users()])


async def create_user(call: Call) -> Response:
    b = call.body
    _check_password(b["password"])
    roles = b.get("roles", "member").split(",")
    if any(r not in ROLES for r in roles):
        raise ApiError(
            400,
            "invalid request body",
            validations=[{"field": "roles", "detail": f"roles are {', '.join(ROLES)}"}],
        )
    hashed = await auth.hash_password(b["password"])
    try:
        user = await call.cd.store.create_user(b["username"], b["email"], hashed, tuple(roles))
    except Conflict:
        raise ApiError(409, "a user with that username or email exists") from None
    return answer(201, views.user(user))


async def create_token(call: Call) -> Response:
    lifetime = float(call.body.get("lifetime_seconds", auth.TOKEN_LIFETIME_DEFAULT))
    token, key = await auth.issue_key(
        call.cd.store, call.user.id, kind="token", name=call.body.get("name", ""), lifetime=lifetime
    )
    return answer(201, t.TokenCreated(token, key.id, key.expires_at))


async def list_tokens(call: Call) -> Response:
    keys = await call.cd.store.list_api_keys(call.user.id, "token")
    now = time.time()
    return answer(
        200, [t.Token(k.id, k.name, k.created_at, k.expires_at, k.expires_at <= now) for k in keys]
    )


async def delete_token(call: Call) -> Response:
    key = await call.cd.store.get_api_key(call.params["token"])
    if key is None or key.user_id != call.user.id or key.kind != "token":
        raise ApiError(404, "no such token")
    await call.cd.store.delete_api_key(key.id)
    return Response(204)


ROUTES = [
    Route("GET", "/users/first", get_first, PUBLIC, "Whether the first user exists",
          returns=t.FirstUser),
    Route(
        "POST", "/users/first", post_first, PUBLIC,
        "Create the first user (the owner); only while there are no users",
        body=_new_user, responses={201: "created, with a session token"},
        returns=t.Session,
    ),
    Route(
        "POST", "/users/login", login, PUBLIC, "Log in with a password",
        body={
            "username": Field("string", required=True, max_len=254, description="or email"),
            "password": Field("string", required=True, max_len=auth.MAX_PASSWORD),
            "redirect": Field("string", max_len=2048, description="same-origin path"),
        },
        responses={201: "a session token (also set as a cookie)"},
        returns=t.Session,
    ),
    Route("POST", "/users/logout", logout, PUBLIC, "End the current session", returns=t.Message),
    Route("GET", "/users/me", me, AUTHENTICATED, "The authenticated user", returns=t.User),
    Route("GET", "/users", list_users, Role.OWNER, "List users", returns=[t.User]),
    Route(
        "POST", "/users", create_user, Role.OWNER, "Create a user",
        body={
            **_new_user,
            "roles": Field("string", max_len=64, description="comma-separated roles"),
        },
        responses={201: "created"},
        returns=t.User,
    ),
    Route(
        "POST", "/users/me/tokens", create_token, AUTHENTICATED, "Create an API token",
        body={
            "name": Field("string", max_len=64),
            "lifetime_seconds": Field(
                "integer", minimum=60, maximum=int(auth.TOKEN_LIFETIME_MAX)
            ),
        },
        responses={201: "the token, shown once"},
        returns=t.TokenCreated,
    ),
    Route("GET", "/users/me/tokens", list_tokens, AUTHENTICATED, "List your API tokens",
          returns=[t.Token]),
    Route(
        "DELETE", "/users/me/tokens/{token}", delete_token, AUTHENTICATED,
        "Delete one of your API tokens", responses={204: "deleted"},
    ),
]
