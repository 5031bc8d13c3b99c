"""``burrow logs <workspace> [--follow]``: the latest build's logs."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from burrow.flags import add_bool

FOLLOW_WAIT = 15.0
MAX_FOLLOW_POLLS = 100_000


def register(sub: Any) -> None:
    p = sub.add_parser("logs", help="show the latest build's logs")
    p.add_argument("workspace", help="name, owner.name or id")
    add_bool(p, "--follow", help="stream new lines until the build ends")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from burrow.api_client import run_command, session_client

    async def main() -> int:
        client = session_client()
        w = await client.workspace(args.workspace)
        build = w["latest_build"]
        if build is None:
            print("No builds yet.")
            return 0
        after = 0
        if args.follow:
            print(f"== build #{build.get('build_number')} {build.get('transition')}: "
                  f"{build.get('status')}", file=sys.stderr, flush=True)
        status = build.get("status")
        for _ in range(MAX_FOLLOW_POLLS):
            page = await client.build_logs(build["id"], after, FOLLOW_WAIT if args.follow else 0)
            if args.follow and page["status"] != status and not page["done"]:
                status = page["status"]
                print(f"== {status}", file=sys.stderr, flush=True)
            for line in page["logs"]:
                stream = sys.stderr if line["level"] == "error" else sys.stdout
                print(line["output"], file=stream, flush=True)
                after = max(after, line["id"])
            if page["done"] or not args.follow:
                if page["done"]:
                    print(f"== build #{build.get('build_number')} {build.get('transition')}: "
                          f"{page['status']}", file=sys.stderr, flush=True)
                if args.follow and page["status"] != "succeeded":
                    return 1
                return 0
        return 1

    return run_command("logs", main)
