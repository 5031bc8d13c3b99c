"""``burrow list``: your workspaces."""

from __future__ import annotations

import argparse
from typing import Any

from burrow.flags import add_bool


def register(sub: Any) -> None:
    p = sub.add_parser("list", help="list workspaces")
    add_bool(p, "--all", help="everyone's workspaces (owners only)")
    p.set_defaults(run=run)


def agents_column(agents: Any) -> str:
    """``connected``, ``disconnected``, ``1/2 connected`` or ``-`` (no agents)."""
    total, up = int(agents.get("total") or 0), int(agents.get("connected") or 0)
    if not total:
        return "-"
    if up == total:
        return "connected"
    return "disconnected" if not up else f"{up}/{total} connected"


def run(args: argparse.Namespace) -> int:
    from burrow.api_client import run_command, session_client

    async def main() -> int:
        found = await session_client().workspaces(everyone=args.all)
        if not found:
            print("No workspaces: create one with `burrow create <name> --template <t>`.")
            return 0
        print(f"{'WORKSPACE':<32} {'TEMPLATE':<20} {'STATUS':<10} {'AGENTS':<16} BUILD")
        for w in found:
            b = w["latest_build"] or {}
            name = f"{w['owner_name']}.{w['name']}" if args.all else w["name"]
            print(f"{name:<32} {w['template_name']:<20} {w['status']:<10} "
                  f"{agents_column(w.get('agents') or {}):<16} "
                  f"#{b.get('build_number', '-')} {b.get('transition', '')}")
        return 0

    return run_command("list", main)
