"""``burrow logout``: end the session on the server and forget it here."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser("logout", help="end the saved session")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from burrow.api_client import (
        ApiError,
        ConnectError,
        NotLoggedIn,
        clear_session,
        run_command,
        session_client,
    )

    async def main() -> int:
        try:
            client = session_client()
        except NotLoggedIn:
            print("Not logged in.")
            return 0
        try:
            await client.logout()
        except (ApiError, ConnectError) as exc:
            print(f"(the server did not confirm: {exc})")
        clear_session()
        print(f"Logged out of {client.url}.")
        return 0

    return run_command("logout", main)
