"""Reliable, flow-controlled, multiplexed streams over a lossy datagram path.

Theory of operation
-------------------
``Connection`` is sans-IO: the caller feeds it authenticated packet
plaintexts (``receive``), application calls (``open_stream``, ``write``,
``read``, ...) and the time, and takes back packet plaintexts to seal and
send (``poll``), events (``take_events``) and the set of streams whose state
changed (``take_changed``). It follows QUIC's split (RFC 9000/9002) and is
composed of parts that each own their state:

* ``AckTracker`` (tunnel.acks): the packet numbers received, and whether an
  ACK is owed. Packets with anything but ACK/PONG frames are ack-eliciting;
  the session acknowledges every second one at once and lets the others wait
  briefly (its ``ACK_DELAY``) for an answer to ride on.
* ``LossRecovery`` (tunnel.recovery): packets in flight, RTT, the
  retransmission timeout. Loss is declared only on evidence (packet and time
  thresholds, the RTO, a path change). The connection hands each lost or
  acknowledged frame back to its owner: stream data to the stream's send
  side by range, control frames to the queue as they were, window updates
  as "due again" with their newest value. There is no congestion window: the
  paths underneath are reliable TCP hops whose loss is not a congestion
  signal, and bytes in flight are bounded by the flow-control windows.
* ``SessionCredit`` (tunnel.credit): MAX_DATA both ways.
* One ``StreamState`` per stream (tunnel.stream_state): its opening phase, a
  ``SendSide`` (tunnel.send_side: send buffer, retransmit ranges, the
  peer's MAX_STREAM_DATA) and a ``RecvSide`` (tunnel.recv_side: reordering,
  delivery, the window it grants). Each side has a state enum and a
  transition table after RFC 9000 §3; a stream is forgotten once both ended.

Streams open by service name: OPEN -> OPEN_OK | OPEN_REFUSED. Each direction
ends independently: FIN (graceful), RESET (abort, with a final size and a
code) or STOP (the reader went away; the writer answers with a RESET).
Input the peer could not legally send is absorbed: a packet that does not
parse is counted (``bad_packets``), data beyond the credit or moving a final
size is dropped and counted (``flow_violations``), frames for unknown
streams are ignored. Keepalive: after ``keepalive`` seconds without hearing
from the peer, send a PING; after ``dead_timeout`` seconds, ``dead`` is set.

* ``Outbox`` (tunnel.outbox): control frames queued, streams with something
  to send, and the packet builder behind ``poll``.
"""

from __future__ import annotations

from dataclasses import dataclass

from tunnel import frames as fr
from tunnel.acks import AckTracker
from tunnel.config import Config
from tunnel.credit import INITIAL_MAX_DATA, SessionCredit
from tunnel.errors import FlowControlError, ProtocolError, ResetReason
from tunnel.frames import ErrorCode
from tunnel.outbox import Outbox
from tunnel.recovery import (
    MAX_REMEMBERED_LOST,
    PACKET_THRESHOLD,
    TIME_THRESHOLD,
    LossRecovery,
    SentPacket,
)
from tunnel.stream_state import StreamPhase, StreamState

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
]

_EMPTY = b""
_OPENING = StreamPhase.OPENING
_PENDING = StreamPhase.PENDING


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


class Connection:
    """The reliability and multiplexing state machine (see module docstring).

    Attributes:
        cfg: the tunables.
        streams: stream id -> stream, while either direction is alive.
        recovery: packets in flight and the RTT estimate.
        acks: packet numbers received, and whether an ACK is owed.
        credit: session-wide flow-control credit.
        out: what waits to be sent, and the packet builder.
        dead: nothing was heard for ``dead_timeout``.
        closed: ``(code, reason)`` once either side closed the session.
        stats: counters for ``Endpoint.stats()``.
    """

    def __init__(self, *, local_is_low: bool, now: float, config: Config | None = None) -> None:
        self.cfg = cfg = config or Config()
        self.streams: dict[int, StreamState] = {}
        self._next_sid = 2 if local_is_low else 1
        self._peer_parity = 1 if local_is_low else 0
        self._peer_max_sid = -1
        self.recovery = LossRecovery(cfg, now)
        self.acks = AckTracker(cfg.max_ack_ranges)
        self.credit = SessionCredit(cfg.session_window)
        self._last_recv = now
        self._last_ping = now
        self._events: list[Event] = []
        self._changed: set[int] = set()
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
        self.out = Outbox(cfg, self.streams, self.acks, self.credit, self.recovery, self.stats)
        # The outbox's queues, shared: the frame handlers below fill them.
        self._control = self.out.control
        self._ready = self.out.ready

    # == application side ================================================
    def open_stream(self, service: str) -> int:
        """Queue an OPEN for ``service`` and return the new stream id."""
        sid = self._next_sid
        self._next_sid += 2
        st = self.streams[sid] = StreamState(sid, service, StreamPhase.OPENING, self.cfg)
        self._control.append(fr.encode_open(sid, st.receiver.limit, service))
        return sid

    def accept(self, sid: int) -> None:
        """Answer a ``StreamRequest`` with OPEN_OK."""
        st = self.streams.get(sid)
        if st is None or st.phase is not StreamPhase.PENDING:
            return
        st.phase = StreamPhase.OPEN
        self._control.append(fr.encode_open_ok(sid, st.receiver.limit))
        self._ready[sid] = None

    def refuse(self, sid: int, code: int, reason: str) -> None:
        """Answer a ``StreamRequest`` with OPEN_REFUSED and forget the stream."""
        st = self.streams.pop(sid, None)
        if st is None:
            return
        st.receiver.release(self.credit)
        self._control.append(fr.encode_open_refused(sid, code, reason))

    def send_space(self, sid: int) -> int:
        """Bytes ``write`` would take now (0 for an unknown stream)."""
        st = self.streams.get(sid)
        return 0 if st is None else st.sender.space()

    def write(self, sid: int, data: bytes | bytearray | memoryview) -> int:
        """Buffer up to ``send_space`` bytes for sending; return how many."""
        st = self.streams.get(sid)
        if st is None:
            return 0
        n = st.sender.write(data)
        if n:
            self._ready[sid] = None
        return n

    def send_eof(self, sid: int) -> None:
        """Queue FIN after the buffered bytes."""
        st = self.streams.get(sid)
        if st is not None and st.sender.finish():
            self._ready[sid] = None

    def read(self, sid: int, max_bytes: int) -> bytes | bytearray:
        """Take up to ``max_bytes`` in-order bytes (b"" if none buffered)."""
        st = self.streams.get(sid)
        if st is None:
            return _EMPTY
        rx = st.receiver
        out = rx.read(max_bytes, self.credit)
        if rx.dirty:
            self._ready[sid] = None
        if rx.done:
            self._maybe_forget(st)
        return out

    def close_read(self, sid: int) -> None:
        """The application stops reading: discard, and STOP the peer's writer
        unless its direction already ended."""
        st = self.streams.get(sid)
        if st is None:
            return
        if st.receiver.close_read(self.credit):
            self._control.append(fr.encode_stop(sid, ErrorCode.STOPPED))
        if st.receiver.dirty:
            self._ready[sid] = None
        self._maybe_forget(st)

    def reset(self, sid: int, code: int = ErrorCode.CLOSED, reason: str = "") -> None:
        """Abort our direction of the stream (buffered bytes are dropped)."""
        st = self.streams.get(sid)
        if st is None or st.sender.done:
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
        return self.recovery.srtt

    def in_flight(self) -> int:
        return len(self.recovery.sent)

    @property
    def unacked_received(self) -> int:
        """Ack-eliciting packets received since our last ACK."""
        return self.acks.unacked

    @property
    def last_recv(self) -> float:
        """When the last authenticated packet arrived."""
        return self._last_recv

    # == path events and timers ==========================================
    def path_changed(self, now: float) -> None:
        """The path changed: whatever is in flight may be gone; resend it now."""
        for packet in self.recovery.path_changed(now):
            self._packet_lost(packet)

    def next_deadline(self) -> float:
        """The earliest time ``on_timer`` must run."""
        cfg = self.cfg
        t = min(
            max(self._last_recv, self._last_ping) + cfg.keepalive,
            self._last_recv + cfg.dead_timeout,
        )
        rto = self.recovery.deadline()
        return t if rto is None else min(t, rto)

    def on_timer(self, now: float) -> None:
        """Run retransmission, keepalive and dead-peer timers."""
        cfg = self.cfg
        if now >= self._last_recv + cfg.dead_timeout:
            self.dead = True
            return
        for packet in self.recovery.on_timer(now):
            self._packet_lost(packet)
        if now >= max(self._last_recv, self._last_ping) + cfg.keepalive:
            self._last_ping = now
            self._control.append(fr.encode_ping(0))

    # == peer input ======================================================
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
        self.acks.on_packet(pn, eliciting)

    def _on_stream_data(self, f: fr.StreamData) -> None:
        st = self.streams.get(f.sid)
        if st is None:
            return
        rx = st.receiver
        try:
            changed = rx.on_data(f.offset, f.data, f.fin, self.credit)
        except FlowControlError:
            self.stats["flow_violations"] += 1
            return
        if rx.dirty:
            self._ready[f.sid] = None
        if changed:
            self._changed.add(f.sid)
            if rx.done:
                self._maybe_forget(st)

    def _on_ack(self, f: fr.Ack, now: float) -> None:
        acked, lost = self.recovery.on_ack(f, now)
        for packet in acked:
            self._packet_acked(packet)
        for packet in lost:
            self._packet_lost(packet)

    def _packet_acked(self, packet: SentPacket) -> None:
        for item in packet.items:
            if isinstance(item, bytes):
                continue
            sid, offset, length, fin = item
            st = self.streams.get(sid)
            if st is not None and st.sender.on_acked(offset, length, fin):
                self._changed.add(sid)  # room in the send buffer, or done
                if st.sender.done:
                    self._maybe_forget(st)

    def _packet_lost(self, packet: SentPacket) -> None:
        self.stats["packets_lost"] += 1
        for item in packet.items:
            if isinstance(item, bytes):
                kind = item[0]
                if kind == fr.FrameType.MAX_DATA:
                    self.credit.dirty = True  # resent with its newest value
                elif kind == fr.FrameType.MAX_STREAM_DATA:
                    sid = int.from_bytes(item[1:5], "big")
                    st = self.streams.get(sid)
                    if st is not None and st.receiver.window_update_lost():
                        self._ready[sid] = None
                elif kind != fr.FrameType.PING and item not in self._control:
                    self._control.append(item)
            else:
                sid, offset, length, fin = item
                st = self.streams.get(sid)
                if st is not None and st.sender.on_lost(offset, length, fin):
                    self._ready[sid] = None

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
            if st is not None and st.phase is _OPENING:
                st.phase = StreamPhase.OPEN
                st.sender.peer_max = max(st.sender.peer_max, f.window)
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
            if st is not None and st.sender.on_stop(f.code):
                if not st.sender.done:
                    self._abort_send(st, ErrorCode.STOPPED, ResetReason.PEER_STOPPED)
                self._changed.add(f.sid)
                self._maybe_forget(st)
        elif isinstance(f, fr.MaxStreamData):
            st = self.streams.get(f.sid)
            if st is not None and f.maximum > st.sender.peer_max:
                st.sender.peer_max = f.maximum
                self._ready[f.sid] = None
        elif isinstance(f, fr.MaxData):
            if self.credit.on_max_data(f.maximum):
                for sid, st in self.streams.items():
                    if st.sender.unsent():
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
        st.sender.peer_max = f.window
        self.streams[f.sid] = st
        self._events.append(StreamRequest(f.sid, f.service))

    def _on_reset(self, f: fr.Reset) -> None:
        st = self.streams.get(f.sid)
        if st is None:
            return
        try:
            ended = st.receiver.on_reset(f.final_size, self.credit)
        except FlowControlError:
            self.stats["flow_violations"] += 1  # a final size it could not have sent
            return
        if not ended:
            return
        st.error = (f.code, f.reason)
        if st.phase is StreamPhase.OPENING:
            st.phase = StreamPhase.OPEN
        self._changed.add(f.sid)
        self._maybe_forget(st)

    def _abort_send(self, st: StreamState, code: int, reason: str) -> None:
        final_size = st.sender.abort()
        self._control.append(fr.encode_reset(st.sid, code, final_size, reason))
        self._changed.add(st.sid)

    def _maybe_forget(self, st: StreamState) -> None:
        # StreamState.done(), spelled out: this runs for most packets.
        if (
            st.sender.done
            and st.receiver.done
            and st.phase is not _PENDING
            and self.streams.get(st.sid) is st
        ):
            del self.streams[st.sid]
            self._ready.pop(st.sid, None)

    # == output ==========================================================
    def poll(self, now: float, max_packets: int = 64, hold_tail: int = 0) -> list[bytes]:
        """Build the packets that should leave now (see ``Outbox.poll``)."""
        return self.out.poll(now, max_packets, hold_tail)

    @property
    def held_back(self) -> bool:
        """The last ``poll`` kept a runt tail back for the writer's next bytes."""
        return self.out.held_back

    def ack_only(self) -> bool:
        """True when the only thing to send is an ACK (worth delaying a moment
        so it can ride on the application's answer)."""
        return self.out.ack_only()

    def has_output(self) -> bool:
        return self.out.has_output()
