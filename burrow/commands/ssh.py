"""``burrow ssh <workspace> [-- command]`` and ``burrow ssh --stdio <workspace>``.

``--stdio`` is the data path: stdin/stdout become the tunnel stream to the
agent's ``ssh`` service -- what OpenSSH's ``ProxyCommand`` needs.  Nothing
but stream bytes ever goes to stdout; waiting shows on stderr; a failure is
one line on stderr and exit 1.

Without ``--stdio``, burrow runs the system OpenSSH client (``ssh``) with
``ProxyCommand=<burrow> ssh --stdio <workspace>``.  Design choice: OpenSSH
already does everything an interactive session needs and users expect --
PTY and raw mode, window changes, escape sequences, agent forwarding, their
own ``~/.ssh/config`` options -- so burrow does not reimplement an SSH
client; it execs ``ssh`` and its exit status is the command's (255 for an
SSH failure, as with plain ssh).  Host keys are pinned per workspace (trust on
first use) in ``<config dir>/known_hosts.d/<workspace id>``; the tunnel has
already authenticated the agent by its coordinator-vouched key.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from typing import Any

from burrow.access.options import add_access_flags
from burrow.flags import UsageError


def register(sub: Any) -> None:
    p = sub.add_parser(
        "ssh",
        help="SSH into a workspace (runs OpenSSH through the tunnel)",
        description="Open an SSH session in a workspace, or with --stdio carry the SSH "
        "connection on stdin/stdout (for OpenSSH's ProxyCommand).",
    )
    p.add_argument("--stdio", action="store_true",
                   help="relay the agent's SSH service on stdin/stdout (for ProxyCommand)")
    add_access_flags(p)
    p.add_argument("workspace", help="name, owner.name or id")
    p.add_argument("remote_command", nargs=argparse.REMAINDER, metavar="command",
                   help="command to run instead of a login shell (options go before the "
                   "workspace; everything after it is the command)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.remote_command and args.remote_command[0] == "--":
        args.remote_command = args.remote_command[1:]
    if args.stdio:
        if args.remote_command:
            raise UsageError("--stdio takes no command")
        return _run_stdio(args)
    return _run_interactive(args)


def _run_stdio(args: argparse.Namespace) -> int:
    from burrow.access.options import connect_kwargs, run_access

    async def main() -> int:
        import trio

        from burrow.access.connect import connect, lifecycle_warning
        from burrow.access.progress import Progress
        from burrow.api_client import session_client
        from tunnel.splice import COPY_SIZE

        client = session_client()
        async with connect(client, args.workspace, progress=Progress(),
                           **connect_kwargs(args)) as conn:
            warning = lifecycle_warning(conn.target)
            if warning:
                sys.stderr.write(warning + "\n")
            stream = await conn.open_stream("ssh")
            stdin = trio.lowlevel.FdStream(os.dup(0))
            stdout = trio.lowlevel.FdStream(os.dup(1))
            broken: list[str] = []  # why the tunnel side broke, if it did
            async with stream, stdin, stdout, trio.open_nursery() as nursery:

                async def up() -> None:
                    try:
                        while data := await stdin.receive_some(COPY_SIZE):
                            try:
                                await stream.send_all(data)
                            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                                broken.append(str(exc))
                                nursery.cancel_scope.cancel()
                                return
                        await stream.send_eof()
                    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                        nursery.cancel_scope.cancel()  # stdin went away: ssh is gone

                async def down() -> None:
                    # The session is over when the agent's side ends.
                    while True:
                        try:
                            data = await stream.receive_some(COPY_SIZE)
                        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                            broken.append(str(exc))
                            break
                        if not data:
                            break
                        try:
                            await stdout.send_all(data)
                        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                            break  # ssh is gone
                    nursery.cancel_scope.cancel()

                nursery.start_soon(up)
                nursery.start_soon(down)
        if broken:
            sys.stderr.write(f"burrow ssh: the tunnel to {args.workspace} broke: {broken[0]}\n")
            return 1
        return 0

    return run_access("ssh", main)


def _run_interactive(args: argparse.Namespace) -> int:
    from burrow import sshconfig
    from burrow.access.options import run_access
    from burrow.api_client import config_dir
    from burrow.commands.config_ssh import burrow_argv

    ssh = shutil.which("ssh")
    if ssh is None:
        sys.stderr.write(
            "burrow ssh: the OpenSSH client `ssh` is not installed (Debian: openssh-client);"
            " `burrow ssh --stdio` works as a ProxyCommand for other clients\n"
        )
        return 1
    found: list[Any] = []

    async def main() -> int:
        from burrow.access.connect import find_agent
        from burrow.access.progress import Progress
        from burrow.api_client import session_client

        progress = Progress()
        try:
            found.append(await find_agent(session_client(), args.workspace, agent=args.agent,
                                          timeout=args.wait_timeout, progress=progress))
        finally:
            progress.done()
        return 0

    rc = run_access("ssh", main)
    if rc:
        return rc
    target = found[0]
    proxy = [*burrow_argv(), "ssh", "--stdio", "--wait-timeout", f"{args.wait_timeout:g}"]
    if args.force_websockets:
        proxy.append("--force-websockets")
    if args.agent:
        proxy += ["--agent", args.agent]
    known_dir = os.path.join(config_dir(), "known_hosts.d")
    os.makedirs(known_dir, mode=0o700, exist_ok=True)
    try:
        alias = "burrow." + sshconfig.check_host_name(target.workspace)
        options = [
            f"ProxyCommand={sshconfig.quote_command([*proxy, target.workspace_id])}",
            "UserKnownHostsFile="
            + sshconfig.quote_value(os.path.join(os.path.abspath(known_dir),
                                                 sshconfig.check_host_name(target.workspace_id)),
                                    "known_hosts file"),
            "StrictHostKeyChecking=accept-new",
            f"HostKeyAlias={alias}",
            "LogLevel=ERROR",
        ]
    except sshconfig.SSHConfigError as exc:
        sys.stderr.write(f"burrow ssh: {exc}\n")
        return 1
    argv = [ssh]
    for option in options:
        argv += ["-o", option]
    argv += [alias, *args.remote_command]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(ssh, argv)  # noqa: S606 -- ssh's exit status becomes ours
