"""``burrow whoami``: the logged-in user and server."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser("whoami", help="show the logged-in user")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from burrow.api_client import run_command, session_client

    async def main() -> int:
        client = session_client()
        me = await client.me()
        print(f"{me['username']} ({', '.join(me['roles'])}) on {client.url}")
        return 0

    return run_command("whoami", main)
