"""One stream's state, and the tunables it is sized by.

``StreamState`` is plain data owned by ``Connection`` (tunnel.connection,
whose module docstring is the theory of operation): the send direction keeps
bytes from the lowest unacknowledged offset (``send_base``) with the ranges
acknowledged above it and the ranges to resend (``retx``, kept sorted and
merged by ``_add_range``); the receive direction keeps in-order bytes not yet
read, out-of-order chunks by offset, and the flow-control window it granted.
"""

from __future__ import annotations

import bisect
import enum
from dataclasses import dataclass

from tunnel import frames as fr


@dataclass(frozen=True)
class Config:
    """Tunables. Defaults suit relay paths: 2 MiB in flight per session stays
    well inside a DERP client queue (Tailscale: 32 packets; burrow: 512)."""

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


class StreamPhase(enum.Enum):
    OPENING = "opening"  # we sent OPEN, no answer yet
    PENDING = "pending"  # peer sent OPEN, application has not decided
    OPEN = "open"
    REFUSED = "refused"



class StreamState:
    """One stream's two directions. Owned by ``Connection``; read by the
    trio layer (``TunnelStream``) through the connection's methods."""

    def __init__(self, sid: int, service: str, phase: StreamPhase, cfg: Config) -> None:
        self.sid = sid
        self.service = service
        self.phase = phase
        self.error: tuple[int, str] | None = None  # refused / reset by peer
        # send direction
        self.buf = bytearray()  # bytes from send_base on (unacked + unsent)
        self.send_base = 0
        self.send_next = 0  # first never-sent offset
        self.acked: list[tuple[int, int]] = []  # acked [start, end) above send_base
        # Byte ranges [start, end) to resend, sorted and merged: however often
        # the same bytes are declared lost, they are queued once.
        self.retx: list[tuple[int, int]] = []
        self.retx_fin = False  # the FIN must be resent
        self.peer_max = 0  # peer's MAX_STREAM_DATA
        self.bulk = False  # our last new-data packet for this stream was full
        self.fin_queued = False
        self.fin_sent = False
        self.fin_acked = False
        self.send_reset = False  # we sent RESET for our direction
        self.stopped: int | None = None  # peer sent STOP with this code
        # receive direction
        self.recv = bytearray()  # in order, not yet read by the application
        self.recv_next = 0  # next in-order offset expected
        self.recv_high = 0  # highest offset received (flow-control accounting)
        self.consumed = 0  # bytes read (or discarded) by the application
        self.ooo: dict[int, bytes | memoryview] = {}
        self.fin_offset: int | None = None
        self.local_max = cfg.stream_window
        self.max_dirty = False
        self.recv_reset = False  # peer reset its direction
        self.read_closed = False  # application closed reading; data discarded
        self.stop_sent = False

    # -- queries used by the trio layer ----------------------------------
    def readable(self) -> bool:
        return bool(self.recv) or self.at_eof() or self.recv_reset

    def at_eof(self) -> bool:
        return self.fin_offset is not None and self.consumed >= self.fin_offset

    def send_done(self) -> bool:
        return self.send_reset or (self.fin_acked and self.send_base >= self.send_next)

    def recv_done(self) -> bool:
        if self.recv_reset:
            return True
        return self.fin_offset is not None and self.recv_next >= self.fin_offset and (
            self.read_closed or self.at_eof()
        )

    def unsent(self) -> int:
        return self.send_base + len(self.buf) - self.send_next


def _add_range(st: StreamState, start: int, end: int) -> None:
    """Queue [start, end) for resending, minus what is already acknowledged,
    merged into ``st.retx``."""
    start = max(start, st.send_base)
    pieces = [(start, end)]
    for a, b in st.acked:  # carve out ranges acknowledged above send_base
        nxt = []
        for x, y in pieces:
            if b <= x or a >= y:
                nxt.append((x, y))
                continue
            if x < a:
                nxt.append((x, a))
            if b < y:
                nxt.append((b, y))
        pieces = nxt
    rs = st.retx
    for x, y in pieces:
        if y <= x:
            continue
        i = bisect.bisect_left(rs, (x, y))
        rs.insert(i, (x, y))
        # merge with neighbours
        j = max(i - 1, 0)
        while j + 1 < len(rs):
            if rs[j][1] >= rs[j + 1][0]:
                rs[j] = (rs[j][0], max(rs[j][1], rs[j + 1][1]))
                del rs[j + 1]
            elif j >= i:
                break
            else:
                j += 1

