"""``burrow speedtest <workspace>``: tunnel throughput both ways.

Talks to the agent's ``speedtest`` service (wire format in
``burrow/access/speedtest_proto.py``): an upload of ``--size`` bytes timed
until the agent confirms the count, then a download of the same size.
"""

from __future__ import annotations

import argparse
from typing import Any

from burrow.access.options import add_access_flags
from burrow.flags import UsageError, add

MIB = 1024 * 1024


def register(sub: Any) -> None:
    p = sub.add_parser("speedtest", help="measure tunnel throughput to a workspace, both ways")
    p.add_argument("workspace", help="name, owner.name or id")
    add(p, "--size", default=64, type=int, metavar="MIB", help="MiB to send each way")
    add(p, "--direction", default="both", choices=("both", "up", "down"),
        help="which way(s) to measure")
    add_access_flags(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if not 1 <= args.size <= 16 * 1024:
        raise UsageError("--size must be 1..16384 MiB")
    from burrow.access.options import connect_kwargs, run_access

    async def main() -> int:
        import trio

        from burrow.access import speedtest
        from burrow.access.connect import AccessError, connect
        from burrow.access.progress import Progress
        from burrow.api_client import session_client

        nbytes = args.size * MIB
        async with connect(session_client(), args.workspace, progress=Progress(),
                           **connect_kwargs(args)) as conn:
            ways = {"both": ("up", "down"), "up": ("up",), "down": ("down",)}[args.direction]
            for way in ways:
                stream = await conn.open_stream("speedtest")
                try:
                    async with stream:
                        fn = speedtest.upload if way == "up" else speedtest.download
                        result = await fn(stream, nbytes)
                except (speedtest.SpeedtestError, trio.BrokenResourceError) as exc:
                    raise AccessError(f"speedtest {way}: {exc}") from None
                label = "upload  " if way == "up" else "download"
                print(f"{label} {args.size} MiB in {result.seconds:.2f} s: "
                      f"{result.mbit_per_s:.0f} Mbit/s ({conn.path()} path)", flush=True)
        return 0

    return run_access("speedtest", main)
