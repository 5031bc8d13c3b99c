"""Network helpers shared by the benchmarks.

The test suites keep their own copy in ``tests/netutil.py``: the installed
``bench`` package cannot import the ``tests`` tree.
"""

from __future__ import annotations

import socket


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (released on return)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
