"""The ``burrow`` command: wiring only, no protocol logic.

Each subcommand lives in ``burrow/commands/<name>.py`` and exposes
``register(subparsers)``; modules are imported here so ``--help`` lists them all,
but heavy imports inside them happen only when the command runs.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import Any

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
    "version",
)


class _Version(argparse.Action):
    """``--version``: the number is read only when asked for (see sdk.version)."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, help="print burrow's version and exit")

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        from sdk.version import VERSION

        print(f"burrow {VERSION}")
        parser.exit()


def build_parser(only: str | None = None) -> Parser:
    """The parser for every command, or for just the command module ``only``.

    ``only`` is the fast path when the command is already known: building all
    subparsers imports every command module and costs tens of milliseconds,
    which ``burrow ssh --stdio`` (run by OpenSSH on every connect) should not
    pay.
    """
    parser = Parser(prog="burrow", description="Remote development workspaces over DERP.")
    parser.add_argument("--version", action=_Version)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True
    for name in COMMANDS if only is None else (only,):
        module = importlib.import_module(f"burrow.commands.{name}")
        module.register(sub)
    return parser


def command_module(argv: Sequence[str]) -> str | None:
    """The module of the command ``argv`` starts with, if any: ``config-ssh`` -> ``config_ssh``."""
    if not argv or argv[0].startswith("-") or "_" in argv[0]:
        return None
    name = argv[0].replace("-", "_")
    return name if name in COMMANDS else None


def main(argv: Sequence[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    parser = build_parser(command_module(argv))
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
