"""The user API client: what the CLI (and benchmarks, and tests) call on coderd.

Every method sends one request through :class:`sdk.transport.Api` with the
session or API token in ``Burrow-Session-Token`` and returns a typed value
from :mod:`sdk.types` -- the same class coderd built the answer from.
Failures are :class:`sdk.errors.ApiError` (an error status) or
:class:`sdk.errors.Unreachable` (no answer; :class:`~sdk.errors.BadResponse`
when the answer is not the API's shape).
"""

from __future__ import annotations

import urllib.parse
from typing import Any

from sdk import types as t
from sdk.errors import parse, parse_list
from sdk.transport import Api, Query

SESSION_HEADER = "Burrow-Session-Token"
MAX_RESPONSE = 64 * 1024 * 1024
DEFAULT_TIMEOUT = 60.0


def _seg(value: str) -> str:
    return urllib.parse.quote(value, safe="")


class Client:
    """One coderd, optionally authenticated with a session or API token.

    Args:
        url: the server's base URL, e.g. ``http://127.0.0.1:3000``.
        token: a session or API token (``<id>-<secret>``).
        timeout: seconds for one request (connect to last byte).
        ca_file: a PEM bundle of the CAs to trust instead of the system's.

    Raises:
        ValueError: ``url`` is not http(s), or ``ca_file`` cannot be loaded.
    """

    def __init__(self, url: str, token: str | None = None, *,
                 timeout: float = DEFAULT_TIMEOUT, ca_file: str | None = None) -> None:
        self.api = Api(url, token_header=SESSION_HEADER, token=token, timeout=timeout,
                       ca_file=ca_file, user_agent="burrow-cli", max_body=MAX_RESPONSE)
        self.url = self.api.url

    @property
    def token(self) -> str | None:
        return self.api.token

    @token.setter
    def token(self, value: str | None) -> None:
        self.api.token = value

    @property
    def timeout(self) -> float:
        return self.api.timeout

    @timeout.setter
    def timeout(self, value: float) -> None:
        self.api.timeout = value

    def websocket_url(self, path: str) -> str:
        """The ``ws(s)://`` URL of API ``path`` (e.g. a coordinate endpoint)."""
        return self.api.websocket_url(path)

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        raw: bytes | None = None,
        content_type: str = "application/json",
        query: Query | None = None,
        timeout: float | None = None,
    ) -> Any:
        """Send one request to API ``path``; returns the decoded JSON (None for an empty body).

        Raises:
            ApiError: a 4xx/5xx answer.
            Unreachable: no connection, not HTTP, or not JSON.
        """
        return await self.api.call(method, path, body=body, raw=raw, content_type=content_type,
                                   query=query, timeout=timeout)

    # -- users and sessions ----------------------------------------------

    async def first_user(self) -> t.FirstUser:
        return parse(t.FirstUser, await self.request("GET", "/users/first"), self.url)

    async def create_first_user(self, username: str, email: str, password: str) -> t.Session:
        """Create the owner on a fresh server; the new session."""
        out = await self.request(
            "POST", "/users/first",
            body={"username": username, "email": email, "password": password},
        )
        return parse(t.Session, out, self.url)

    async def login(self, username: str, password: str) -> t.Session:
        out = await self.request(
            "POST", "/users/login", body={"username": username, "password": password}
        )
        return parse(t.Session, out, self.url)

    async def logout(self) -> None:
        await self.request("POST", "/users/logout")

    async def me(self) -> t.User:
        return parse(t.User, await self.request("GET", "/users/me"), self.url)

    async def users(self) -> list[t.User]:
        return parse_list(t.User, await self.request("GET", "/users"), self.url)

    async def create_user(self, username: str, email: str, password: str,
                          roles: str = "member") -> t.User:
        out = await self.request(
            "POST", "/users",
            body={"username": username, "email": email, "password": password, "roles": roles},
        )
        return parse(t.User, out, self.url)

    async def create_token(self, name: str = "",
                           lifetime_seconds: int | None = None) -> t.TokenCreated:
        body: dict[str, Any] = {"name": name}
        if lifetime_seconds is not None:
            body["lifetime_seconds"] = lifetime_seconds
        out = await self.request("POST", "/users/me/tokens", body=body)
        return parse(t.TokenCreated, out, self.url)

    async def tokens(self) -> list[t.Token]:
        return parse_list(t.Token, await self.request("GET", "/users/me/tokens"), self.url)

    async def delete_token(self, token_id: str) -> None:
        await self.request("DELETE", f"/users/me/tokens/{_seg(token_id)}")

    # -- templates -------------------------------------------------------

    async def push_template(
        self,
        name: str,
        archive: bytes,
        *,
        description: str = "",
        version: str = "",
        tags: dict[str, str] | None = None,
    ) -> t.TemplatePushed:
        """Upload a new template version (a tar); ``tags`` are its provisioner tags."""
        query: dict[str, str | list[str]] = {
            k: v for k, v in (("description", description), ("version", version)) if v
        }
        if tags:
            query["tag"] = [f"{k}={v}" for k, v in tags.items()]
        out = await self.request(
            "POST", f"/templates/{_seg(name)}/versions",
            raw=archive, content_type="application/x-tar", query=query or None,
        )
        return parse(t.TemplatePushed, out, self.url)

    async def templates(self) -> list[t.Template]:
        return parse_list(t.Template, await self.request("GET", "/templates"), self.url)

    async def template_versions(self, template: str) -> list[t.TemplateVersion]:
        out = await self.request("GET", f"/templates/{_seg(template)}/versions")
        return parse_list(t.TemplateVersion, out, self.url)

    # -- workspaces and builds -------------------------------------------

    async def create_workspace(
        self, name: str, template: str, variables: dict[str, str] | None = None
    ) -> t.Workspace:
        body: dict[str, Any] = {"name": name, "template": template}
        if variables:
            body["variables"] = variables
        return parse(t.Workspace, await self.request("POST", "/workspaces", body=body), self.url)

    async def workspaces(self, *, everyone: bool = False) -> list[t.Workspace]:
        query: Query | None = {"owner": "all"} if everyone else None
        out = await self.request("GET", "/workspaces", query=query)
        return parse_list(t.Workspace, out, self.url)

    async def workspace(self, ref: str) -> t.Workspace:
        """A workspace (id, name, or ``owner.name``) with its latest build in full."""
        out = await self.request("GET", f"/workspaces/{_seg(ref)}")
        return parse(t.Workspace, out, self.url)

    async def transition(self, ref: str, transition: str,
                         variables: dict[str, str] | None = None) -> t.Build:
        body: dict[str, Any] = {"transition": transition}
        if variables is not None:
            body["variables"] = variables
        out = await self.request("POST", f"/workspaces/{_seg(ref)}/builds", body=body)
        return parse(t.Build, out, self.url)

    async def builds(self, ref: str) -> list[t.Build]:
        out = await self.request("GET", f"/workspaces/{_seg(ref)}/builds")
        return parse_list(t.Build, out, self.url)

    async def build(self, build_id: str) -> t.Build:
        return parse(t.Build, await self.request("GET", f"/builds/{_seg(build_id)}"), self.url)

    async def build_logs(self, build_id: str, after: int = 0, wait: float = 0) -> t.BuildLogs:
        """Log lines after id ``after``; with ``wait``, long-polls that long for more."""
        query: dict[str, str] = {"after": str(after)}
        if wait:
            query["wait"] = f"{wait:g}"
        out = await self.request("GET", f"/builds/{_seg(build_id)}/logs", query=query,
                                 timeout=self.timeout + wait)
        return parse(t.BuildLogs, out, self.url)

    async def cancel_build(self, build_id: str) -> t.Build:
        out = await self.request("PATCH", f"/builds/{_seg(build_id)}/cancel")
        return parse(t.Build, out, self.url)

    # -- agents ------------------------------------------------------------

    async def relay_map(self) -> t.RelayMap:
        return parse(t.RelayMap, await self.request("GET", "/relaymap"), self.url)

    async def agent_logs(self, agent_id: str, after: int = 0) -> t.AgentLogs:
        out = await self.request("GET", f"/workspaceagents/{_seg(agent_id)}/logs",
                                 query={"after": str(after)})
        return parse(t.AgentLogs, out, self.url)
