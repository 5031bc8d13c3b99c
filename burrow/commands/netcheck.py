"""``burrow netcheck``: latency to each relay region of the server's relay map, and the home."""

from __future__ import annotations

import argparse
from typing import Any

from burrow.flags import UsageError, add


def register(sub: Any) -> None:
    p = sub.add_parser("netcheck", help="measure latency to each relay region")
    add(p, "--count", default=3, type=int, help="probes per region")
    add(p, "--timeout", default=5.0, type=float, metavar="SECONDS", help="per probe")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if not 1 <= args.count <= 100 or args.timeout <= 0:
        raise UsageError("--count must be 1..100 and --timeout > 0")
    from burrow.api_client import run_command, session_client

    async def main() -> int:
        from peer.errors import MessageError
        from peer.latency import home, measure_all
        from peer.relaymap import RelayMap

        client = session_client()
        try:
            regions = RelayMap.parse(await client.request("GET", "/relaymap")).regions
        except MessageError as exc:
            print(f"the server's relay map is unusable: {exc}")
            return 1
        results = await measure_all(regions, args.count, args.timeout)
        best = home(results)
        print(f"{'REGION':<8} {'CODE':<12} {'LATENCY':>10}  URL")
        for r in results:
            mark = "  (home)" if best is not None and r is best else ""
            latency = "-" if r.median is None or r.error else f"{r.median * 1000:.2f} ms"
            print(f"{r.region.region_id:<8} {r.region.code[:12]:<12} {latency:>10}  "
                  f"{r.region.url}{mark}")
            if r.error:
                print(f"         error: {r.error}")
        if best is None:
            print("No relay region answered.")
            return 1
        print(f"Home region: {best.region.region_id} ({best.region.code or best.region.name})")
        return 0

    return run_command("netcheck", main)
