"""``burrow create <name> --template T [--var k=v]``."""

from __future__ import annotations

import argparse
import re
from typing import Any

from burrow.flags import UsageError, add


def register(sub: Any) -> None:
    p = sub.add_parser("create", help="create a workspace from a template and start it")
    p.add_argument("name", help="workspace name")
    add(p, "--template", help="template name (required)")
    p.add_argument("--var", action="append", default=[], metavar="K=V",
                   help="a template variable (repeatable)")
    p.set_defaults(run=run)


def parse_vars(items: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise UsageError(f"--var wants KEY=VALUE with an identifier key, got {item!r}")
        out[key] = value
    return out


def run(args: argparse.Namespace) -> int:
    from burrow.api_client import run_command, session_client

    if not args.template:
        raise UsageError("--template is required")
    variables = parse_vars(args.var)

    async def main() -> int:
        ws = await session_client().create_workspace(args.name, args.template, variables)
        build = ws["latest_build"] or {}
        print(f"Workspace {ws['name']!r} created from {ws['template_name']!r}; "
              f"build {build.get('build_number', '?')} (start) queued.")
        print(f"Follow it with: burrow logs {ws['name']} --follow")
        return 0

    return run_command("create", main)
