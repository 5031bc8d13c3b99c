"""The typed client of coderd's /api/v2, used by the CLI and every other process.

A tiny HTTP/1.1 client over trio and h11 (one connection per request, TLS
for ``https://`` URLs), so it depends on neither coderd nor relay.  Every
method returns the decoded JSON (TypedDicts describe the shapes); every
failure is an :class:`ApiError` carrying the server's ``message``,
``detail`` and ``validations``, or a :class:`ConnectError` when the server
cannot be reached.
"""

from __future__ import annotations

import json
import ssl
import urllib.parse
from typing import Any, TypedDict, cast

import h11
import trio

SESSION_HEADER = "Burrow-Session-Token"
MAX_RESPONSE = 64 * 1024 * 1024
DEFAULT_TIMEOUT = 60.0


class ApiError(Exception):
    """coderd answered with an error status."""

    def __init__(
        self,
        status: int,
        message: str,
        detail: str | None = None,
        validations: list[dict[str, str]] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.detail = detail
        self.validations = validations or []

    def __str__(self) -> str:
        text = self.message
        if self.detail:
            text += f": {self.detail}"
        if self.validations:
            text += " (" + "; ".join(f"{v.get('field')}: {v.get('detail')}" for v in
                                     self.validations) + ")"
        return text


class ConnectError(Exception):
    """The server could not be reached or spoke no valid HTTP."""


class User(TypedDict):
    id: str
    username: str
    email: str
    roles: list[str]
    created_at: float


class Template(TypedDict):
    id: str
    name: str
    description: str
    active_version_id: str | None
    created_by: str
    created_at: float


class Build(TypedDict, total=False):
    id: str
    workspace_id: str
    build_number: int
    transition: str
    template_version_id: str
    job_id: str
    status: str
    variables: dict[str, str]
    created_at: float
    started_at: float | None
    completed_at: float | None
    error: str | None
    resources: list[dict[str, Any]]
    agents: list[dict[str, Any]]


class Workspace(TypedDict):
    id: str
    name: str
    owner_id: str
    owner_name: str
    template_id: str
    template_name: str
    created_at: float
    deleted: bool
    status: str
    latest_build: Build | None


class LogLine(TypedDict):
    id: int
    created_at: float
    level: str
    stage: str
    output: str


class Logs(TypedDict):
    logs: list[LogLine]
    status: str
    done: bool


class Client:
    """One coderd, optionally authenticated with a session or API token.

    Args:
        url: the server's base URL, e.g. ``http://127.0.0.1:3000``.
        token: a session or API token (``<id>-<secret>``).
        timeout: seconds for one request (connect to last byte).
    """

    def __init__(self, url: str, token: str | None = None, *, timeout: float = DEFAULT_TIMEOUT):
        parts = urllib.parse.urlsplit(url.rstrip("/"))
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout
        self._tls = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port or (443 if self._tls else 80)
        self._hostport = parts.netloc

    # -- the transport ---------------------------------------------------

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        raw: bytes | None = None,
        content_type: str = "application/json",
        query: dict[str, str | list[str]] | None = None,
        timeout: float | None = None,
    ) -> Any:
        """Send one request; returns the decoded JSON (None for an empty body).

        Raises:
            ApiError: a 4xx/5xx answer.
            ConnectError: no connection, or not HTTP.
        """
        data = raw if raw is not None else (b"" if body is None else json.dumps(body).encode())
        target = "/api/v2" + path
        if query:
            target += "?" + urllib.parse.urlencode(query, doseq=True)
        headers = [
            ("Host", self._hostport),
            ("Accept", "application/json"),
            ("Content-Length", str(len(data))),
            ("Connection", "close"),
            ("User-Agent", "burrow-cli"),
        ]
        if data:
            headers.append(("Content-Type", content_type))
        if self.token:
            headers.append((SESSION_HEADER, self.token))
        try:
            with trio.fail_after(timeout or self.timeout):
                status, payload = await self._exchange(method, target, headers, data)
        except trio.TooSlowError:
            raise ConnectError(f"{self.url} did not answer in time") from None
        except OSError as exc:
            raise ConnectError(f"cannot reach {self.url}: {exc.strerror or exc}") from None
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError) as exc:
            raise ConnectError(f"connection to {self.url} failed: {exc}") from None
        try:
            obj = json.loads(payload) if payload else None
        except ValueError:
            obj = None
        if status >= 400:
            if isinstance(obj, dict) and isinstance(obj.get("message"), str):
                raise ApiError(status, obj["message"], obj.get("detail"), obj.get("validations"))
            raise ApiError(status, f"HTTP {status}")
        if payload and obj is None:
            raise ConnectError(f"{self.url} answered with something that is not JSON")
        return obj

    async def _exchange(
        self, method: str, target: str, headers: list[tuple[str, str]], data: bytes
    ) -> tuple[int, bytes]:
        stream: trio.abc.Stream = await trio.open_tcp_stream(self._host, self._port)
        if self._tls:
            stream = trio.SSLStream(
                stream, ssl.create_default_context(), server_hostname=self._host
            )
        async with stream:
            conn = h11.Connection(h11.CLIENT)
            out = conn.send(h11.Request(method=method, target=target, headers=headers))
            out += conn.send(h11.Data(data=data)) if data else b""
            out += conn.send(h11.EndOfMessage())
            await stream.send_all(out)
            status = 0
            body = bytearray()
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    chunk = await stream.receive_some(65536)
                    conn.receive_data(bytes(chunk))
                    continue
                if isinstance(event, h11.Response):
                    status = event.status_code
                elif isinstance(event, h11.Data):
                    body += event.data
                    if len(body) > MAX_RESPONSE:
                        raise ConnectError("response too large")
                elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                    return status, bytes(body)

    # -- users and sessions ----------------------------------------------

    async def first_user_exists(self) -> bool:
        return bool((await self.request("GET", "/users/first"))["exists"])

    async def create_first_user(self, username: str, email: str, password: str) -> str:
        """Create the owner on a fresh server; returns a session token."""
        out = await self.request(
            "POST", "/users/first",
            body={"username": username, "email": email, "password": password},
        )
        return str(out["session_token"])

    async def login(self, username: str, password: str) -> str:
        """Returns a session token."""
        out = await self.request(
            "POST", "/users/login", body={"username": username, "password": password}
        )
        return str(out["session_token"])

    async def logout(self) -> None:
        await self.request("POST", "/users/logout")

    async def me(self) -> User:
        return cast(User, await self.request("GET", "/users/me"))

    async def create_user(self, username: str, email: str, password: str,
                          roles: str = "member") -> User:
        return cast(User, await self.request(
            "POST", "/users",
            body={"username": username, "email": email, "password": password, "roles": roles},
        ))

    async def create_token(self, name: str = "", lifetime_seconds: int | None = None) -> str:
        body: dict[str, Any] = {"name": name}
        if lifetime_seconds is not None:
            body["lifetime_seconds"] = lifetime_seconds
        return str((await self.request("POST", "/users/me/tokens", body=body))["key"])

    # -- templates -------------------------------------------------------

    async def push_template(
        self,
        name: str,
        archive: bytes,
        *,
        description: str = "",
        version: str = "",
        tags: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """Upload a new template version (a tar); ``tags`` are its provisioner tags."""
        query: dict[str, str | list[str]] = {
            k: v for k, v in (("description", description), ("version", version)) if v
        }
        if tags:
            query["tag"] = [f"{k}={v}" for k, v in tags.items()]
        out = await self.request(
            "POST", f"/templates/{urllib.parse.quote(name, safe='')}/versions",
            raw=archive, content_type="application/x-tar", query=query or None,
        )
        return cast(dict[str, Any], out)

    async def templates(self) -> list[Template]:
        return cast(list[Template], await self.request("GET", "/templates"))

    # -- workspaces and builds -------------------------------------------

    async def create_workspace(
        self, name: str, template: str, variables: dict[str, str] | None = None
    ) -> Workspace:
        body: dict[str, Any] = {"name": name, "template": template}
        if variables:
            body["variables"] = variables
        return cast(Workspace, await self.request("POST", "/workspaces", body=body))

    async def workspaces(self, *, everyone: bool = False) -> list[Workspace]:
        query: dict[str, str | list[str]] | None = {"owner": "all"} if everyone else None
        return cast(list[Workspace], await self.request("GET", "/workspaces", query=query))

    async def workspace(self, ref: str) -> Workspace:
        return cast(Workspace, await self.request("GET", f"/workspaces/{_seg(ref)}"))

    async def transition(self, ref: str, transition: str) -> Build:
        return cast(Build, await self.request(
            "POST", f"/workspaces/{_seg(ref)}/builds", body={"transition": transition}
        ))

    async def build(self, build_id: str) -> Build:
        return cast(Build, await self.request("GET", f"/builds/{_seg(build_id)}"))

    async def build_logs(self, build_id: str, after: int = 0, wait: float = 0) -> Logs:
        query: dict[str, str | list[str]] = {"after": str(after)}
        if wait:
            query["wait"] = f"{wait:g}"
        return cast(Logs, await self.request(
            "GET", f"/builds/{_seg(build_id)}/logs", query=query,
            timeout=self.timeout + wait,
        ))

    async def cancel_build(self, build_id: str) -> Build:
        return cast(Build, await self.request("PATCH", f"/builds/{_seg(build_id)}/cancel"))


def _seg(value: str) -> str:
    return urllib.parse.quote(value, safe="")


# -- the CLI's saved session ------------------------------------------------
#
# ``burrow login`` saves the server URL and the session token in the config
# dir (``$BURROW_CONFIG_DIR``, else ``~/.config/burrow``) as ``session.json``,
# mode 0600; every other command reads them back.


class NotLoggedIn(Exception):
    """No saved session: the user must run ``burrow login``."""


def config_dir() -> str:
    import os

    explicit = os.environ.get("BURROW_CONFIG_DIR")
    if explicit:
        return explicit
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return os.path.join(base, "burrow")


def save_session(url: str, token: str) -> str:
    """Write URL and token (0600, in a 0700 dir); returns the file path."""
    import os

    directory = config_dir()
    os.makedirs(directory, mode=0o700, exist_ok=True)
    path = os.path.join(directory, "session.json")
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump({"url": url, "token": token}, f)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
    return path


def load_session() -> tuple[str, str]:
    """``(url, token)``; raises NotLoggedIn when there is none (or it is unreadable)."""
    import os

    path = os.path.join(config_dir(), "session.json")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        return str(data["url"]), str(data["token"])
    except (OSError, ValueError, KeyError, TypeError):
        raise NotLoggedIn("not logged in: run `burrow login <url>` first") from None


def clear_session() -> bool:
    import os

    try:
        os.remove(os.path.join(config_dir(), "session.json"))
    except FileNotFoundError:
        return False
    return True


def session_client() -> Client:
    """A client for the saved session.  Raises NotLoggedIn."""
    url, token = load_session()
    return Client(url, token)


def run_command(name: str, fn: Any) -> int:
    """Run ``await fn()`` under trio; API and connection errors become one line, exit 1."""
    import sys

    try:
        return int(trio.run(fn))
    except (ApiError, ConnectError, NotLoggedIn) as exc:
        sys.stderr.write(f"burrow {name}: {exc}\n")
        return 1
