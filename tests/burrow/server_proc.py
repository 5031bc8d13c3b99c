"""A ``burrow`` subprocess's environment, and waiting for ``burrow server`` to say
where it listens (not a test module).

The server prints ``burrow server listening on <URL>`` on stdout once it
accepts connections; the tests that start one read stdout up to that line,
bounded in time, and on failure kill the process and report its stderr.
"""

from __future__ import annotations

import os
import selectors
import subprocess
import time
from pathlib import Path


def cli_env(tmp: Path, home: Path | None = None) -> dict[str, str]:
    """This process's environment without its ``BURROW_*`` variables, with the
    CLI's config in ``tmp/config`` and ``HOME`` at ``home`` (default ``tmp/home``,
    not created here)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BURROW_")}
    env["BURROW_CONFIG_DIR"] = str(tmp / "config")
    env["HOME"] = str(tmp / "home" if home is None else home)
    return env


def wait_listening(proc: subprocess.Popen[str], timeout: float = 30) -> str:
    """The URL from the server's "listening on" line.

    Raises:
        RuntimeError: the server exited or printed no such line within
            ``timeout`` seconds; it is killed and its stderr tail is the message.
    """
    assert proc.stdout is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if not sel.select(timeout=deadline - time.monotonic()):
                break
            line = proc.stdout.readline()
            if not line:
                break
            if "listening on " in line:
                return line.strip().rsplit(" ", 1)[1]
    finally:
        sel.close()
    proc.kill()
    _, err = proc.communicate(timeout=10)
    raise RuntimeError(f"burrow server did not start: {err[-2000:]}")
