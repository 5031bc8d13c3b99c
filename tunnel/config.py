"""The tunables a ``Connection`` is sized by (tunnel.connection has the theory of operation)."""

from __future__ import annotations

from dataclasses import dataclass

from tunnel import frames as fr


@dataclass(frozen=True)
class Config:
    """Tunables. Defaults suit relay paths: 2 MiB in flight per session stays
    well inside a DERP client queue (Tailscale: 32 packets; burrow: 512).

    ``stream_window`` and ``session_window`` are only the *initial* receive
    windows: each stream's ``RecvSide`` and the session's ``SessionCredit``
    keep their own window as state, so it can grow later.
    """

    stream_window: int = 512 * 1024
    session_window: int = 2 * 1024 * 1024
    send_buffer: int = 512 * 1024
    max_packet: int = fr.MAX_PLAINTEXT
    max_streams: int = 1024
    keepalive: float = 5.0
    dead_timeout: float = 30.0
    initial_rto: float = 1.0
    min_rto: float = 0.2
    max_rto: float = 4.0
    max_ack_ranges: int = 32
