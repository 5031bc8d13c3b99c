"""``burrow up``: from a fresh machine to a running workspace, idempotently.

Each step looks for what a previous run left and reuses it:

1. ``burrow server`` runs in the background with its embedded defaults
   (SQLite, embedded relay, built-in provisioners); its pid, log and URL are
   ``server.pid``, ``server.log`` and ``server.url`` in the data dir.  A live
   pid whose URL answers is reused.
2. The owner account: on a server without users one is created with a
   random password; the credentials are printed once and kept (0600) in
   ``owner.json`` in the data dir, which later runs log in with.
3. The CLI session (the config dir) is saved for that URL.
4. The template (``templates/local``, shipped inside the package as
   ``burrow/templates/local`` and found through ``importlib.resources``, so
   an installed wheel has it too) is pushed if missing; the workspace is
   created if missing, or started if stopped.
5. It waits until the workspace's agent is connected and its startup
   finished, then prints how to reach it.
"""

from __future__ import annotations

import contextlib
import importlib.resources
import json
import os
import secrets
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from burrow.api_client import (
    ApiError,
    Client,
    ConnectError,
    NotLoggedIn,
    load_session,
    save_session,
)

SERVER_START_TIMEOUT = 60.0
AGENT_GRACE = 15.0  # a running workspace's agent gets this long to (re)connect
LISTENING = "listening on "


class UpError(Exception):
    """A step failed in a way the user must fix (one line)."""


@dataclass
class UpOptions:
    data_dir: Path
    listen: str
    workspace: str
    template: str
    template_dir: Path
    timeout: float
    username: str = "admin"


def default_template_dir() -> Path:
    """The ``local`` template shipped with burrow (package data of ``burrow``).

    In a checkout and an editable install ``burrow/templates`` is the symlink
    to the repository's ``templates/``; in a wheel it is a real directory.

    Raises:
        UpError: the package is not on a file system (a zip import), so the
            template has no directory to push.
    """
    resource = importlib.resources.files("burrow").joinpath("templates", "local")
    if not isinstance(resource, Path):
        raise UpError(f"the built-in template is not a directory ({resource}): "
                      "pass --template-dir")
    return resource


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie of ours (a previous run in the same process) is not alive.
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            return False
    return True


def _write_private(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


async def _answers(url: str) -> bool:
    try:
        await Client(url, timeout=3).first_user_exists()
    except (ConnectError, ApiError, ValueError):
        return False
    return True


async def running_server(data_dir: Path) -> str | None:
    """The URL of the server a previous ``burrow up`` started, if it still runs."""
    try:
        pid = int((data_dir / "server.pid").read_text().strip())
        url = (data_dir / "server.url").read_text().strip()
    except (OSError, ValueError):
        return None
    if not _pid_alive(pid) or not await _answers(url):
        return None
    return url


def _spawn_server(opts: UpOptions, log_path: Path) -> tuple[subprocess.Popen[bytes], int]:
    log_start = log_path.stat().st_size if log_path.exists() else 0
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "burrow.cli", "server", "--listen", opts.listen,
             "--data-dir", str(opts.data_dir)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
        )
    (opts.data_dir / "server.pid").write_text(f"{proc.pid}\n")
    return proc, log_start


def _read_from(path: Path, offset: int) -> str:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read().decode("utf-8", "replace")


async def start_server(opts: UpOptions, say: Callable[[str], None]) -> str:
    """Start ``burrow server`` detached; its URL once it listens.

    Raises:
        UpError: it exited or did not listen in time (the log's tail is in the message).
    """
    log_path = opts.data_dir / "server.log"
    proc, log_start = _spawn_server(opts, log_path)
    deadline = trio.current_time() + SERVER_START_TIMEOUT
    while trio.current_time() < deadline:
        text = _read_from(log_path, log_start)
        for line in text.splitlines():
            if LISTENING in line and "server" in line:
                url = line.rsplit(" ", 1)[1].strip()
                (opts.data_dir / "server.url").write_text(url + "\n")
                say(f"Started burrow server at {url} (pid {proc.pid}, log {log_path}).")
                return url
        if proc.poll() is not None:
            tail = " | ".join(text.strip().splitlines()[-3:])
            raise UpError(f"burrow server exited with {proc.returncode}: {tail[-400:]}")
        await trio.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    raise UpError(f"burrow server did not listen within {SERVER_START_TIMEOUT:g} s; see {log_path}")


async def session_for(url: str, opts: UpOptions, say: Callable[[str], None]) -> Client:
    """A logged-in client (the saved session, the kept owner, or a new owner)."""
    with contextlib.suppress(NotLoggedIn):
        saved_url, token = load_session()
        if saved_url.rstrip("/") == url.rstrip("/"):
            client = Client(url, token)
            with contextlib.suppress(ApiError):
                await client.me()
                return client
    client = Client(url)
    creds_path = opts.data_dir / "owner.json"
    if not await client.first_user_exists():
        password = secrets.token_urlsafe(18)
        client.token = await client.create_first_user(
            opts.username, f"{opts.username}@localhost", password)
        _write_private(creds_path, json.dumps(
            {"url": url, "username": opts.username, "password": password}) + "\n")
        say("")
        say("Created the owner account (shown this once; also kept in "
            f"{creds_path}, mode 0600):")
        say(f"    username: {opts.username}")
        say(f"    password: {password}")
        say("")
    else:
        try:
            creds = json.loads(creds_path.read_text())
            username, password = str(creds["username"]), str(creds["password"])
        except (OSError, ValueError, KeyError, TypeError):
            raise UpError(f"{url} already has an owner and {creds_path} holds no credentials:"
                          f" log in with `burrow login {url}` first") from None
        client.token = await client.login(username, password)
    save_session(url, client.token or "")
    return client


async def ensure_workspace(client: Client, opts: UpOptions, say: Callable[[str], None]) -> bool:
    """Push the template and create or start the workspace, as needed; wait for the build.

    Returns:
        Whether a build ran (False: the workspace was already running).
    """
    from burrow.commands.templates import archive_directory

    if not any(t["name"] == opts.template for t in await client.templates()):
        if not (opts.template_dir / "main.tf").is_file():
            raise UpError(f"no template at {opts.template_dir} (main.tf missing)")
        await client.push_template(opts.template, archive_directory(str(opts.template_dir)))
        say(f"Pushed template {opts.template!r} from {opts.template_dir}.")
    try:
        ws = await client.workspace(opts.workspace)
    except ApiError as exc:
        if exc.status != 404:
            raise
        ws = await client.create_workspace(opts.workspace, opts.template)
        say(f"Created workspace {opts.workspace!r}; building it...")
    build = ws["latest_build"]
    if build is None:
        raise UpError(f"workspace {opts.workspace!r} has no build")
    if build.get("transition") == "start" and build.get("status") == "succeeded":
        return False
    if build.get("status") in ("succeeded", "failed", "canceled"):
        build = await client.transition(opts.workspace, "start")
        say(f"Starting workspace {opts.workspace!r}...")
    await _wait_build(client, opts, build)
    return True


async def _wait_build(client: Client, opts: UpOptions, build: Any) -> None:
    while build.get("status") not in ("succeeded", "failed", "canceled"):
        await trio.sleep(0.3)
        build = await client.build(str(build["id"]))
    if build.get("status") != "succeeded":
        raise UpError(f"the build of {opts.workspace!r} {build.get('status')}: "
                      f"{build.get('error') or ''} (see `burrow logs {opts.workspace}`)")


async def restart_workspace(client: Client, opts: UpOptions,
                            say: Callable[[str], None]) -> None:
    """Stop and start the workspace (its agent process is gone, e.g. after a reboot)."""
    say(f"The agent of {opts.workspace!r} is not connected; restarting the workspace...")
    await _wait_build(client, opts, await client.transition(opts.workspace, "stop"))
    await _wait_build(client, opts, await client.transition(opts.workspace, "start"))


async def wait_for_agent(client: Client, opts: UpOptions,
                         timeout: float | None = None) -> dict[str, Any]:
    """The workspace's agent once it is connected and its startup ended.

    Raises:
        UpError: not within the timeout.
    """
    last = "no agent yet"
    with trio.move_on_after(opts.timeout if timeout is None else timeout):
        while True:
            ws = await client.workspace(opts.workspace)
            agents = (ws["latest_build"] or {}).get("agents") or []
            if agents:
                a = agents[0]
                last = f"agent {a.get('status')}, {a.get('lifecycle_state')}"
                if a.get("status") == "connected" and a.get("lifecycle_state") in (
                        "ready", "start_error", "start_timeout"):
                    return dict(a)
            await trio.sleep(0.3)
    raise UpError(f"the workspace's agent was not ready within {opts.timeout:g} s ({last})")


async def up(opts: UpOptions, say: Callable[[str], None] = print) -> str:
    """Do every step; returns the server URL.

    Raises:
        UpError, ApiError, ConnectError: a step failed.
    """
    opts.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    url = await running_server(opts.data_dir)
    if url is not None:
        say(f"burrow server is already running at {url}.")
    else:
        url = await start_server(opts, say)
    client = await session_for(url, opts, say)
    built = await ensure_workspace(client, opts, say)
    try:
        agent = await wait_for_agent(client, opts, None if built else AGENT_GRACE)
    except UpError:
        if built:
            raise
        await restart_workspace(client, opts, say)
        agent = await wait_for_agent(client, opts)
    state = agent.get("lifecycle_state")
    if state != "ready":
        say(f"Warning: the workspace's startup script ended in {state}.")
    name = opts.workspace
    say(f"Workspace {name!r} is running. Reach it with:")
    say(f"    burrow ssh {name}")
    say("or with OpenSSH:")
    say("    burrow config-ssh")
    say(f"    ssh burrow.{name}")
    say(f"Forward a port: burrow port-forward {name} --tcp 8080:8080.  "
        f"Stop the server: kill $(cat {opts.data_dir / 'server.pid'})")
    return url
