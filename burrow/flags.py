"""Flag helpers shared by every subcommand.

Every option is a flag and an environment variable ``BURROW_<NAME>`` (the flag's
long name upper-cased, dashes to underscores).  The environment only supplies
defaults: a flag given on the command line always wins.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn


class UsageError(Exception):
    """A user mistake on the command line: one line, exit code 2."""


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line and exit with code 2."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: {message} (see '{self.prog} --help')\n")
        raise SystemExit(2)


def env_name(flag: str) -> str:
    """``--mesh-key-file`` -> ``BURROW_MESH_KEY_FILE``."""
    return "BURROW_" + flag.lstrip("-").upper().replace("-", "_")


def add(
    parser: argparse.ArgumentParser,
    flag: str,
    *,
    default: Any = None,
    help: str,
    type: Callable[[str], Any] = str,
    nargs: str | None = None,
    choices: Sequence[str] | None = None,
    metavar: str | None = None,
) -> None:
    """Add ``flag`` with its ``BURROW_*`` environment default and show both in --help.

    A list flag (``nargs='*'`` or ``'+'``) reads its environment variable as
    comma-separated values.  A malformed environment value is a usage error.
    """
    env = env_name(flag)
    raw = os.environ.get(env)
    value = default
    if raw is not None:
        try:
            value = [type(v) for v in raw.split(",") if v] if nargs in ("*", "+") else type(raw)
        except (ValueError, argparse.ArgumentTypeError) as exc:
            parser.error(f"invalid value in ${env}: {exc}")
    shown = "" if default in (None, [], "") else f" (default: {default})"
    parser.add_argument(
        flag,
        default=value,
        help=f"{help}{shown} [${env}]",
        type=type,
        nargs=nargs,
        choices=choices,
        metavar=metavar,
    )


def add_bool(parser: argparse.ArgumentParser, flag: str, *, help: str) -> None:
    """A boolean switch, also enabled by ``BURROW_<NAME>=1|true|yes``."""
    env = env_name(flag)
    raw = os.environ.get(env, "")
    parser.add_argument(
        flag,
        action="store_true",
        default=raw.lower() in ("1", "true", "yes", "on"),
        help=f"{help} [${env}]",
    )
