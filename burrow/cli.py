"""The ``burrow`` command: wiring only, no protocol logic.

Each subcommand lives in ``burrow/commands/<name>.py`` and exposes
``register(subparsers)``; modules are imported here so ``--help`` lists them all,
but heavy imports inside them happen only when the command runs.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

from burrow.flags import Parser, UsageError

# Subcommand modules, in the order ``burrow --help`` shows them.
COMMANDS = (
    "relay",
    "provisionerd",
    "server",
    "login",
    "logout",
    "whoami",
    "templates",
    "create",
    "list",
    "show",
    "start",
    "stop",
    "delete",
    "logs",
    "config_ssh",
    "ssh",
    "port_forward",
    "ping",
    "speedtest",
    "netcheck",
    "agent",
    "up",
)


def build_parser() -> Parser:
    parser = Parser(prog="burrow", description="Remote development workspaces over DERP.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True
    for name in COMMANDS:
        module = importlib.import_module(f"burrow.commands.{name}")
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        rc: int = args.run(args)
    except UsageError as exc:
        sys.stderr.write(f"burrow {args.command}: {exc}\n")
        return 2
    except KeyboardInterrupt:
        return 130
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
