"""``burrow port-forward <workspace> --tcp LOCAL[:REMOTE] ...``: local ports to workspace ports.

One tunnel to the agent; one local listener per forwarded port (127.0.0.1 by
default); each accepted connection opens its own tunnel stream
``tcp:<remote port>`` and is spliced to it with two copy loops (backpressure
both ways, half-close passed on).  A connection the agent refuses (nothing
listening there) is closed and reported on stderr; the others go on.
Runs until interrupted (Ctrl-C).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from burrow.access.options import add_access_flags
from burrow.flags import UsageError


def register(sub: Any) -> None:
    p = sub.add_parser(
        "port-forward",
        help="forward local TCP ports to ports in a workspace",
        description="Listen on local ports and carry each connection through the tunnel to "
        "a port in the workspace. --tcp 8080:80, --tcp 9000-9002, --tcp 127.0.0.1:8080:80.",
    )
    p.add_argument("workspace", help="name, owner.name or id")
    p.add_argument("--tcp", action="append", default=[], metavar="[ADDR:]LOCAL[:REMOTE]",
                   help="a port or range to forward (repeatable)")
    add_access_flags(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from burrow.portspec import PortSpecError, parse_all

    if not args.tcp:
        raise UsageError("give at least one --tcp LOCAL[:REMOTE]")
    try:
        forwards = parse_all(args.tcp)
    except PortSpecError as exc:
        raise UsageError(str(exc)) from None

    from burrow.access.options import connect_kwargs, run_access

    async def main() -> int:
        import trio

        from burrow.access.connect import (
            AccessError,
            WorkspaceConnection,
            connect,
            lifecycle_warning,
        )
        from burrow.access.progress import Progress
        from burrow.api_client import session_client
        from burrow.portspec import Forward
        from tunnel.splice import splice

        async def handle(conn: WorkspaceConnection, fwd: Forward,
                         sock: trio.SocketStream) -> None:
            try:
                stream = await conn.open_stream(fwd.service)
            except AccessError as exc:
                sys.stderr.write(f"burrow port-forward: {exc}\n")
                await trio.aclose_forcefully(sock)
                return
            await splice(sock, stream)

        async def serve(conn: WorkspaceConnection, fwd: Forward,
                        listener: trio.SocketListener) -> None:
            async with listener, trio.open_nursery() as nursery:
                while True:
                    try:
                        sock = await listener.accept()
                    except OSError as exc:  # e.g. out of file descriptors: retry soon
                        sys.stderr.write(f"burrow port-forward: accept on port "
                                         f"{fwd.local_port}: {exc.strerror or exc}\n")
                        await trio.sleep(0.5)
                        continue
                    nursery.start_soon(handle, conn, fwd, sock)

        client = session_client()
        async with connect(client, args.workspace, progress=Progress(),
                           **connect_kwargs(args)) as conn:
            warning = lifecycle_warning(conn.target)
            if warning:
                sys.stderr.write(warning + "\n")
            listeners = []
            try:
                for fwd in forwards:
                    found = await trio.open_tcp_listeners(fwd.local_port, host=fwd.bind)
                    listeners.append((fwd, found[0]))
                    for extra in found[1:]:
                        await extra.aclose()
            except OSError as exc:
                for _, lst in listeners:
                    await lst.aclose()
                raise AccessError(f"cannot listen on {fwd.bind}:{fwd.local_port}: "
                                  f"{exc.strerror or exc}") from None
            for fwd, lst in listeners:
                host, port = lst.socket.getsockname()[:2]
                shown = f"[{host}]" if ":" in host else host
                print(f"Forwarding {shown}:{port} -> {conn.target.workspace}:{fwd.remote_port}",
                      flush=True)
            async with trio.open_nursery() as nursery:
                for fwd, lst in listeners:
                    nursery.start_soon(serve, conn, fwd, lst)
        return 0

    return run_access("port-forward", main)
