"""Which packet numbers arrived, and whether an ACK is owed (PROTOCOL.md 6.1).

Theory of operation
-------------------
Every packet number received goes into ascending inclusive ranges, the body
of the next ACK, so holes are visible to the sender at once.  Recording the
non-eliciting packets too keeps the ranges contiguous, but only
ack-eliciting ones make an ACK due (``needed``); ``unacked`` counts them, so
the session can acknowledge every second one at once and delay the rest.
At most ``max_ranges`` ranges are kept, the oldest dropped.
"""

from __future__ import annotations

import bisect

from tunnel import frames as fr


class AckTracker:
    """The receiver's acknowledgement state (see module docstring).

    Attributes:
        ranges: ascending ``[first, last]`` packet-number ranges received.
        needed: an ack-eliciting packet arrived since the last ACK.
        unacked: ack-eliciting packets since the last ACK.
    """

    __slots__ = ("max_ranges", "needed", "ranges", "unacked")

    def __init__(self, max_ranges: int) -> None:
        self.max_ranges = max_ranges
        self.ranges: list[list[int]] = []
        self.needed = False
        self.unacked = 0

    def on_packet(self, pn: int, eliciting: bool) -> None:
        """Record packet ``pn``; an ack-eliciting one makes an ACK due."""
        rs = self.ranges
        if rs and rs[-1][1] + 1 == pn:  # the common case: the next in order
            rs[-1][1] = pn
        else:
            self._add(pn)
        if eliciting:
            self.needed = True
            self.unacked += 1

    def take_frame(self) -> bytes:
        """The ACK frame to send now (highest range first); no ACK is due after."""
        self.needed = False
        self.unacked = 0
        return fr.encode_ack([(a, b) for a, b in reversed(self.ranges)])

    def _add(self, pn: int) -> None:
        rs = self.ranges
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
        if len(rs) > self.max_ranges:
            del rs[: len(rs) - self.max_ranges]
