"""``burrow templates push|list``."""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path
from typing import Any

from burrow.flags import Parser, UsageError, add


def register(sub: Any) -> None:
    p = sub.add_parser("templates", help="push and list workspace templates")
    tsub = p.add_subparsers(dest="templates_command", metavar="SUBCOMMAND", parser_class=Parser)
    tsub.required = True
    push = tsub.add_parser("push", help="upload a directory of .tf files as a new version")
    push.add_argument("directory", help="the template directory")
    add(push, "--name", help="template name (default: the directory's name)")
    add(push, "--description", help="template description")
    add(push, "--version", help="version name (default: v<N>)")
    push.add_argument("--tag", action="append", default=[], metavar="K=V",
                      help="a provisioner tag: only daemons with it build this version "
                      "(repeatable)")
    push.set_defaults(run=run_push)
    lst = tsub.add_parser("list", help="list templates")
    lst.set_defaults(run=run_list)


def archive_directory(directory: str) -> bytes:
    """A tar of the template's files, packed by :mod:`sdk.archive`'s rules.

    Raises:
        UsageError: not a directory, no .tf file in it, or a file unreadable.
    """
    from sdk import archive

    if not os.path.isdir(directory):
        raise UsageError(f"not a directory: {directory}")
    try:
        if not any(f.endswith(".tf") for f in archive.files_to_pack(Path(directory))):
            raise UsageError(f"no .tf files in {directory}")
        return archive.pack(Path(directory))
    except OSError as exc:
        raise UsageError(f"cannot read {exc.filename or directory}: {exc.strerror}") from None


def run_push(args: argparse.Namespace) -> int:
    from burrow.api_client import run_command, session_client

    directory = os.path.abspath(args.directory)
    name = args.name or os.path.basename(directory.rstrip("/")).lower()
    if not re.fullmatch(r"[a-z0-9](?:[a-z0-9_-]{0,62}[a-z0-9])?", name):
        raise UsageError(f"invalid template name {name!r}: use --name with a-z, 0-9, '-', '_'")
    archive = archive_directory(directory)
    tags: dict[str, str] = {}
    for item in args.tag:
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise UsageError(f"--tag wants KEY=VALUE, got {item!r}")
        tags[key] = value

    async def main() -> int:
        client = session_client()
        out = await client.push_template(
            name, archive, description=args.description or "", version=args.version or "",
            tags=tags,
        )
        v = out["version"]
        print(f"Pushed template {name!r} version {v['name']} ({len(out['files'])} files, "
              f"{v['archive_size']} bytes); it is now the active version.")
        return 0

    return run_command("templates push", main)


def run_list(args: argparse.Namespace) -> int:
    from burrow.api_client import run_command, session_client

    async def main() -> int:
        templates = await session_client().templates()
        if not templates:
            print("No templates yet: push one with `burrow templates push <dir>`.")
            return 0
        print(f"{'NAME':<24} DESCRIPTION")
        for t in templates:
            print(f"{t['name']:<24} {t['description']}")
        return 0

    return run_command("templates list", main)
