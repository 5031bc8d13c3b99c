"""An in-process client for coderd's router (no sockets): used by the API tests."""

from __future__ import annotations

import io
import json
import tarfile
from dataclasses import dataclass, field
from typing import Any

import trio_websocket

from coderd.api.app import make_router
from coderd.api.router import Router
from coderd.deps import Coderd
from web.http import Request


class NoUpgrade:
    @property
    def is_websocket(self) -> bool:
        return False

    async def accept_websocket(
        self, subprotocol: str | None = None
    ) -> trio_websocket.WebSocketConnection:
        raise RuntimeError("not a websocket")

    async def accept_raw(self, headers: Any, protocol: str) -> Any:
        raise RuntimeError("no")

    async def accept_websocket_stream(self, subprotocol: str | None = None) -> Any:
        raise RuntimeError("no")


@dataclass
class Reply:
    status: int
    body: Any
    headers: list[tuple[str, str]] = field(default_factory=list)

    def header(self, name: str) -> str:
        return next((v for k, v in self.headers if k.lower() == name.lower()), "")


class Api:
    def __init__(self, cd: Coderd) -> None:
        self.cd = cd
        self.router: Router = make_router(cd)
        self.token: str | None = None
        self.scheme = "http"

    async def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        raw: bytes | None = None,
        token: str | bool | None = True,
        headers: dict[str, str] | None = None,
        query: dict[str, list[str]] | None = None,
    ) -> Reply:
        hdrs = {k.lower(): v for k, v in (headers or {}).items()}
        if raw is None:
            raw = b"" if body is None else json.dumps(body).encode()
            if body is not None:
                hdrs.setdefault("content-type", "application/json")
        tok = self.token if token is True else (token or None)
        if tok:
            hdrs["burrow-session-token"] = str(tok)
        req = Request(method, "/api/v2" + path, query or {}, hdrs, raw, "127.0.0.1:1", self.scheme)
        resp = await self.router.handle(req, NoUpgrade())
        assert resp is not None
        text = resp.body.decode() if resp.body else ""
        parsed = json.loads(text) if text else None
        return Reply(resp.status, parsed, resp.headers)

    async def setup_owner(self) -> str:
        r = await self.call(
            "POST",
            "/users/first",
            {"username": "admin", "email": "admin@example.com", "password": "correct horse"},
            token=None,
        )
        assert r.status == 201, r.body
        self.token = r.body["session_token"]
        return str(r.body["user_id"])

    async def make_user(self, name: str, roles: str = "member") -> str:
        r = await self.call(
            "POST",
            "/users",
            {"username": name, "email": f"{name}@example.com", "password": "password123",
             "roles": roles},
        )
        assert r.status == 201, r.body
        r = await self.call(
            "POST", "/users/login", {"username": name, "password": "password123"}, token=None
        )
        assert r.status == 201, r.body
        return str(r.body["session_token"])


def tar_of(files: dict[str, bytes], *, links: dict[str, str] | None = None,
           hardlinks: dict[str, str] | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            tar.addfile(info)
        for name, target in (hardlinks or {}).items():
            info = tarfile.TarInfo(name)
            info.type = tarfile.LNKTYPE
            info.linkname = target
            tar.addfile(info)
    return buf.getvalue()


MAIN_TF = b'variable "burrow_workspace_transition" { type = string }\n'
