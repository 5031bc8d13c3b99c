"""``burrow show <workspace>``: status, latest build, resources and agents
(each agent's connection, lifecycle, last stats and the tail of its startup log)."""

from __future__ import annotations

import argparse
import collections
import time
import urllib.parse
from typing import Any

LOG_TAIL = 10
LOG_PAGES = 60  # 1000 lines a page; coderd keeps at most 50000 per agent


def _rtt(ms: Any) -> str:
    return "-" if not isinstance(ms, int | float) else f"{ms:.1f}ms"


def agent_lines(a: dict[str, Any]) -> list[str]:
    """What ``show`` prints for one agent from its API view (log tail aside)."""
    seen = a.get("status", "connecting")
    life = a.get("lifecycle_state", "created")
    out = [f"  agent     {a['name']}  {a['os']}/{a['arch']}  {seen}, {life}"]
    services = (a.get("stats") or {}).get("services") or {}
    if services:
        total = {k: sum(int(c.get(k, 0)) for c in services.values())
                 for k in ("sessions_open", "sessions_total", "bytes_in", "bytes_out")}
        out.append(f"    stats   sessions {total['sessions_open']} open/"
                   f"{total['sessions_total']} total, in {total['bytes_in']} B,"
                   f" out {total['bytes_out']} B")
    tunnel = a.get("tunnel") or {}
    if tunnel:
        paths = tunnel.get("paths") or {}
        kinds = ", ".join(f"{paths[k]} {k}" for k in ("direct", "relay") if paths.get(k))
        out.append(f"    tunnel  sessions {tunnel.get('sessions', 0)}"
                   f"{' (' + kinds + ')' if kinds else ''},"
                   f" rtt {_rtt(tunnel.get('rtt_ms_median'))} median,"
                   f" {_rtt(tunnel.get('rtt_ms_max'))} max")
    for p in a.get("ports", []):
        proc = f"  ({p['process']})" if p.get("process") else ""
        out.append(f"    port    {p['port']}/{p.get('family', 'tcp')}{proc}")
    return out


async def log_tail(client: Any, agent_id: str, n: int = LOG_TAIL) -> list[str]:
    """The last ``n`` startup-script lines coderd has for the agent (pages bounded)."""
    tail: collections.deque[str] = collections.deque(maxlen=n)
    after = 0
    for _ in range(LOG_PAGES):
        page = await client.request(
            "GET", f"/workspaceagents/{urllib.parse.quote(agent_id, safe='')}/logs",
            query={"after": str(after)})
        logs = (page or {}).get("logs") or []
        for line in logs:
            if line.get("source", "startup_script") == "startup_script":
                tail.append(str(line.get("text", "")))
        if len(logs) < 1000:
            break
        after = int(logs[-1]["id"])
    return list(tail)


def register(sub: Any) -> None:
    p = sub.add_parser("show", help="show a workspace")
    p.add_argument("workspace", help="name, owner.name or id")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from burrow.api_client import run_command, session_client

    async def main() -> int:
        client = session_client()
        w = await client.workspace(args.workspace)
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
                for line in agent_lines(a):
                    print(line)
                tail = await log_tail(client, a["id"])
                if tail:
                    print(f"    startup log (last {len(tail)} lines):")
                    for text in tail:
                        print(f"      {text}")
        return 0

    return run_command("show", main)
