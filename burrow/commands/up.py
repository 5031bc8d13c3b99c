"""``burrow up``: the README's run command -- a server and a running workspace.

See ``burrow/up.py`` for the steps; running it again reuses what exists.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from burrow.flags import UsageError, add


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 < value < 1e6:
        raise argparse.ArgumentTypeError("must be a positive number of seconds")
    return value


def register(sub: Any) -> None:
    p = sub.add_parser(
        "up",
        help="start a local server and a workspace (the README's run command)",
        description="Start `burrow server` in the background (SQLite, embedded relay, "
        "built-in provisioners), create the owner on first run, log in, push templates/local "
        "and bring up the workspace; reuses whatever a previous run left.",
    )
    add(p, "--data-dir", default=None,
        help="server data dir (default ~/.local/share/burrow); holds server.pid/log, owner.json")
    add(p, "--listen", default="127.0.0.1:3000", help="address the server listens on")
    add(p, "--workspace", default="dev", help="the workspace's name")
    add(p, "--template", default="local", help="the template's name")
    add(p, "--template-dir", default=None,
        help="template directory (default: the built-in templates/local)")
    add(p, "--timeout", default=180.0, type=_seconds,
        help="seconds to wait for the workspace's agent")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from burrow.api_client import run_command
    from burrow.up import UpError, UpOptions, default_template_dir, up

    if not args.listen or ":" not in args.listen:
        raise UsageError(f"--listen must be host:port, not {args.listen!r}")
    data_dir = Path(args.data_dir or os.path.join(
        os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local",
                                                        "share"), "burrow"))
    try:
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        sys.stderr.write(f"burrow up: cannot create data directory {data_dir}: {exc.strerror}\n")
        return 1
    try:
        template_dir = Path(args.template_dir) if args.template_dir else default_template_dir()
    except UpError as exc:
        sys.stderr.write(f"burrow up: {exc}\n")
        return 1
    opts = UpOptions(
        data_dir=data_dir, listen=args.listen, workspace=args.workspace,
        template=args.template, template_dir=template_dir, timeout=args.timeout,
    )

    def say(line: str) -> None:
        print(line, flush=True)

    async def main() -> int:
        try:
            await up(opts, say)
        except UpError as exc:
            sys.stderr.write(f"burrow up: {exc}\n")
            return 1
        return 0

    return run_command("up", main)
