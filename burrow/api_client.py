"""The CLI's view of coderd's API: :mod:`sdk.client` with dict answers, and the saved session.

The client itself is :class:`sdk.client.Client` (typed answers from
:mod:`sdk.types`; errors :class:`sdk.errors.ApiError` and
:class:`sdk.errors.Unreachable`).  This module keeps, for the callers written
against it, compatibility names that the lead removes once they use the SDK
directly:

- :class:`Client`: the SDK client whose methods answer with the JSON dicts
  (``value.to_json()``) they returned before, typed by the TypedDicts below;
- :data:`ApiError` and :data:`ConnectError`: the SDK's two errors.

What stays here for good is the CLI's saved session (``burrow login``) and
:func:`run_command`, which prints an API or connection error as one line.
"""

from __future__ import annotations

import json
from typing import Any, TypedDict, cast

import trio

from sdk import client as sdk_client
from sdk.client import DEFAULT_TIMEOUT, MAX_RESPONSE, SESSION_HEADER
from sdk.errors import ApiError, Unreachable

__all__ = [
    "DEFAULT_TIMEOUT", "MAX_RESPONSE", "SESSION_HEADER", "ApiError", "Build", "Client",
    "ConnectError", "LogLine", "Logs", "NotLoggedIn", "Template", "User", "Workspace",
    "clear_session", "config_dir", "load_session", "run_command", "save_session",
    "session_client",
]

ConnectError = Unreachable
"""The server could not be reached or spoke no valid HTTP (the SDK's Unreachable)."""


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


class Client(sdk_client.Client):
    """:class:`sdk.client.Client` answering with JSON dicts (compatibility).

    Args:
        url: the server's base URL, e.g. ``http://127.0.0.1:3000``.
        token: a session or API token (``<id>-<secret>``).
        timeout: seconds for one request (connect to last byte).
        ca_file: a PEM bundle of the CAs to trust instead of the system's.
    """

    async def first_user_exists(self) -> bool:
        return (await self.first_user()).exists

    async def create_first_user(self, username: str, email: str,  # type: ignore[override]
                                password: str) -> str:
        """Create the owner on a fresh server; returns a session token."""
        return (await super().create_first_user(username, email, password)).session_token

    async def login(self, username: str, password: str) -> str:  # type: ignore[override]
        """Returns a session token."""
        return (await super().login(username, password)).session_token

    async def me(self) -> User:  # type: ignore[override]
        return cast(User, (await super().me()).to_json())

    async def create_user(self, username: str, email: str, password: str,  # type: ignore[override]
                          roles: str = "member") -> User:
        return cast(User, (await super().create_user(username, email, password, roles)).to_json())

    async def create_token(self, name: str = "",  # type: ignore[override]
                           lifetime_seconds: int | None = None) -> str:
        return (await super().create_token(name, lifetime_seconds)).key

    async def push_template(  # type: ignore[override]
        self,
        name: str,
        archive: bytes,
        *,
        description: str = "",
        version: str = "",
        tags: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """Upload a new template version (a tar); ``tags`` are its provisioner tags."""
        out = await super().push_template(name, archive, description=description,
                                          version=version, tags=tags)
        return out.to_json()

    async def templates(self) -> list[Template]:  # type: ignore[override]
        return [cast(Template, tm.to_json()) for tm in await super().templates()]

    async def create_workspace(  # type: ignore[override]
        self, name: str, template: str, variables: dict[str, str] | None = None
    ) -> Workspace:
        return cast(Workspace, (await super().create_workspace(name, template, variables)
                                ).to_json())

    async def workspaces(self, *, everyone: bool = False) -> list[Workspace]:  # type: ignore[override]
        return [cast(Workspace, w.to_json()) for w in await super().workspaces(everyone=everyone)]

    async def workspace(self, ref: str) -> Workspace:  # type: ignore[override]
        return cast(Workspace, (await super().workspace(ref)).to_json())

    async def transition(self, ref: str, transition: str,  # type: ignore[override]
                         variables: dict[str, str] | None = None) -> Build:
        return cast(Build, (await super().transition(ref, transition, variables)).to_json())

    async def build(self, build_id: str) -> Build:  # type: ignore[override]
        return cast(Build, (await super().build(build_id)).to_json())

    async def build_logs(self, build_id: str, after: int = 0,  # type: ignore[override]
                         wait: float = 0) -> Logs:
        return cast(Logs, (await super().build_logs(build_id, after, wait)).to_json())

    async def cancel_build(self, build_id: str) -> Build:  # type: ignore[override]
        return cast(Build, (await super().cancel_build(build_id)).to_json())


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
