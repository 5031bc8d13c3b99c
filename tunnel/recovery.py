"""Acknowledgements, RTT and loss detection: the send side's bookkeeping.

Mixed into ``Connection`` (tunnel.connection has the theory of operation).
Every ack-eliciting packet sent is remembered (``_Sent``: its send time and
the frames it carried) until an ACK covers it or it is declared lost: 3
packet numbers below the largest acknowledged, older than 9/8 RTT when a
later one was acknowledged, or by the retransmission timeout (``_rto``).
Lost stream data is queued again by range, control frames as they were,
window updates with their newest value. Acknowledged stream ranges advance
``send_base`` and free the send buffer. The last ``MAX_REMEMBERED_LOST``
lost packets are kept so that a late ACK still counts their data delivered.
The methods here are ``Connection`` methods: no extra call layers.
"""

from __future__ import annotations

import bisect
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from tunnel import frames as fr
from tunnel.stream_state import Config, StreamState, _add_range

PACKET_THRESHOLD = 3
MAX_REMEMBERED_LOST = 1024
TIME_THRESHOLD = 9 / 8


@dataclass
class _Sent:
    time: float
    items: list[tuple[int, int, int, bool] | bytes] = field(default_factory=list)
    # items: (sid, offset, length, fin) for stream data, or a control frame



class _Recovery:
    """``Connection``'s acknowledgement and loss-recovery methods."""

    cfg: Config
    streams: dict[int, StreamState]
    stats: dict[str, int]
    _sent: dict[int, _Sent]
    _lost: dict[int, _Sent]
    _largest_acked: int
    _srtt: float | None
    _rttvar: float
    _latest_rtt: float
    _backoff: float
    _last_progress: float
    _max_data_dirty: bool
    _control: deque[bytes]
    _ready: dict[int, None]
    _changed: set[int]

    if TYPE_CHECKING:

        def _maybe_forget(self, st: StreamState) -> None: ...

    # == acknowledgements and loss ========================================
    def _rto(self) -> float:
        if self._srtt is None:
            base = self.cfg.initial_rto
        else:
            base = max(self.cfg.min_rto, self._srtt + 4 * self._rttvar)
        return min(base * self._backoff, max(self.cfg.max_rto, base))

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
