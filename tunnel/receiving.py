"""Receiving: packet numbers to acknowledge, stream bytes in order, credit.

Mixed into ``Connection`` (tunnel.connection has the theory of operation).
Every packet number received goes into ascending ranges (the next ACK);
ack-eliciting packets call for an ACK. Stream data is checked against the
flow-control windows and the final size (a violation is counted and the
frame dropped), delivered in order, and kept by offset when early. As the
application consumes bytes, the stream's and the session's windows are
topped up once half of them was used (``_consume``). The methods here are
``Connection`` methods: no extra call layers on the per-packet path.
"""

from __future__ import annotations

import bisect
from typing import TYPE_CHECKING

from tunnel import frames as fr
from tunnel.errors import ProtocolError
from tunnel.stream_state import Config, StreamState


class _Receiving:
    """``Connection``'s receive and flow-control credit methods."""

    cfg: Config
    streams: dict[int, StreamState]
    stats: dict[str, int]
    _recv_ranges: list[list[int]]
    _ack_needed: bool
    unacked_received: int
    _last_recv: float
    _local_max_data: int
    _recv_total: int
    _consumed_total: int
    _max_data_dirty: bool
    _ready: dict[int, None]
    _changed: set[int]

    if TYPE_CHECKING:

        def _on_ack(self, f: fr.Ack, now: float) -> None: ...

        def _on_control(self, f: fr.Frame) -> None: ...

        def _maybe_forget(self, st: StreamState) -> None: ...

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
