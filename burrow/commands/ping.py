"""``burrow ping <workspace>``: tunnel round-trip time, the path (relay or direct), the region."""

from __future__ import annotations

import argparse
from typing import Any

from burrow.access.options import add_access_flags
from burrow.flags import UsageError, add


def register(sub: Any) -> None:
    p = sub.add_parser("ping", help="measure the tunnel round trip to a workspace's agent")
    p.add_argument("workspace", help="name, owner.name or id")
    p.add_argument("-n", "--count", dest="n", default=5, type=int, metavar="COUNT",
                   help="pings to send (default: 5)")
    add(p, "--interval", default=1.0, type=float, metavar="SECONDS", help="between pings")
    add(p, "--timeout", default=5.0, type=float, metavar="SECONDS", help="per ping")
    add_access_flags(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.n < 1 or args.interval < 0 or args.timeout <= 0:
        raise UsageError("-n must be >= 1, --interval >= 0 and --timeout > 0")
    from burrow.access.options import connect_kwargs, run_access

    async def main() -> int:
        import trio

        from burrow.access.connect import AccessError, connect, describe
        from burrow.access.progress import Progress
        from burrow.api_client import session_client

        rtts: list[float] = []
        async with connect(session_client(), args.workspace, progress=Progress(),
                           **connect_kwargs(args)) as conn:
            for i in range(args.n):
                if i:
                    await trio.sleep(args.interval)
                try:
                    rtt = await conn.ping(args.timeout)
                except AccessError as exc:
                    print(f"ping {i + 1}: timeout ({exc})", flush=True)
                    continue
                rtts.append(rtt)
                d = describe(conn)
                via = d["path"]
                if via == "relay":
                    via = f"relay {d['region']} over {d['transport']}"
                print(f"pong from {conn.target.workspace} via {via} in {rtt * 1000:.2f} ms",
                      flush=True)
        if not rtts:
            print(f"{args.n} pings, no answer")
            return 1
        rtts.sort()
        print(f"{args.n} pings, {len(rtts)} answered: min {rtts[0] * 1000:.2f} ms, "
              f"median {rtts[len(rtts) // 2] * 1000:.2f} ms, max {rtts[-1] * 1000:.2f} ms")
        return 0 if len(rtts) == args.n else 1

    return run_access("ping", main)
