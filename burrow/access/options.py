"""Flags shared by the access commands, and running one under trio (light imports only)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from burrow.flags import add, add_bool


def add_access_flags(p: argparse.ArgumentParser) -> None:
    """``--force-websockets``, ``--wait-timeout``, ``--agent``."""
    add_bool(p, "--force-websockets",
             help="reach the relay over WebSocket only (when a proxy blocks the upgrade)")
    add(p, "--wait-timeout", default=120.0, type=float, metavar="SECONDS",
        help="how long to wait for the workspace's build and agent")
    add(p, "--agent", help="the agent's name, when the workspace has several")


def run_access(name: str, fn: Callable[[], Awaitable[int]]) -> int:
    """Run ``await fn()``; every expected failure is one line on stderr and exit 1."""
    import trio

    from burrow.access.connect import AccessError, unwrap
    from burrow.api_client import ApiError, ConnectError, NotLoggedIn

    expected = (AccessError, ApiError, ConnectError, NotLoggedIn)
    try:
        return int(trio.run(fn))
    except expected as exc:
        sys.stderr.write(f"burrow {name}: {exc}\n")
        return 1
    except BaseExceptionGroup as group:
        leaf = unwrap(group)
        if isinstance(leaf, expected):
            sys.stderr.write(f"burrow {name}: {leaf}\n")
            return 1
        if isinstance(leaf, KeyboardInterrupt):
            return 130
        raise


def connect_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "agent": args.agent,
        "force_websocket": bool(args.force_websockets),
        "timeout": float(args.wait_timeout),
    }
