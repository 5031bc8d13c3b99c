"""Bad input never gets a 5xx: a table of malformed requests, then a seeded fuzz."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from tests.coderd.apihelp import MAIN_TF, Api, tar_of

J = {"Content-Type": "application/json"}

# (method, path, raw body, headers, expected status)
TABLE: list[tuple[str, str, bytes, dict[str, str], int]] = [
    ("POST", "/users/login", b"{not json", J, 400),
    ("POST", "/users/login", b"\xff\xfe", J, 400),
    ("POST", "/users/login", b"[1, 2]", J, 400),
    ("POST", "/users/login", b'"string"', J, 400),
    ("POST", "/users/login", b"null", J, 400),
    ("POST", "/users/login", b'{"username": 1, "password": "x"}', J, 400),
    ("POST", "/users/login", b'{"username": "a"}', J, 400),
    ("POST", "/users/login", b'{"username": "a", "password": "b", "extra": 1}', J, 400),
    ("POST", "/users/login", b'{"username": "a", "password": "b"}', {"Content-Type": "text/xml"},
     415),
    ("POST", "/users/login", b"[" * 100000 + b"]" * 100000, J, 400),
    ("POST", "/users/login", b'{"username": "' + b"a" * 300000 + b'"}', J, 413),
    ("POST", "/users/first", b'{"username": "Has Space", "email": "a@b", "password": "longenough"}',
     J, 400),
    ("POST", "/users/first", b'{"username": "ok", "email": "nope", "password": "longenough"}',
     J, 400),
    ("POST", "/users/first", b'{"username": "ok", "email": "a@b.c", "password": "short"}', J, 400),
    ("POST", "/workspaces", b'{"name": "x", "template": "t", "variables": []}', J, 400),
    ("POST", "/workspaces", b'{"name": "x", "template": "t", "variables": {"a": 1}}', J, 400),
    ("POST", "/workspaces", b'{"name": "x", "template": "t", "variables": {"a b": "1"}}', J, 400),
    ("POST", "/workspaces", b'{"name": "-bad-", "template": "t"}', J, 400),
    ("POST", "/workspaces", b'{"name": "ok", "template": "missing"}', J, 404),
    ("POST", "/workspaces", b'{"name": "ok", "template": "t", "owner": "nobody"}', J, 404),
    ("POST", "/workspaces/nope/builds", b'{"transition": "start"}', J, 404),
    ("POST", "/workspaces/nope/builds", b'{"transition": "explode"}', J, 400),
    ("POST", "/users/me/tokens", b'{"lifetime_seconds": "10"}', J, 400),
    ("POST", "/users/me/tokens", b'{"lifetime_seconds": true}', J, 400),
    ("POST", "/users/me/tokens", b'{"lifetime_seconds": 1.5}', J, 400),
    ("GET", "/builds/nope", b"", {}, 404),
    ("GET", "/builds/nope/logs", b"", {}, 404),
    ("PATCH", "/builds/nope/cancel", b"", {}, 404),
    ("GET", "/users/me", b"unexpected body", {}, 200),
    ("POST", "/users/logout", b"unexpected body", {}, 400),
    ("GET", "/no/such/route", b"", {}, 404),
    ("DELETE", "/users/me", b"", {}, 405),
    ("GET", "/templates/%00", b"", {}, 404),
    ("POST", "/templates/t/versions", b"\x1f\x8b" + b"\0" * 100, {"Content-Type":
     "application/gzip"}, 400),
]


@pytest.mark.parametrize("backend", ["sqlite"])
async def test_bad_input_table(api: Api, backend: str) -> None:
    await api.setup_owner()
    r = await api.call("POST", "/templates/t/versions", raw=tar_of({"main.tf": MAIN_TF}),
                       headers={"Content-Type": "application/x-tar"})
    assert r.status == 201
    for method, path, raw, headers, want in TABLE:
        r = await api.call(method, path, raw=raw, headers=headers)
        assert r.status == want, (method, path, raw[:80], r.body)
        if want >= 400:
            assert isinstance(r.body, dict)
            assert isinstance(r.body.get("message"), str)
            assert set(r.body) <= {"message", "detail", "validations"}


def _value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(8 if depth < 3 else 5)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice([True, False])
    if kind == 2:
        return rng.choice([0, -1, 2**63, 1.5, 1e308])
    if kind == 3:
        return "".join(chr(rng.randrange(0, 0x3000)) for _ in range(rng.randrange(0, 40)))
    if kind == 4:
        return rng.choice(["start", "stop", "delete", "t", "admin", "../x", "a" * 300])
    if kind == 5:
        return [_value(rng, depth + 1) for _ in range(rng.randrange(0, 4))]
    keys = ["name", "template", "variables", "transition", "username", "password", "email",
            "redirect", "roles", "owner", "lifetime_seconds", "zzz"]
    return {rng.choice(keys): _value(rng, depth + 1) for _ in range(rng.randrange(0, 5))}


@pytest.mark.parametrize("backend", ["sqlite"])
async def test_fuzzed_json_bodies_never_5xx(api: Api, backend: str) -> None:
    await api.setup_owner()
    rng = random.Random(4)
    targets = [("POST", "/workspaces"), ("POST", "/users/me/tokens"),
               ("POST", "/workspaces/x/builds"), ("POST", "/users"),
               ("POST", "/users/login")]
    for _ in range(150):
        method, path = rng.choice(targets)
        body = json.dumps(_value(rng)).encode()
        r = await api.call(method, path, raw=body, headers=J)
        assert 200 <= r.status < 500, (path, body[:200], r.body)
        if r.status >= 400:
            assert isinstance(r.body["message"], str)
