"""``burrow provisionerd start``: an external provisioner daemon.

It connects to coderd's ``/api/v2/provisionerd`` WebSocket with the
pre-shared key (``burrow server --provisioner-psk``), takes the jobs whose
tags it carries, and runs terraform for them.  Built-in daemons inside
``burrow server`` run the same code (``provisionerd.daemon``).
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
from pathlib import Path
from typing import Any

from burrow.flags import UsageError, add, env_name


def parse_tag(text: str) -> tuple[str, str]:
    """``k=v`` -> ``("k", "v")``.

    Raises:
        argparse.ArgumentTypeError: no ``=`` or an empty key.
    """
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"tag must be key=value: {text!r}")
    return key.strip(), value.strip()


def positive_float(text: str) -> float:
    """A number > 0.

    Raises:
        argparse.ArgumentTypeError: not a positive number.
    """
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number: {text!r}")
    return value


def register(sub: Any) -> None:
    parser = sub.add_parser("provisionerd", help="run an external provisioner daemon")
    psub = parser.add_subparsers(dest="provisionerd_command", metavar="COMMAND")
    psub.required = True
    start = psub.add_parser(
        "start", help="connect to coderd and run its terraform jobs until interrupted"
    )
    add(start, "--url", help="coderd's URL, e.g. https://burrow.example.com")
    add(start, "--psk", help="the provisioner pre-shared key (burrow server --provisioner-psk)")
    env_tags = os.environ.get(env_name("--tag"), "")
    try:
        tag_default = [parse_tag(t) for t in env_tags.split(",") if t.strip()]
    except argparse.ArgumentTypeError as exc:
        start.error(f"invalid value in ${env_name('--tag')}: {exc}")
    start.add_argument(
        "--tag",
        action="append",
        type=parse_tag,
        default=None,
        metavar="KEY=VALUE",
        help=f"a tag jobs are matched on (repeatable) [${env_name('--tag')}, comma-separated]",
    )
    start.set_defaults(tag_default=tag_default)
    add(start, "--name", default=socket.gethostname(), help="the daemon's name shown in coderd")
    add(
        start,
        "--workdir",
        default=str(Path.home() / ".cache" / "burrow" / "provisionerd"),
        help="directory for per-job work dirs",
    )
    add(start, "--terraform", default="terraform", help="the terraform executable")
    add(start, "--provider-mirror-dir", help="install providers only from this filesystem mirror")
    add(start, "--provider-mirror-url", help="install providers only from this network mirror")
    add(
        start,
        "--heartbeat-interval",
        default=3.0,
        type=positive_float,
        help="seconds between job heartbeats",
    )
    add(
        start,
        "--cancel-grace",
        default=10.0,
        type=positive_float,
        help="seconds between interrupting and killing terraform on cancel",
    )
    start.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if not args.url:
        raise UsageError("--url is required")
    if not args.psk:
        raise UsageError("--psk is required")
    from provisionerd.client import websocket_url

    try:
        websocket_url(args.url)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    tags = dict(args.tag if args.tag is not None else args.tag_default)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    import trio

    from provisionerd.daemon import Unauthorized

    try:
        trio.run(_serve, args, tags)
    except (Unauthorized, WorkdirError) as exc:
        sys.stderr.write(f"burrow provisionerd: {exc}\n")
        return 1
    return 0


class WorkdirError(Exception):
    """The job work directory cannot be created (a user mistake: one line, exit 1)."""


async def _serve(args: argparse.Namespace, tags: dict[str, str]) -> None:
    import trio

    from provisionerd.client import connector
    from provisionerd.daemon import ProvisionerDaemon
    from provisionerd.terraform import Mirror

    mirror = None
    if args.provider_mirror_dir or args.provider_mirror_url:
        mirror = Mirror(filesystem=args.provider_mirror_dir, network=args.provider_mirror_url)
    workdir = Path(args.workdir)
    try:
        await trio.to_thread.run_sync(lambda: workdir.mkdir(parents=True, exist_ok=True))
    except OSError as exc:
        raise WorkdirError(f"cannot create --workdir {workdir}: {exc.strerror}") from None
    async with connector(args.url, psk=args.psk) as connect, trio.open_nursery() as nursery:
        # SIGTERM: stop like Ctrl-C, through trio cancellation, so a running
        # terraform's process group is killed rather than orphaned.
        nursery.start_soon(_stop_on_sigterm, nursery.cancel_scope)
        daemon = ProvisionerDaemon(
            connect,
            name=args.name,
            tags=tags,
            workdir_root=workdir,
            terraform=args.terraform,
            heartbeat_interval=args.heartbeat_interval,
            cancel_grace=args.cancel_grace,
            mirror=mirror,
        )
        await daemon.run()


async def _stop_on_sigterm(scope: Any) -> None:
    import signal

    import trio

    with trio.open_signal_receiver(signal.SIGTERM) as signals:
        async for _ in signals:
            logging.getLogger("burrow.provisionerd").info("SIGTERM: stopping")
            scope.cancel()
            return
