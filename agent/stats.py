"""Connection statistics the agent reports to coderd.

Counters only grow; a reporter takes a :meth:`ConnStats.snapshot` each period
and sends it (or the difference to the previous one).  Everything runs on one
trio thread, so plain integers need no locking.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class StatsSnapshot:
    """The counters at one instant.

    Attributes:
        sessions_total: connections accepted since start.
        sessions_open: connections open now.
        bytes_in: bytes received from peers (encrypted SSH bytes for ``ssh``).
        bytes_out: bytes sent to peers.
        errors: connections that ended on an internal error (not a peer's).
    """

    sessions_total: int
    sessions_open: int
    bytes_in: int
    bytes_out: int
    errors: int = 0

    def since(self, earlier: StatsSnapshot) -> StatsSnapshot:
        """The growth since ``earlier``; ``sessions_open`` stays the current value."""
        return StatsSnapshot(
            sessions_total=self.sessions_total - earlier.sessions_total,
            sessions_open=self.sessions_open,
            bytes_in=self.bytes_in - earlier.bytes_in,
            bytes_out=self.bytes_out - earlier.bytes_out,
            errors=self.errors - earlier.errors,
        )


class ConnStats:
    """Counters for one service (``ssh``, ``tcp``, ...)."""

    def __init__(self) -> None:
        self._sessions_total = 0
        self._sessions_open = 0
        self._bytes_in = 0
        self._bytes_out = 0
        self._errors = 0

    def session_opened(self) -> None:
        """Count a newly accepted connection."""
        self._sessions_total += 1
        self._sessions_open += 1

    def session_closed(self) -> None:
        """Count a connection that ended.

        Raises:
            RuntimeError: more closes than opens (a caller bug).
        """
        if self._sessions_open <= 0:
            raise RuntimeError("session_closed without a matching session_opened")
        self._sessions_open -= 1

    def add_in(self, n: int) -> None:
        """Count ``n`` bytes received."""
        self._bytes_in += n

    def add_out(self, n: int) -> None:
        """Count ``n`` bytes sent."""
        self._bytes_out += n

    def error(self) -> None:
        """Count a connection that failed on our side."""
        self._errors += 1

    def snapshot(self) -> StatsSnapshot:
        """The counters now."""
        return StatsSnapshot(
            sessions_total=self._sessions_total,
            sessions_open=self._sessions_open,
            bytes_in=self._bytes_in,
            bytes_out=self._bytes_out,
            errors=self._errors,
        )


def tunnel_summary(endpoint_stats: Mapping[str, Any] | None) -> dict[str, Any]:
    """The tunnel part of a stats report, from ``Endpoint.stats()``.

    Reads the smoothed RTT each session already keeps for its retransmission
    timer, so reporting it sends no extra traffic; sessions that have not
    measured one yet count in ``sessions`` but not in the RTT figures.

    Args:
        endpoint_stats: ``Endpoint.stats()``, or None when the endpoint is not up.

    Returns:
        ``{"sessions": n, "rtt_ms_median": ms | None, "rtt_ms_max": ms | None,
        "paths": {"direct": n, "relay": n, "none": n}}``.
    """
    sessions: Mapping[str, Any] = (endpoint_stats or {}).get("sessions") or {}
    paths = {"direct": 0, "relay": 0, "none": 0}
    rtts: list[float] = []
    for s in sessions.values():
        kind = s.get("path")
        paths[kind if kind in paths else "none"] += 1
        rtt = s.get("rtt")
        if isinstance(rtt, int | float) and rtt >= 0:
            rtts.append(rtt * 1000.0)
    return {
        "sessions": len(sessions),
        "rtt_ms_median": round(statistics.median(rtts), 3) if rtts else None,
        "rtt_ms_max": round(max(rtts), 3) if rtts else None,
        "paths": paths,
    }
