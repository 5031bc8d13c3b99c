"""``ConflictGuard``: one task at a time in one direction of a stream.

``trio.abc.Stream`` requires that two tasks sending (or two receiving) at
once get ``trio.BusyResourceError`` rather than interleaved bytes.  Each
stream holds one guard per direction and enters it around the operation.
The home of this helper for derp's ``WebSocketStream`` and tunnel's
``TunnelStream`` (derp is the layer both import).
"""

from __future__ import annotations

import trio


class ConflictGuard:
    """Raises ``BusyResourceError`` when two tasks use one direction at once."""

    def __init__(self, what: str) -> None:
        self._what = what
        self._held = False

    def __enter__(self) -> None:
        if self._held:
            raise trio.BusyResourceError(f"another task is already {self._what}")
        self._held = True

    def __exit__(self, *exc: object) -> None:
        self._held = False
