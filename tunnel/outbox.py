"""What waits to leave a ``Connection``, and the packet builder.

Theory of operation
-------------------
The ``Outbox`` holds the control frames queued (``control``: OPEN, RESET,
STOP, PING, ... and those lost, queued again as they were) and the streams
that may have something to send (``ready``, an ordered set).  ``poll``
builds packets: the next packet number, a pending ACK, a due MAX_DATA,
queued control frames, then stream frames: for each ready stream in turn
(round robin, a stream moves to the back after its turn) a due window update
(MAX_STREAM_DATA with its newest value), then what its send side emits.  A
stream blocked on credit leaves the ready set until a window update arrives.
Stream bytes are memoryviews of the send buffer, copied once by the final
join.  Every ack-eliciting packet is handed to the loss recovery.
"""

from __future__ import annotations

from collections import deque

from tunnel import frames as fr
from tunnel.acks import AckTracker
from tunnel.config import Config
from tunnel.credit import SessionCredit
from tunnel.recovery import LossRecovery, SentPacket
from tunnel.send_side import EmitStatus
from tunnel.stream_state import StreamPhase, StreamState

_WINDOW_UPDATE_SIZE = 13  # MAX_STREAM_DATA: type, sid u32, maximum u64
# Members bound once: an Enum class attribute costs a lookup on every use.
_OPEN = StreamPhase.OPEN
_MORE = EmitStatus.MORE
_HELD = EmitStatus.HELD
_FULL = EmitStatus.FULL


class Outbox:
    """Queued output and the packet builder (see module docstring).

    The other parts are the connection's, shared by reference: the outbox
    reads the streams and takes ACKs, credit updates and packet numbers.

    Attributes:
        control: control frames to send, in order.
        ready: stream ids that may have something to send, in turn order.
        pn: the next packet number.
        held_back: the last ``poll`` kept a runt tail back.
    """

    def __init__(
        self,
        cfg: Config,
        streams: dict[int, StreamState],
        acks: AckTracker,
        credit: SessionCredit,
        recovery: LossRecovery,
        stats: dict[str, int],
    ) -> None:
        self.control: deque[bytes] = deque()
        self.ready: dict[int, None] = {}
        self.pn = 0
        self.held_back = False
        self._hold_tail = 0
        self._max_packet = cfg.max_packet
        self._streams = streams
        self._acks = acks
        self._credit = credit
        self._recovery = recovery
        self._stats = stats

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
        return self._acks.needed and not (self.control or self.ready or self._credit.dirty)

    def has_output(self) -> bool:
        return bool(self._acks.needed or self.control or self.ready or self._credit.dirty)

    def _build(self, now: float) -> bytes | None:
        limit = self._max_packet
        parts: list[bytes | bytearray | memoryview] = [fr.encode_pn(self.pn)]
        size = fr.PN_LEN
        rec = SentPacket(now)
        if self._acks.needed:
            ack = self._acks.take_frame()
            parts.append(ack)
            size += len(ack)
        credit = self._credit
        if credit.dirty:
            credit.dirty = False
            self.control.append(fr.encode_max_data(credit.limit))
        control = self.control
        while control and size + len(control[0]) <= limit:
            frame = control.popleft()
            parts.append(frame)
            size += len(frame)
            if frame[0] != fr.FrameType.PONG:  # PONG is neither acked nor resent
                rec.items.append(frame)
        if self.ready:
            size = self._fill_streams(parts, size, rec, limit)
        if len(parts) == 1:
            return None
        if rec.items:
            self._recovery.on_sent(self.pn, rec, now)
        self.pn += 1
        self._stats["packets_sent"] += 1
        packet = b"".join(parts)  # the one copy of the payload
        for part in parts:
            if isinstance(part, memoryview):
                part.release()  # the send buffer may be resized again
        return packet

    def _fill_streams(
        self,
        parts: list[bytes | bytearray | memoryview],
        size: int,
        rec: SentPacket,
        limit: int,
    ) -> int:
        ready = self.ready
        credit = self._credit
        for sid in list(ready):
            st = self._streams.get(sid)
            if st is None:
                ready.pop(sid, None)
                continue
            rx = st.receiver
            if rx.dirty and size + _WINDOW_UPDATE_SIZE <= limit:
                rx.dirty = False
                frame = fr.encode_max_stream_data(sid, rx.limit)
                parts.append(frame)
                size += len(frame)
                rec.items.append(frame)
            tx = st.sender
            if st.phase is not _OPEN or tx.aborted:
                if not rx.dirty:
                    ready.pop(sid, None)
                continue
            size, sent, resent, status = tx.emit(
                sid, parts, rec.items, size, limit, credit.peer_max - credit.sent, self._hold_tail
            )
            credit.sent += sent
            if resent:
                self._stats["retransmitted_bytes"] += resent
            if status is _FULL:
                break
            if status is _HELD:
                self.held_back = True
                continue
            ready.pop(sid, None)
            if status is _MORE or rx.dirty:
                ready[sid] = None  # fairness: to the back of the queue
            if limit - size <= fr.STREAM_HEADER:
                break
        return size
