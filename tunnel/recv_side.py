"""The receiving direction of one stream: bytes in order, the credit it grants.

Theory of operation
-------------------
A ``RecvSide`` delivers the peer's bytes in order (``buf``, not yet read),
keeps early chunks by offset (``ooo``), and grants the peer credit up to the
offset ``limit``: once the application consumed half of its ``window``, it
grants ``consumed + window`` again (a MAX_STREAM_DATA is due: ``dirty``).
The window is state of the side, not a constant, so it can grow.  Its state
follows RFC 9000 §3.2, every legal move in :data:`RECV_TRANSITIONS`::

    RECV ──FIN──> SIZE_KNOWN ──all bytes in──> DATA_RECVD ──all consumed──> DATA_READ
      │               │                           │
      └───────────────┴──────── RESET ────────────┴──────────────────────> RESET_RECVD

"Consumed" counts bytes the application read or threw away (``close_read``),
so a reader that closed reaches DATA_READ once the final byte arrived.
DATA_READ and RESET_RECVD end the direction; a RESET after DATA_READ comes
too late to matter (the application has its EOF) and is ignored, as RFC
9000 allows.  Input the peer could not legally send (beyond the credit, past
or moving the final size) raises ``FlowControlError`` and changes nothing;
a move the table does not list raises ``IllegalTransition``.
"""

from __future__ import annotations

import enum

from tunnel.credit import SessionCredit
from tunnel.errors import FlowControlError, IllegalTransition, ProtocolErrorReason

_EMPTY = b""


class RecvState(enum.Enum):
    """States of a stream's receiving direction (RFC 9000 §3.2)."""

    RECV = "recv"
    SIZE_KNOWN = "size_known"
    DATA_RECVD = "data_recvd"
    DATA_READ = "data_read"
    RESET_RECVD = "reset_recvd"


# Every legal move: state -> states it may enter.
RECV_TRANSITIONS: dict[RecvState, frozenset[RecvState]] = {
    RecvState.RECV: frozenset({RecvState.SIZE_KNOWN, RecvState.RESET_RECVD}),
    RecvState.SIZE_KNOWN: frozenset({RecvState.DATA_RECVD, RecvState.RESET_RECVD}),
    RecvState.DATA_RECVD: frozenset({RecvState.DATA_READ, RecvState.RESET_RECVD}),
    RecvState.DATA_READ: frozenset(),
    RecvState.RESET_RECVD: frozenset(),
}

# Members bound once: an Enum class attribute costs a lookup on every use.
_RECV = RecvState.RECV
_SIZE_KNOWN = RecvState.SIZE_KNOWN
_DATA_RECVD = RecvState.DATA_RECVD
_DATA_READ = RecvState.DATA_READ
_RESET_RECVD = RecvState.RESET_RECVD
_DONE = frozenset({_DATA_READ, _RESET_RECVD})


class RecvSide:
    """One stream's receiving direction (see module docstring).

    Attributes:
        state: the ``RecvState``.
        buf: in-order bytes the application has not read yet.
        next: the next in-order offset expected.
        high: the highest offset received (what the peer's credit counts).
        consumed: bytes read or discarded by the application.
        final_size: the stream's final size, once a FIN or RESET told it.
        window: how far ahead of ``consumed`` the peer may send.
        limit: the highest offset granted so far.
        dirty: a MAX_STREAM_DATA with ``limit`` is due.
        read_closed: the application stopped reading; bytes are discarded.
        done: the direction ended (DATA_READ or RESET_RECVD); kept by ``move``.
        aborted: the state is RESET_RECVD; kept by ``move``.
        at_eof: the state is DATA_READ: every byte up to the final size was
            consumed, the reader sees EOF; kept by ``move``.
    """

    __slots__ = (
        "aborted",
        "at_eof",
        "buf",
        "consumed",
        "dirty",
        "done",
        "final_size",
        "high",
        "limit",
        "next",
        "ooo",
        "read_closed",
        "state",
        "window",
    )

    def __init__(self, window: int) -> None:
        self.state = _RECV
        self.done = False
        self.aborted = False
        self.at_eof = False
        self.buf = bytearray()
        self.next = 0
        self.high = 0
        self.consumed = 0
        self.ooo: dict[int, bytes | memoryview] = {}
        self.final_size: int | None = None
        self.window = window
        self.limit = window
        self.dirty = False
        self.read_closed = False

    # -- state ------------------------------------------------------------
    def move(self, target: RecvState) -> None:
        """Enter ``target``.

        Raises:
            IllegalTransition: the table has no move from the current state to it.
        """
        if target not in RECV_TRANSITIONS[self.state]:
            raise IllegalTransition("stream receive side", self.state, target)
        self.state = target
        self.done = target in _DONE
        self.aborted = target is _RESET_RECVD
        self.at_eof = target is _DATA_READ

    def _settle(self, fin: int) -> None:
        # Move forward as far as the counters allow (a FIN on a stream whose
        # bytes are all read goes RECV -> ... -> DATA_READ at once).  Only
        # called once the final size is known.
        if self.state is _SIZE_KNOWN and self.next >= fin:
            self.move(_DATA_RECVD)
        if self.state is _DATA_RECVD and self.consumed >= fin:
            self.move(_DATA_READ)

    def has_unread(self) -> bool:
        """Bytes arrived that the application has not read (in order or not)."""
        return bool(self.buf) or bool(self.ooo)

    # -- peer input ---------------------------------------------------------
    def on_data(
        self, offset: int, data: bytes | memoryview, fin: bool, credit: SessionCredit
    ) -> bool:
        """Take a STREAM frame; True when the application may care.

        Raises:
            FlowControlError: beyond the stream's or the session's credit, past
                the final size, or a FIN that moves it (nothing is changed).
        """
        if self.aborted:
            return False
        end = offset + len(data)
        known = self.final_size
        if (
            end > self.limit
            # nothing past the final size; the final size never moves
            or (known is not None and end > known)
            or (fin and known is not None and end != known)
            or (fin and end < self.high)
        ):
            raise FlowControlError(ProtocolErrorReason.FLOW_VIOLATION, f"stream data ends at {end}")
        if end > self.high:
            credit.on_receive(end - self.high)
            self.high = end
        if fin and known is None:
            self.final_size = known = end
            self.move(_SIZE_KNOWN)
        if end <= self.next:
            if known is not None:
                self._settle(known)
            return fin
        if offset <= self.next:
            skip = self.next - offset
            self._deliver(data[skip:] if skip else data, credit)
            ooo = self.ooo
            while ooo:
                k = min(ooo)
                if k > self.next:
                    break
                chunk = ooo.pop(k)
                if k + len(chunk) > self.next:
                    self._deliver(chunk[self.next - k :], credit)
        else:
            old = self.ooo.get(offset)
            if old is None or len(old) < len(data):
                self.ooo[offset] = data
        if known is not None:
            self._settle(known)
        return True

    def on_reset(self, final_size: int, credit: SessionCredit) -> bool:
        """Take a RESET; True if it ended the direction (False: already ended).

        Everything the peer sent counts as consumed for the credit, read or not.

        Raises:
            FlowControlError: a final size the peer could not have sent (below
                what arrived, beyond the credit, or not the FIN's).
        """
        if self.aborted:
            return False
        grow = final_size - self.high
        if (
            grow < 0
            or final_size > self.limit
            or (self.final_size is not None and final_size != self.final_size)
        ):
            raise FlowControlError(
                ProtocolErrorReason.FLOW_VIOLATION, f"reset with final size {final_size}"
            )
        if self.at_eof:
            return False  # the reader already has its EOF
        if grow:
            credit.on_receive(grow)
            self.high = final_size
        self.move(_RESET_RECVD)
        self.final_size = final_size
        unread = self.high - self.consumed
        self.buf.clear()
        self.ooo.clear()
        if unread > 0:
            self._consume(unread, credit)
        return True

    def window_update_lost(self) -> bool:
        """A packet with our MAX_STREAM_DATA was lost; True if one is due again."""
        if self.done:
            return False
        self.dirty = True
        return True

    # -- application --------------------------------------------------------
    def read(self, max_bytes: int, credit: SessionCredit) -> bytes | bytearray:
        """Take up to ``max_bytes`` in-order bytes (b"" if none are buffered)."""
        buf = self.buf
        if not buf:
            return _EMPTY
        out: bytes | bytearray
        if max_bytes >= len(buf):
            out = buf  # hand the buffer over: no copy
            self.buf = bytearray()
        else:
            out = bytes(buf[:max_bytes])
            del buf[:max_bytes]
        self._consume(len(out), credit)
        if self.final_size is not None:
            self._settle(self.final_size)
        return out

    def close_read(self, credit: SessionCredit) -> bool:
        """The application stops reading: discard what is buffered (and what comes).

        Returns True when the peer should be told to STOP (its direction has
        not ended and this is the first ``close_read``).
        """
        if self.read_closed:
            return False
        self.read_closed = True
        if self.buf:
            self._consume(len(self.buf), credit)
            self.buf.clear()
        if self.final_size is not None:
            self._settle(self.final_size)
        return self.state is _RECV or self.state is _SIZE_KNOWN

    def release(self, credit: SessionCredit) -> None:
        """The stream is forgotten: count its unread bytes as consumed."""
        if self.buf:
            n = len(self.buf)
            self.buf.clear()
            self._consume(n, credit)

    # -- credit ---------------------------------------------------------------
    def _deliver(self, data: bytes | memoryview, credit: SessionCredit) -> None:
        self.next += len(data)
        if self.read_closed:
            self._consume(len(data), credit)
        else:
            self.buf += data

    def _consume(self, n: int, credit: SessionCredit) -> None:
        self.consumed += n
        credit.consume(n)
        # Only while the final size is unknown is more credit any use.
        if self.state is _RECV and self.limit - self.consumed <= self.window // 2:
            self.limit = self.consumed + self.window
            self.dirty = True
