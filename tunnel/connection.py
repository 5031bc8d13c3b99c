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

import bisect
import enum
from collections import deque
from dataclasses import dataclass, field

from tunnel import frames as fr
from tunnel.errors import ProtocolError
from tunnel.frames import ErrorCode

PACKET_THRESHOLD = 3
MAX_REMEMBERED_LOST = 1024
TIME_THRESHOLD = 9 / 8
INITIAL_MAX_DATA = 1 << 20
_EMPTY = b""


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


@dataclass
class _Sent:
    time: float
    items: list[tuple[int, int, int, bool] | bytes] = field(default_factory=list)
    # items: (sid, offset, length, fin) for stream data, or a control frame


class Connection:
    """The reliability and multiplexing state machine (see module docstring)."""

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
    def _rto(self) -> float:
        if self._srtt is None:
            base = self.cfg.initial_rto
        else:
            base = max(self.cfg.min_rto, self._srtt + 4 * self._rttvar)
        return min(base * self._backoff, max(self.cfg.max_rto, base))

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

    # == receiving =======================================================
    def receive(self, packet: bytes | bytearray, now: float) -> None:
        """Process one authenticated packet plaintext (empty = no packet)."""
        if not packet:
            self._last_recv = now
            return
        try:
            pn, frames = fr.parse(packet)
        except ProtocolError:
            self.stats["bad_packets"] += 1
            return
        self._last_recv = now
        self.stats["packets_received"] += 1
        eliciting = False
        for f in frames:
            if isinstance(f, fr.StreamData):
                eliciting = True
                self._on_stream_data(f)
            elif isinstance(f, fr.Ack):
                self._on_ack(f, now)
            else:
                if not isinstance(f, fr.Pong):
                    eliciting = True
                self._on_control(f)
        # Every packet number goes into the ranges (so they stay contiguous),
        # but only ack-eliciting packets call for an ACK.
        self._note_received(pn)
        if eliciting:
            self._ack_needed = True
            self.unacked_received += 1

    def _note_received(self, pn: int) -> None:
        rs = self._recv_ranges
        if rs and rs[-1][1] + 1 == pn:
            rs[-1][1] = pn
            return
        if rs and rs[-1][1] < pn:
            rs.append([pn, pn])
        else:
            i = bisect.bisect_left(rs, [pn, pn])
            if i > 0 and rs[i - 1][1] >= pn:
                return
            if i < len(rs) and rs[i][0] == pn:
                return
            rs.insert(i, [pn, pn])
            # merge neighbours
            if i + 1 < len(rs) and rs[i + 1][0] == pn + 1:
                rs[i][1] = rs[i + 1][1]
                del rs[i + 1]
            if i > 0 and rs[i - 1][1] + 1 == pn:
                rs[i - 1][1] = rs[i][1]
                del rs[i]
        if len(rs) > self.cfg.max_ack_ranges:
            del rs[: len(rs) - self.cfg.max_ack_ranges]

    def _on_stream_data(self, f: fr.StreamData) -> None:
        st = self.streams.get(f.sid)
        if st is None or st.recv_reset:
            return
        end = f.offset + len(f.data)
        if (
            end > st.local_max
            # nothing past the final size; the final size never moves
            or (st.fin_offset is not None and end > st.fin_offset)
            or (f.fin and st.fin_offset is not None and end != st.fin_offset)
            or (f.fin and end < st.recv_high)
        ):
            self.stats["flow_violations"] += 1
            return
        if end > st.recv_high:
            grow = end - st.recv_high
            if self._recv_total + grow > self._local_max_data:
                self.stats["flow_violations"] += 1
                return
            self._recv_total += grow
            st.recv_high = end
        if f.fin and st.fin_offset is None:
            st.fin_offset = end
        if end <= st.recv_next:
            if f.fin:
                self._changed.add(st.sid)
                self._maybe_forget(st)
            return
        if f.offset <= st.recv_next:
            skip = st.recv_next - f.offset
            self._deliver(st, f.data[skip:] if skip else f.data)
            ooo = st.ooo
            while ooo:
                k = min(ooo)
                if k > st.recv_next:
                    break
                chunk = ooo.pop(k)
                if k + len(chunk) > st.recv_next:
                    self._deliver(st, chunk[st.recv_next - k :])
        else:
            old = st.ooo.get(f.offset)
            if old is None or len(old) < len(f.data):
                st.ooo[f.offset] = f.data
        self._changed.add(st.sid)
        self._maybe_forget(st)

    def _deliver(self, st: StreamState, data: bytes | memoryview) -> None:
        st.recv_next += len(data)
        if st.read_closed:
            self._consume(st, len(data))
        else:
            st.recv += data

    def _consume(self, st: StreamState, n: int) -> None:
        st.consumed += n
        self._consumed_total += n
        cfg = self.cfg
        if (
            not st.recv_reset
            and st.fin_offset is None
            and st.local_max - st.consumed <= cfg.stream_window // 2
        ):
            st.local_max = st.consumed + cfg.stream_window
            if not st.max_dirty:
                st.max_dirty = True
                self._ready[st.sid] = None
        if self._local_max_data - self._consumed_total <= cfg.session_window // 2:
            self._local_max_data = self._consumed_total + cfg.session_window
            self._max_data_dirty = True

    def _release(self, st: StreamState) -> None:
        """Count a forgotten stream's unread bytes as consumed."""
        if st.recv:
            n = len(st.recv)
            st.recv.clear()
            self._consume(st, n)

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

    # == acknowledgements and loss ========================================
    def _on_ack(self, f: fr.Ack, now: float) -> None:
        if not f.ranges:
            return
        largest = f.ranges[0][1]
        ranges = sorted(f.ranges)
        sent = self._sent
        newly_largest: _Sent | None = None
        any_new = False
        ri = 0
        for pn in list(sent):
            if pn > largest:
                break
            while ri < len(ranges) and ranges[ri][1] < pn:
                ri += 1
            if ri == len(ranges):
                break
            if ranges[ri][0] <= pn:
                rec = sent.pop(pn)
                any_new = True
                if pn == largest:
                    newly_largest = rec
                self._on_packet_acked(rec)
        # Packets declared lost too early (a path reset, reordering) may be
        # acknowledged after all: their data counts as delivered, so it is
        # not resent yet again.
        lost = self._lost
        if lost:
            ri = 0
            for pn in list(lost):
                if pn > largest:
                    break
                while ri < len(ranges) and ranges[ri][1] < pn:
                    ri += 1
                if ri == len(ranges):
                    break
                if ranges[ri][0] <= pn:
                    self._on_packet_acked(lost.pop(pn))
        if not any_new:
            return
        if largest > self._largest_acked:
            self._largest_acked = largest
        if newly_largest is not None:
            self._rtt_sample(now - newly_largest.time)
        self._backoff = 1.0
        self._last_progress = now
        self._detect_lost(now)

    def _rtt_sample(self, rtt: float) -> None:
        self._latest_rtt = rtt
        if self._srtt is None:
            self._srtt = rtt
            self._rttvar = rtt / 2
        else:
            self._rttvar = 0.75 * self._rttvar + 0.25 * abs(self._srtt - rtt)
            self._srtt = 0.875 * self._srtt + 0.125 * rtt

    def _detect_lost(self, now: float) -> None:
        largest = self._largest_acked
        srtt = self._srtt if self._srtt is not None else self.cfg.initial_rto
        horizon = now - TIME_THRESHOLD * max(srtt, self._latest_rtt)
        for pn in list(self._sent):
            if pn >= largest:
                break
            if largest - pn >= PACKET_THRESHOLD or self._sent[pn].time <= horizon:
                self._declare_lost(pn)

    def _declare_lost(self, pn: int) -> None:
        rec = self._sent.pop(pn)
        self.stats["packets_lost"] += 1
        self._lost[pn] = rec
        if len(self._lost) > MAX_REMEMBERED_LOST:
            del self._lost[next(iter(self._lost))]
        for item in rec.items:
            if isinstance(item, bytes):
                kind = item[0]
                if kind == fr.FrameType.MAX_DATA:
                    self._max_data_dirty = True
                elif kind == fr.FrameType.MAX_STREAM_DATA:
                    sid = int.from_bytes(item[1:5], "big")
                    st = self.streams.get(sid)
                    if st is not None and not st.recv_done():
                        st.max_dirty = True
                        self._ready[sid] = None
                elif kind != fr.FrameType.PING and item not in self._control:
                    self._control.append(item)
            else:
                sid, offset, length, fin = item
                st = self.streams.get(sid)
                if st is None or st.send_reset:
                    continue
                if length:
                    _add_range(st, offset, offset + length)
                if fin and not st.fin_acked:
                    st.retx_fin = True
                self._ready[sid] = None

    def _on_packet_acked(self, rec: _Sent) -> None:
        for item in rec.items:
            if isinstance(item, bytes):
                continue
            sid, offset, length, fin = item
            st = self.streams.get(sid)
            if st is None or st.send_reset:
                continue
            if fin:
                st.fin_acked = True
            if length:
                self._stream_acked(st, offset, offset + length)
            if st.send_done():
                self._changed.add(sid)
                self._maybe_forget(st)

    def _stream_acked(self, st: StreamState, start: int, end: int) -> None:
        if end <= st.send_base:
            return
        acked = st.acked
        bisect.insort(acked, (start, end))
        # merge from the front and advance send_base
        base = st.send_base
        merged: list[tuple[int, int]] = []
        for a, b in acked:
            if merged and a <= merged[-1][1]:
                if b > merged[-1][1]:
                    merged[-1] = (merged[-1][0], b)
            else:
                merged.append((a, b))
        while merged and merged[0][0] <= base:
            base = max(base, merged[0][1])
            merged.pop(0)
        st.acked = merged
        if base > st.send_base:
            del st.buf[: base - st.send_base]
            st.send_base = base
            self._changed.add(st.sid)  # room in the send buffer

    # == sending =========================================================
    def poll(self, now: float, max_packets: int = 64, hold_tail: int = 0) -> list[bytes]:
        """Build the packets that should leave now (plaintexts to seal).

        ``hold_tail``: when a stream's last packet was full (bulk) and less
        than this many new bytes remain, keep them back (``held_back`` is set) so
        the writer's next bytes fill the packet: a 64 KiB write does not
        leave a 58-byte runt. The caller flushes them soon regardless.
        """
        out: list[bytes] = []
        self._hold_tail = hold_tail
        self.held_back = False
        while len(out) < max_packets:
            pkt = self._build(now)
            if pkt is None:
                break
            out.append(pkt)
        self._hold_tail = 0
        return out

    def ack_only(self) -> bool:
        """True when the only thing to send is an ACK (worth delaying a moment
        so it can ride on the application's answer)."""
        return self._ack_needed and not (self._control or self._ready or self._max_data_dirty)

    def has_output(self) -> bool:
        return bool(self._ack_needed or self._control or self._ready or self._max_data_dirty)

    def _build(self, now: float) -> bytes | None:
        limit = self.cfg.max_packet
        parts: list[bytes | bytearray | memoryview] = [fr.encode_pn(self._pn)]
        size = fr.PN_LEN
        rec = _Sent(now)
        if self._ack_needed:
            rs = self._recv_ranges
            ack = fr.encode_ack([(a, b) for a, b in reversed(rs)])
            parts.append(ack)
            size += len(ack)
            self._ack_needed = False
            self.unacked_received = 0
        if self._max_data_dirty:
            self._max_data_dirty = False
            self._control.append(fr.encode_max_data(self._local_max_data))
        while self._control and size + len(self._control[0]) <= limit:
            frame = self._control.popleft()
            parts.append(frame)
            size += len(frame)
            if frame[0] != fr.FrameType.PONG:  # PONG is neither acked nor resent
                rec.items.append(frame)
        if self._ready:
            size = self._fill_streams(parts, size, rec, limit)
        if len(parts) == 1:
            return None
        if rec.items:
            self._sent[self._pn] = rec
            if len(self._sent) == 1:
                self._last_progress = now
        self._pn += 1
        self.stats["packets_sent"] += 1
        packet = b"".join(parts)  # the one copy of the payload
        for part in parts:
            if isinstance(part, memoryview):
                part.release()  # st.buf may be resized again
        return packet

    def _fill_streams(
        self,
        parts: list[bytes | bytearray | memoryview],
        size: int,
        rec: _Sent,
        limit: int,
    ) -> int:
        for sid in list(self._ready):
            st = self.streams.get(sid)
            if st is None or st.send_reset:
                self._ready.pop(sid, None)
                continue
            if st.max_dirty and size + 13 <= limit:
                st.max_dirty = False
                frame = fr.encode_max_stream_data(sid, st.local_max)
                parts.append(frame)
                size += len(frame)
                rec.items.append(frame)
            if st.phase is not StreamPhase.OPEN:
                if not st.max_dirty:
                    self._ready.pop(sid, None)
                continue
            while st.retx and limit - size > fr.STREAM_HEADER:
                offset, end = st.retx[0]
                offset = max(offset, st.send_base)  # acknowledged since
                if end <= offset:
                    del st.retx[0]
                    continue
                room = limit - size - fr.STREAM_HEADER
                if end - offset > room:
                    st.retx[0] = (offset + room, end)
                    end = offset + room
                else:
                    del st.retx[0]
                lo = offset - st.send_base
                parts.append(fr.stream_header(sid, offset, False, end - offset))
                parts.append(memoryview(st.buf)[lo : lo + (end - offset)])
                size += fr.STREAM_HEADER + (end - offset)
                rec.items.append((sid, offset, end - offset, False))
                self.stats["retransmitted_bytes"] += end - offset
            if st.retx:
                break  # packet full
            if st.retx_fin and limit - size >= fr.STREAM_HEADER:
                st.retx_fin = False
                if not st.fin_acked:  # the FIN sits at the final size
                    parts.append(fr.stream_header(sid, st.send_next, True, 0))
                    size += fr.STREAM_HEADER
                    rec.items.append((sid, st.send_next, 0, True))
            room = limit - size - fr.STREAM_HEADER
            unsent = st.unsent()
            credit = min(st.peer_max - st.send_next, self._peer_max_data - self._sent_total)
            if 0 < unsent < self._hold_tail and st.bulk and not st.fin_queued and credit >= unsent:
                self.held_back = True
                continue
            n = max(0, min(unsent, credit, room))
            if n:
                st.bulk = n == room
            fin = st.fin_queued and not st.fin_sent and n == unsent and room >= 0
            if n > 0 or fin:
                offset = st.send_next
                lo = offset - st.send_base
                parts.append(fr.stream_header(sid, offset, fin, n))
                parts.append(memoryview(st.buf)[lo : lo + n])
                size += fr.STREAM_HEADER + n
                st.send_next += n
                self._sent_total += n
                if fin:
                    st.fin_sent = True
                rec.items.append((sid, offset, n, fin))
            left = st.unsent()
            if (left == 0 and (st.fin_sent or not st.fin_queued)) or (left and n < room):
                # nothing left, or blocked on credit: wait for a window update
                self._ready.pop(sid, None)
            else:
                # fairness: move to the back of the queue
                self._ready.pop(sid, None)
                self._ready[sid] = None
            if limit - size <= fr.STREAM_HEADER:
                break
        return size
