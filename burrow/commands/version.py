"""``burrow version``: the same line as ``burrow --version``."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser("version", help="print burrow's version")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from sdk.version import VERSION

    print(f"burrow {VERSION}")
    return 0
