"""Packet building: what leaves, in which packet, in which order.

Mixed into ``Connection`` (tunnel.connection has the theory of operation).
Each packet gets the next packet number, then a pending ACK, then queued
control frames, then stream frames: for each ready stream in turn (round
robin, a stream moves to the back after its turn) a window update, ranges
to resend, a FIN to resend, then new bytes within the stream's and the
session's credit. A stream blocked on credit leaves the ready set until a
window update arrives. Stream bytes are taken as memoryviews of the send
buffer and copied once, by the final join. The methods here are
``Connection`` methods: no extra call layers on the per-packet path.
"""

from __future__ import annotations

from collections import deque

from tunnel import frames as fr
from tunnel.recovery import _Sent
from tunnel.stream_state import Config, StreamPhase, StreamState


class _Sending:
    """``Connection``'s packet-building methods."""

    cfg: Config
    streams: dict[int, StreamState]
    stats: dict[str, int]
    _pn: int
    _sent: dict[int, _Sent]
    _last_progress: float
    _recv_ranges: list[list[int]]
    _ack_needed: bool
    unacked_received: int
    _peer_max_data: int
    _sent_total: int
    _local_max_data: int
    _max_data_dirty: bool
    _control: deque[bytes]
    _ready: dict[int, None]
    _hold_tail: int
    held_back: bool

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
