"""``burrow stop <workspace>``: queue a stop build."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser("stop", help="stop a workspace")
    p.add_argument("workspace", help="name, owner.name or id")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from burrow.api_client import run_command, session_client

    async def main() -> int:
        b = await session_client().transition(args.workspace, "stop")
        print(f"Build #{b.get('build_number')} (stop) queued for {args.workspace}.")
        return 0

    return run_command("stop", main)
