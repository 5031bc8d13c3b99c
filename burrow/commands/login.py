"""``burrow login <url>``: log in, or create the owner on a fresh server."""

from __future__ import annotations

import argparse
import getpass
import sys
from typing import Any

from burrow.flags import UsageError, add


def register(sub: Any) -> None:
    p = sub.add_parser(
        "login",
        help="log in to a burrow server (creates the owner on a fresh one)",
        description="Log in and save the session in the config dir ($BURROW_CONFIG_DIR or "
        "~/.config/burrow). On a server with no users yet this creates the owner account.",
    )
    p.add_argument("url", help="the server's URL, e.g. http://127.0.0.1:3000")
    add(p, "--username", help="user name (prompted for on a terminal)")
    add(p, "--password", help="password (prompted for on a terminal; prefer the env variable)")
    add(p, "--email", help="email for a new owner account (default: <username>@localhost)")
    add(p, "--token", help="log in with an existing session or API token instead (e.g. in CI)")
    p.set_defaults(run=run)


def _ask(value: str | None, prompt: str, secret: bool = False) -> str:
    if value:
        return value
    if not sys.stdin.isatty():
        flag = prompt.lower().split()[0]
        raise UsageError(f"--{flag} is required when not on a terminal")
    return getpass.getpass(f"{prompt}: ") if secret else input(f"{prompt}: ").strip()


def run(args: argparse.Namespace) -> int:
    from burrow.api_client import Client, run_command, save_session

    try:
        client = Client(args.url)
    except ValueError as exc:
        raise UsageError(str(exc)) from None

    async def main() -> int:
        if args.token:
            client.token = args.token
            me = await client.me()
            path = save_session(client.url, args.token)
            print(f"Logged in to {client.url} as {me['username']} with a token; saved in {path}.")
            return 0
        if not await client.first_user_exists():
            username = _ask(args.username, "Username")
            password = _ask(args.password, "Password", secret=True)
            email = args.email or f"{username}@localhost"
            token = await client.create_first_user(username, email, password)
            path = save_session(client.url, token)
            print(f"Created the owner account {username!r} on {client.url}.")
            print(f"Logged in; session saved in {path} (mode 0600).")
            print("Keep the password somewhere safe: it is the only way back in.")
            return 0
        username = _ask(args.username, "Username")
        password = _ask(args.password, "Password", secret=True)
        token = await client.login(username, password)
        path = save_session(client.url, token)
        print(f"Logged in to {client.url} as {username}; session saved in {path}.")
        return 0

    return run_command("login", main)
