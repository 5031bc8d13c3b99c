"""The sending direction of one stream: bytes out, acknowledged, or given up.

Theory of operation
-------------------
A ``SendSide`` keeps the stream's bytes from the lowest unacknowledged
offset (``base``) to what the application wrote last, the ranges
acknowledged above ``base`` (``acked``) and the ranges to resend (``retx``,
sorted and merged, so bytes declared lost twice go out once).  Its state
follows RFC 9000 §3.1, with every legal move in :data:`SEND_TRANSITIONS`::

    SEND ──send_eof──> FIN_QUEUED ──FIN sent──> DATA_SENT ──all acked──> DATA_RECVD
      │                    │                        │
      └──────── reset / STOP from the peer ─────────┴──────────────────> RESET_SENT

RFC 9000's "Ready" and "Send" are one state here (nothing depends on whether
a byte left yet), and "FIN_QUEUED" is the stretch between the application's
``send_eof`` and the packet that carries the FIN.  RESET is a control frame
the loss recovery resends as it was, so there is no "Reset Recvd": RESET_SENT
is final.  DATA_RECVD and RESET_SENT end the direction; a move the table
does not list raises ``IllegalTransition`` and changes nothing.

``emit`` writes this stream's frames into a packet being built: ranges to
resend first, then a lost FIN, then new bytes within the peer's credit for
the stream (``peer_max``) and the session credit the caller passes in.
"""

from __future__ import annotations

import bisect
import enum

from tunnel import frames as fr
from tunnel.errors import IllegalTransition


class SendState(enum.Enum):
    """States of a stream's sending direction (RFC 9000 §3.1)."""

    SEND = "send"
    FIN_QUEUED = "fin_queued"
    DATA_SENT = "data_sent"
    DATA_RECVD = "data_recvd"
    RESET_SENT = "reset_sent"


# Every legal move: state -> states it may enter.
SEND_TRANSITIONS: dict[SendState, frozenset[SendState]] = {
    SendState.SEND: frozenset({SendState.FIN_QUEUED, SendState.RESET_SENT}),
    SendState.FIN_QUEUED: frozenset({SendState.DATA_SENT, SendState.RESET_SENT}),
    SendState.DATA_SENT: frozenset({SendState.DATA_RECVD, SendState.RESET_SENT}),
    SendState.DATA_RECVD: frozenset(),
    SendState.RESET_SENT: frozenset(),
}

# Members bound once: an Enum class attribute costs a lookup on every use,
# and these are read per packet.
_SEND = SendState.SEND
_FIN_QUEUED = SendState.FIN_QUEUED
_DATA_SENT = SendState.DATA_SENT
_DATA_RECVD = SendState.DATA_RECVD
_RESET_SENT = SendState.RESET_SENT
_DONE = frozenset({_DATA_RECVD, _RESET_SENT})


class EmitStatus(enum.Enum):
    """What a stream wants after ``emit`` wrote its part of a packet."""

    IDLE = "idle"  # nothing left, or blocked on credit: out of the ready set
    MORE = "more"  # more to send: to the back of the ready set
    HELD = "held"  # a runt tail held back for the writer's next bytes: stay put
    FULL = "full"  # resends left over: the packet is full, stay put


_IDLE = EmitStatus.IDLE
_MORE = EmitStatus.MORE
_HELD = EmitStatus.HELD
_FULL = EmitStatus.FULL

# A stream item of a sent packet: (sid, offset, length, fin).
StreamItem = tuple[int, int, int, bool]


class SendSide:
    """One stream's sending direction (see module docstring).

    Attributes:
        state: the ``SendState``.
        buf: bytes from ``base`` on (sent-but-unacknowledged, then unsent).
        base: the lowest unacknowledged offset.
        next: the first offset never sent.
        capacity: most bytes ``buf`` may hold (the send buffer).
        peer_max: the peer's credit for this stream (MAX_STREAM_DATA).
        stopped: the code of the peer's STOP, once one arrived.
        done: the direction ended (DATA_RECVD or RESET_SENT); kept by ``move``.
        aborted: the state is RESET_SENT; kept by ``move``.
    """

    __slots__ = (
        "aborted",
        "acked",
        "base",
        "buf",
        "bulk",
        "capacity",
        "done",
        "fin_acked",
        "next",
        "peer_max",
        "retx",
        "retx_fin",
        "state",
        "stopped",
    )

    def __init__(self, capacity: int, peer_max: int = 0) -> None:
        self.state = _SEND
        self.done = False
        self.aborted = False
        self.buf = bytearray()
        self.base = 0
        self.next = 0
        self.capacity = capacity
        self.peer_max = peer_max
        self.acked: list[tuple[int, int]] = []  # acknowledged [start, end) above base
        self.retx: list[tuple[int, int]] = []  # [start, end) to resend, sorted, merged
        self.retx_fin = False  # the FIN was lost and must be resent
        self.fin_acked = False
        self.bulk = False  # the last new-data frame filled its packet
        self.stopped: int | None = None

    # -- state ------------------------------------------------------------
    def move(self, target: SendState) -> None:
        """Enter ``target``.

        Raises:
            IllegalTransition: the table has no move from the current state to it.
        """
        if target not in SEND_TRANSITIONS[self.state]:
            raise IllegalTransition("stream send side", self.state, target)
        self.state = target
        self.done = target in _DONE
        self.aborted = target is _RESET_SENT

    @property
    def writable(self) -> bool:
        """The application may still write (no ``send_eof``, no reset)."""
        return self.state is _SEND

    def space(self) -> int:
        """Bytes ``write`` would take now."""
        return max(0, self.capacity - len(self.buf))

    def unsent(self) -> int:
        return self.base + len(self.buf) - self.next

    # -- application --------------------------------------------------------
    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Buffer up to ``space()`` bytes; return how many (0 once not writable)."""
        if self.state is not _SEND:
            return 0
        n = min(len(data), self.capacity - len(self.buf))
        if n <= 0:
            return 0
        self.buf += data[:n] if n < len(data) else data
        return n

    def finish(self) -> bool:
        """Queue the FIN after the buffered bytes; False if not writable."""
        if self.state is not _SEND:
            return False
        self.move(_FIN_QUEUED)
        return True

    def abort(self) -> int:
        """Give the direction up: drop every buffered byte; return the final size.

        Raises:
            IllegalTransition: the direction already ended.
        """
        self.move(_RESET_SENT)
        self.retx.clear()
        self.retx_fin = False
        self.buf.clear()
        self.base = self.next
        self.acked.clear()
        return self.next

    def on_stop(self, code: int) -> bool:
        """The peer sent STOP; True the first time (the caller then resets unless done)."""
        if self.stopped is not None:
            return False
        self.stopped = code
        return True

    # -- loss recovery --------------------------------------------------------
    def on_lost(self, offset: int, length: int, fin: bool) -> bool:
        """A packet carrying ``[offset, offset+length)`` (and the FIN) was lost.

        Returns True when something was queued again (the stream is ready).
        """
        if self.aborted:
            return False
        if length:
            self.add_lost_range(offset, offset + length)
        if fin and not self.fin_acked:
            self.retx_fin = True
        return True

    def on_acked(self, offset: int, length: int, fin: bool) -> bool:
        """A packet carrying ``[offset, offset+length)`` (and the FIN) was acknowledged.

        Returns True when the application may care: buffer space was freed,
        or the direction is done.
        """
        if self.aborted:
            return False
        if fin:
            self.fin_acked = True
        freed = self._acked_range(offset, offset + length) if length else False
        if self.fin_acked and self.state is _DATA_SENT and self.base >= self.next:
            self.move(_DATA_RECVD)
        return freed or self.done

    def _acked_range(self, start: int, end: int) -> bool:
        if end <= self.base:
            return False
        bisect.insort(self.acked, (start, end))
        base = self.base
        merged: list[tuple[int, int]] = []
        for a, b in self.acked:
            if merged and a <= merged[-1][1]:
                if b > merged[-1][1]:
                    merged[-1] = (merged[-1][0], b)
            else:
                merged.append((a, b))
        while merged and merged[0][0] <= base:
            base = max(base, merged[0][1])
            merged.pop(0)
        self.acked = merged
        if base > self.base:
            del self.buf[: base - self.base]
            self.base = base
            return True
        return False

    def add_lost_range(self, start: int, end: int) -> None:
        """Queue ``[start, end)`` for resending, minus what is acknowledged, merged."""
        start = max(start, self.base)
        pieces = [(start, end)]
        for a, b in self.acked:  # carve out ranges acknowledged above base
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
        rs = self.retx
        for x, y in pieces:
            if y <= x:
                continue
            i = bisect.bisect_left(rs, (x, y))
            rs.insert(i, (x, y))
            j = max(i - 1, 0)
            while j + 1 < len(rs):  # merge with neighbours
                if rs[j][1] >= rs[j + 1][0]:
                    rs[j] = (rs[j][0], max(rs[j][1], rs[j + 1][1]))
                    del rs[j + 1]
                elif j >= i:
                    break
                else:
                    j += 1

    # -- packet building --------------------------------------------------------
    def emit(
        self,
        sid: int,
        parts: list[bytes | bytearray | memoryview],
        items: list[StreamItem | bytes],
        size: int,
        limit: int,
        session_room: int,
        hold_tail: int,
    ) -> tuple[int, int, int, EmitStatus]:
        """Append this stream's STREAM frames to a packet of ``size`` of ``limit`` bytes.

        Bytes are appended as memoryviews of ``buf`` (the packet join copies
        them once).  ``session_room`` is the session credit left; a tail
        under ``hold_tail`` bytes after a full packet is held back.

        Returns:
            (new size, new bytes sent, bytes resent, what the stream wants next).
        """
        retransmitted = 0
        retx = self.retx
        while retx and limit - size > fr.STREAM_HEADER:
            offset, end = retx[0]
            offset = max(offset, self.base)  # acknowledged since
            if end <= offset:
                del retx[0]
                continue
            room = limit - size - fr.STREAM_HEADER
            if end - offset > room:
                retx[0] = (offset + room, end)
                end = offset + room
            else:
                del retx[0]
            lo = offset - self.base
            parts.append(fr.stream_header(sid, offset, False, end - offset))
            parts.append(memoryview(self.buf)[lo : lo + (end - offset)])
            size += fr.STREAM_HEADER + (end - offset)
            items.append((sid, offset, end - offset, False))
            retransmitted += end - offset
        if retx:
            return size, 0, retransmitted, _FULL
        if self.retx_fin and limit - size >= fr.STREAM_HEADER:
            self.retx_fin = False
            if not self.fin_acked:  # the FIN sits at the final size
                parts.append(fr.stream_header(sid, self.next, True, 0))
                size += fr.STREAM_HEADER
                items.append((sid, self.next, 0, True))
        room = limit - size - fr.STREAM_HEADER
        unsent = self.base + len(self.buf) - self.next
        state = self.state
        credit = min(self.peer_max - self.next, session_room)
        if 0 < unsent < hold_tail and self.bulk and state is _SEND and credit >= unsent:
            return size, 0, retransmitted, _HELD
        n = max(0, min(unsent, credit, room))
        if n:
            self.bulk = n == room
        fin = state is _FIN_QUEUED and n == unsent and room >= 0
        if n > 0 or fin:
            offset = self.next
            lo = offset - self.base
            parts.append(fr.stream_header(sid, offset, fin, n))
            parts.append(memoryview(self.buf)[lo : lo + n])
            size += fr.STREAM_HEADER + n
            self.next += n
            if fin:
                self.move(_DATA_SENT)
            items.append((sid, offset, n, fin))
        left = unsent - n
        if (left == 0 and self.state is not _FIN_QUEUED) or (left and n < room):
            # nothing left, or blocked on credit: wait for a window update
            return size, n, retransmitted, _IDLE
        return size, n, retransmitted, _MORE
