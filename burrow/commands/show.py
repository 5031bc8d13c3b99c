"""``burrow show <workspace>``: status, latest build, resources and agents."""

from __future__ import annotations

import argparse
import time
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser("show", help="show a workspace")
    p.add_argument("workspace", help="name, owner.name or id")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from burrow.api_client import run_command, session_client

    async def main() -> int:
        w = await session_client().workspace(args.workspace)
        print(f"Workspace:  {w['owner_name']}.{w['name']}  ({w['id']})")
        print(f"Template:   {w['template_name']}")
        print(f"Status:     {w['status']}")
        b = w["latest_build"]
        if b:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(b.get("created_at", 0)))
            print(f"Last build: #{b.get('build_number')} {b.get('transition')} "
                  f"{b.get('status')} at {when}")
            if b.get("error"):
                print(f"Error:      {b['error']}")
            for r in b.get("resources", []):
                print(f"  resource  {r['type']}.{r['name']}  {r['kind']}, {r['persistence']}")
            for a in b.get("agents", []):
                seen = a.get("status", "connecting")
                life = a.get("lifecycle_state", "created")
                print(f"  agent     {a['name']}  {a['os']}/{a['arch']}  {seen}, {life}")
                for p in a.get("ports", []):
                    proc = f"  ({p['process']})" if p.get("process") else ""
                    print(f"    port    {p['port']}/{p.get('family', 'tcp')}{proc}")
        return 0

    return run_command("show", main)
