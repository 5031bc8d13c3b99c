"""Reliable, flow-controlled, multiplexed streams over a lossy datagram path.

Theory of operation
-------------------
``Connection`` is sans-IO: the caller feeds it authenticated packet
plaintexts (``receive``), application calls (``open_stream``, ``write``,
``read``, ...) and the time, and takes back packet plaintexts to seal and
send (``poll``), events (``take_events``) and the set of streams whose state
changed (``take_changed``). It follows QUIC's split (RFC 9000/9002):

* Packets carry a session-wide *packet number* (never reused). Packets with
  anything but ACK/PONG frames are *ack-eliciting*: the sender remembers
  which frames each one carried until it is acknowledged or declared lost.
* The receiver acknowledges packet numbers with ranges (like TCP SACK), so
  holes are visible at once; it acknowledges every second ack-eliciting
  packet at once and otherwise lets the ACK wait briefly (the session's
  ``ACK_DELAY``) for an answer to ride on.
* Streams carry byte offsets (per-stream sequence numbers). The receiver
  reorders by offset, drops duplicates, and delivers in order; the sender
  keeps each stream's bytes from the lowest unacknowledged offset
  (``send_base``) until they are acknowledged, so the retransmit buffer is
  bounded by the stream's send buffer.
* Loss is declared only on evidence: a packet 3 numbers below an
  acknowledged one, or older than 9/8 RTT when a later one was acknowledged,
  or a conservative retransmission timeout (``max(min_rto, srtt+4*rttvar)``,
  doubling, capped), or a path change (``path_changed``: everything in flight
  is resent at once). Lost frames are queued again: stream data by range,
  control frames as they were, window updates with their newest value.
  There is no congestion window: the paths underneath are reliable TCP hops
  whose loss is not a congestion signal, and bytes in flight are bounded by
  the flow-control windows instead (no TCP-over-TCP meltdown).
* Flow control is credit-based: the receiver grants each stream a window
  (``MAX_STREAM_DATA``) and the session a window over the sum of all streams
  (``MAX_DATA``), and tops each up when half of it was consumed by the
  application. A stalled reader stops its own stream's credit only; the
  session window is several stream windows so others keep flowing. Stream
  RESETs carry the final size so both sides count the same bytes.
* Streams open by service name: OPEN -> OPEN_OK | OPEN_REFUSED. Each
  direction ends independently: FIN (graceful), RESET (abort, with a final
  size and a code) or STOP (the reader went away; the writer answers with a
  RESET). A stream is forgotten once both directions have ended.
* Keepalive: after ``keepalive`` seconds without hearing from the peer, send
  a PING (ack-eliciting); after ``dead_timeout`` seconds, ``dead`` is set.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from tunnel import frames as fr
from tunnel.frames import ErrorCode
from tunnel.receiving import _Receiving
from tunnel.recovery import (
    MAX_REMEMBERED_LOST,
    PACKET_THRESHOLD,
    TIME_THRESHOLD,
    _Recovery,
    _Sent,
)
from tunnel.sending import _Sending
from tunnel.stream_state import Config, StreamPhase, StreamState, _add_range

# The module is split along its seams (stream_state, receiving, recovery,
# sending); every name other modules and tests import from here stays here.
__all__ = [
    "INITIAL_MAX_DATA",
    "MAX_REMEMBERED_LOST",
    "PACKET_THRESHOLD",
    "TIME_THRESHOLD",
    "Config",
    "Connection",
    "Event",
    "PeerClosed",
    "PongReceived",
    "StreamPhase",
    "StreamRequest",
    "StreamState",
    "_Sent",
    "_add_range",
]

INITIAL_MAX_DATA = 1 << 20
_EMPTY = b""


@dataclass(frozen=True)
class StreamRequest:
    """The peer asks to open stream ``sid`` to ``service``."""

    sid: int
    service: str


@dataclass(frozen=True)
class PongReceived:
    token: int


@dataclass(frozen=True)
class PeerClosed:
    code: int
    reason: str


Event = StreamRequest | PongReceived | PeerClosed



class Connection(_Receiving, _Recovery, _Sending):
    """The reliability and multiplexing state machine (see module docstring).

    Receiving and flow-control credit (tunnel.receiving), acknowledgements
    and loss recovery (tunnel.recovery) and packet building (tunnel.sending)
    are mixed in: they are methods of this class, not separate objects."""

    def __init__(self, *, local_is_low: bool, now: float, config: Config | None = None) -> None:
        self.cfg = cfg = config or Config()
        self.streams: dict[int, StreamState] = {}
        self._next_sid = 2 if local_is_low else 1
        self._peer_parity = 1 if local_is_low else 0
        self._peer_max_sid = -1
        # packet numbers and loss recovery
        self._pn = 0
        self._sent: dict[int, _Sent] = {}
        self._lost: dict[int, _Sent] = {}  # declared lost; a late ACK still counts
        self._largest_acked = -1
        self._srtt: float | None = None
        self._rttvar = 0.0
        self._latest_rtt = 0.0
        self._backoff = 1.0
        self._last_progress = now
        # receiving
        self._recv_ranges: list[list[int]] = []  # ascending [first, last]
        self._ack_needed = False
        self.unacked_received = 0  # ack-eliciting packets since our last ACK
        self._last_recv = now
        self._last_ping = now
        # flow control, session level
        self._peer_max_data = INITIAL_MAX_DATA
        self._sent_total = 0  # sum over streams of send_next
        self._local_max_data = max(INITIAL_MAX_DATA, cfg.session_window)
        self._recv_total = 0
        self._consumed_total = 0
        self._max_data_dirty = self._local_max_data > INITIAL_MAX_DATA
        # output
        self._control: deque[bytes] = deque()
        self._ready: dict[int, None] = {}  # streams that may have data to send
        self._events: list[Event] = []
        self._changed: set[int] = set()
        self._hold_tail = 0
        self.held_back = False  # the last poll kept a runt tail back
        self.dead = False
        self.closed: tuple[int, str] | None = None
        self.stats: dict[str, int] = {
            "packets_sent": 0,
            "packets_received": 0,
            "packets_lost": 0,
            "retransmitted_bytes": 0,
            "bad_packets": 0,
            "flow_violations": 0,
        }

    # == application side ================================================
    def open_stream(self, service: str) -> int:
        """Queue an OPEN for ``service`` and return the new stream id."""
        sid = self._next_sid
        self._next_sid += 2
        self.streams[sid] = StreamState(sid, service, StreamPhase.OPENING, self.cfg)
        self._control.append(fr.encode_open(sid, self.cfg.stream_window, service))
        return sid

    def accept(self, sid: int) -> None:
        """Answer a ``StreamRequest`` with OPEN_OK."""
        st = self.streams.get(sid)
        if st is None or st.phase is not StreamPhase.PENDING:
            return
        st.phase = StreamPhase.OPEN
        self._control.append(fr.encode_open_ok(sid, self.cfg.stream_window))
        self._ready[sid] = None

    def refuse(self, sid: int, code: int, reason: str) -> None:
        """Answer a ``StreamRequest`` with OPEN_REFUSED and forget the stream."""
        st = self.streams.pop(sid, None)
        if st is None:
            return
        self._release(st)
        self._control.append(fr.encode_open_refused(sid, code, reason))

    def send_space(self, sid: int) -> int:
        st = self.streams.get(sid)
        if st is None:
            return 0
        return max(0, self.cfg.send_buffer - len(st.buf))

    def write(self, sid: int, data: bytes | bytearray | memoryview) -> int:
        """Buffer up to ``send_space`` bytes for sending; return how many."""
        st = self.streams.get(sid)
        if st is None or st.fin_queued or st.send_reset:
            return 0
        n = min(len(data), self.cfg.send_buffer - len(st.buf))
        if n <= 0:
            return 0
        st.buf += data[:n] if n < len(data) else data
        self._ready[sid] = None
        return n

    def send_eof(self, sid: int) -> None:
        """Queue FIN after the buffered bytes."""
        st = self.streams.get(sid)
        if st is None or st.fin_queued or st.send_reset:
            return
        st.fin_queued = True
        self._ready[sid] = None

    def read(self, sid: int, max_bytes: int) -> bytes | bytearray:
        """Take up to ``max_bytes`` in-order bytes (b"" if none buffered)."""
        st = self.streams.get(sid)
        if st is None or not st.recv:
            return _EMPTY
        out: bytes | bytearray
        if max_bytes >= len(st.recv):
            out = st.recv  # hand the buffer over: no copy
            st.recv = bytearray()
        else:
            out = bytes(st.recv[:max_bytes])
            del st.recv[:max_bytes]
        self._consume(st, len(out))
        self._maybe_forget(st)
        return out

    def close_read(self, sid: int) -> None:
        """The application stops reading: discard, and STOP the peer's writer
        unless its direction already ended."""
        st = self.streams.get(sid)
        if st is None or st.read_closed:
            return
        st.read_closed = True
        if st.recv:
            self._consume(st, len(st.recv))
            st.recv.clear()
        if not st.recv_reset and not (
            st.fin_offset is not None and st.recv_next >= st.fin_offset
        ):
            st.stop_sent = True
            self._control.append(fr.encode_stop(sid, ErrorCode.STOPPED))
        self._maybe_forget(st)

    def reset(self, sid: int, code: int = ErrorCode.CLOSED, reason: str = "") -> None:
        """Abort our direction of the stream (buffered bytes are dropped)."""
        st = self.streams.get(sid)
        if st is None or st.send_reset or (st.fin_acked and st.send_base >= st.send_next):
            return
        self._abort_send(st, code, reason)
        self._maybe_forget(st)

    def ping(self, token: int) -> None:
        """Queue a PING; the peer answers with PONG(token) (``PongReceived``)."""
        self._control.append(fr.encode_ping(token))

    def close(self, code: int = ErrorCode.CLOSED, reason: str = "") -> None:
        """Queue a CLOSE for the whole session (best effort)."""
        self._control.append(fr.encode_close(code, reason))
        self.closed = (code, reason)

    def take_events(self) -> list[Event]:
        out, self._events = self._events, []
        return out

    def take_changed(self) -> set[int]:
        out, self._changed = self._changed, set()
        return out

    def rtt(self) -> float | None:
        """Smoothed RTT in seconds, once measured."""
        return self._srtt

    def in_flight(self) -> int:
        return len(self._sent)

    @property
    def last_recv(self) -> float:
        """When the last authenticated packet arrived."""
        return self._last_recv

    # == path events =====================================================
    def path_changed(self, now: float) -> None:
        """The path changed: whatever is in flight may be gone; resend it now."""
        for pn in list(self._sent):
            self._declare_lost(pn)
        self._backoff = 1.0
        self._last_progress = now

    # == timers ==========================================================
    def next_deadline(self) -> float:
        """The earliest time ``on_timer`` must run."""
        cfg = self.cfg
        t = min(
            max(self._last_recv, self._last_ping) + cfg.keepalive,
            self._last_recv + cfg.dead_timeout,
        )
        if self._sent:
            t = min(t, self._last_progress + self._rto())
        return t

    def on_timer(self, now: float) -> None:
        """Run retransmission, keepalive and dead-peer timers."""
        cfg = self.cfg
        if now >= self._last_recv + cfg.dead_timeout:
            self.dead = True
            return
        if self._sent and now >= self._last_progress + self._rto():
            for pn in list(self._sent):
                self._declare_lost(pn)
            self._backoff = min(self._backoff * 2, 64.0)
            self._last_progress = now
        if now >= max(self._last_recv, self._last_ping) + cfg.keepalive:
            self._last_ping = now
            self._control.append(fr.encode_ping(0))
    # == control frames and stream ends ==================================
    def _on_control(self, f: fr.Frame) -> None:
        if isinstance(f, fr.Ping):
            if f.token:
                self._control.append(fr.encode_pong(f.token))
        elif isinstance(f, fr.Pong):
            self._events.append(PongReceived(f.token))
        elif isinstance(f, fr.Open):
            self._on_open(f)
        elif isinstance(f, fr.OpenOk):
            st = self.streams.get(f.sid)
            if st is not None and st.phase is StreamPhase.OPENING:
                st.phase = StreamPhase.OPEN
                st.peer_max = max(st.peer_max, f.window)
                self._ready[f.sid] = None
                self._changed.add(f.sid)
        elif isinstance(f, fr.OpenRefused):
            st = self.streams.get(f.sid)
            if st is not None and st.phase is StreamPhase.OPENING:
                st.phase = StreamPhase.REFUSED
                st.error = (f.code, f.reason)
                del self.streams[f.sid]
                self._changed.add(f.sid)
        elif isinstance(f, fr.Reset):
            self._on_reset(f)
        elif isinstance(f, fr.Stop):
            st = self.streams.get(f.sid)
            if st is not None and st.stopped is None:
                st.stopped = f.code
                if not st.send_done():
                    self._abort_send(st, ErrorCode.STOPPED, "peer stopped reading")
                self._changed.add(f.sid)
                self._maybe_forget(st)
        elif isinstance(f, fr.MaxStreamData):
            st = self.streams.get(f.sid)
            if st is not None and f.maximum > st.peer_max:
                st.peer_max = f.maximum
                self._ready[f.sid] = None
        elif isinstance(f, fr.MaxData):
            if f.maximum > self._peer_max_data:
                self._peer_max_data = f.maximum
                for sid, st in self.streams.items():
                    if st.unsent():
                        self._ready[sid] = None
        elif isinstance(f, fr.Close):
            self.closed = (f.code, f.reason)
            self._events.append(PeerClosed(f.code, f.reason))

    def _on_open(self, f: fr.Open) -> None:
        if f.sid % 2 != self._peer_parity or f.sid <= self._peer_max_sid:
            return  # not the peer's to open, or a retransmission of an old OPEN
        self._peer_max_sid = f.sid
        if len(self.streams) >= self.cfg.max_streams:
            self._control.append(
                fr.encode_open_refused(f.sid, ErrorCode.TOO_MANY_STREAMS, "too many streams")
            )
            return
        st = StreamState(f.sid, f.service, StreamPhase.PENDING, self.cfg)
        st.peer_max = f.window
        self.streams[f.sid] = st
        self._events.append(StreamRequest(f.sid, f.service))

    def _on_reset(self, f: fr.Reset) -> None:
        st = self.streams.get(f.sid)
        if st is None or st.recv_reset:
            return
        grow = f.final_size - st.recv_high
        if (
            grow < 0
            or f.final_size > st.local_max
            or self._recv_total + grow > self._local_max_data
            or (st.fin_offset is not None and f.final_size != st.fin_offset)
        ):
            self.stats["flow_violations"] += 1  # a final size it could not have sent
            return
        if grow:
            self._recv_total += grow
            st.recv_high = f.final_size
        st.recv_reset = True
        st.error = (f.code, f.reason)
        # Everything the peer sent on this stream is now consumed as far as
        # credit goes, read or not.
        unread = st.recv_high - st.consumed
        st.recv.clear()
        st.ooo.clear()
        if unread > 0:
            self._consume(st, unread)
        if st.phase is StreamPhase.OPENING:
            st.phase = StreamPhase.OPEN
        self._changed.add(f.sid)
        self._maybe_forget(st)

    def _abort_send(self, st: StreamState, code: int, reason: str) -> None:
        st.send_reset = True
        st.retx.clear()
        st.retx_fin = False
        st.buf.clear()
        st.send_base = st.send_next
        st.acked.clear()
        self._control.append(fr.encode_reset(st.sid, code, st.send_next, reason))
        self._changed.add(st.sid)

    def _maybe_forget(self, st: StreamState) -> None:
        if st.phase is StreamPhase.PENDING:
            return
        if st.send_done() and st.recv_done() and self.streams.get(st.sid) is st:
            del self.streams[st.sid]
            self._ready.pop(st.sid, None)
