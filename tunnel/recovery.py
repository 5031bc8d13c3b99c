"""Loss recovery: packets in flight, RTT, and when to call one lost (RFC 9002).

Theory of operation
-------------------
``LossRecovery`` remembers every ack-eliciting packet sent (``SentPacket``:
its send time and the frames it carried) until an ACK covers it or it is
declared lost: 3 packet numbers below the largest acknowledged, older than
9/8 RTT when a later one was acknowledged, by the retransmission timeout
(``rto``: ``max(min_rto, srtt + 4*rttvar)``, doubled per expiry, capped), or
all at once when the path changed.  It knows nothing of streams: ``on_ack``
and the timers hand the acknowledged and lost packets back, and the
``Connection`` tells each stream what happened to its frames.  The last
``MAX_REMEMBERED_LOST`` lost packets are kept, so that a late ACK for one
(declared lost too early: a path reset, reordering) still counts its data
delivered instead of resending it yet again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from tunnel import frames as fr
from tunnel.config import Config

PACKET_THRESHOLD = 3
MAX_REMEMBERED_LOST = 1024
TIME_THRESHOLD = 9 / 8
MAX_BACKOFF = 64.0


@dataclass
class SentPacket:
    """One ack-eliciting packet in flight.

    Attributes:
        time: when it was sent.
        items: ``(sid, offset, length, fin)`` for stream data, or a control
            frame's bytes, in the order they were packed.
    """

    time: float
    items: list[tuple[int, int, int, bool] | bytes] = field(default_factory=list)


def _covered(
    packets: dict[int, SentPacket], ranges: Sequence[tuple[int, int]], largest: int
) -> list[int]:
    # Packet numbers of ``packets`` (ascending) inside the sorted ``ranges``.
    out: list[int] = []
    ri = 0
    n = len(ranges)
    for pn in packets:
        if pn > largest:
            break
        while ri < n and ranges[ri][1] < pn:
            ri += 1
        if ri == n:
            break
        if ranges[ri][0] <= pn:
            out.append(pn)
    return out


class LossRecovery:
    """The sender's in-flight packets and RTT estimate (see module docstring).

    Attributes:
        sent: packet number -> packet, ascending, not yet acknowledged or lost.
        lost: recently declared lost, ascending (a late ACK still counts).
        largest_acked: the highest packet number acknowledged so far.
        srtt / rttvar / latest_rtt: the RTT estimate (srtt None before a sample).
        backoff: the RTO multiplier, doubled per expiry, reset by progress.
        last_progress: when the RTO was last restarted.
    """

    __slots__ = (
        "backoff",
        "cfg",
        "largest_acked",
        "last_progress",
        "latest_rtt",
        "lost",
        "rttvar",
        "sent",
        "srtt",
    )

    def __init__(self, cfg: Config, now: float) -> None:
        self.cfg = cfg
        self.sent: dict[int, SentPacket] = {}
        self.lost: dict[int, SentPacket] = {}
        self.largest_acked = -1
        self.srtt: float | None = None
        self.rttvar = 0.0
        self.latest_rtt = 0.0
        self.backoff = 1.0
        self.last_progress = now

    def rto(self) -> float:
        """The retransmission timeout now, with backoff."""
        cfg = self.cfg
        if self.srtt is None:
            base = cfg.initial_rto
        else:
            base = max(cfg.min_rto, self.srtt + 4 * self.rttvar)
        return min(base * self.backoff, max(cfg.max_rto, base))

    def deadline(self) -> float | None:
        """When the RTO fires, or None with nothing in flight."""
        return self.last_progress + self.rto() if self.sent else None

    def on_sent(self, pn: int, packet: SentPacket, now: float) -> None:
        """Remember an ack-eliciting packet; the first in flight starts the RTO."""
        self.sent[pn] = packet
        if len(self.sent) == 1:
            self.last_progress = now

    def on_ack(self, f: fr.Ack, now: float) -> tuple[list[SentPacket], list[SentPacket]]:
        """Process an ACK frame.

        Returns:
            (packets now acknowledged, including late ones once declared lost;
            packets the ACK shows lost), each in packet-number order.
        """
        if not f.ranges:
            return [], []
        largest = f.ranges[0][1]
        ranges = sorted(f.ranges) if len(f.ranges) > 1 else f.ranges  # ascending
        sent = self.sent
        newly = _covered(sent, ranges, largest)
        if not newly and not self.lost:
            return [], []
        acked = [sent.pop(pn) for pn in newly]
        newest = acked[-1] if newly and newly[-1] == largest else None
        if self.lost:
            lost = self.lost
            acked += [lost.pop(pn) for pn in _covered(lost, ranges, largest)]
        if not newly:
            return acked, []
        if largest > self.largest_acked:
            self.largest_acked = largest
        if newest is not None:
            self._rtt_sample(now - newest.time)
        self.backoff = 1.0
        self.last_progress = now
        return acked, self._detect_lost(now)

    def on_timer(self, now: float) -> list[SentPacket]:
        """Run the RTO: on expiry every packet in flight is lost and the RTO doubles."""
        if not self.sent or now < self.last_progress + self.rto():
            return []
        out = [self._declare_lost(pn) for pn in list(self.sent)]
        self.backoff = min(self.backoff * 2, MAX_BACKOFF)
        self.last_progress = now
        return out

    def path_changed(self, now: float) -> list[SentPacket]:
        """The path changed: everything in flight is lost, the RTO starts afresh."""
        out = [self._declare_lost(pn) for pn in list(self.sent)]
        self.backoff = 1.0
        self.last_progress = now
        return out

    def _rtt_sample(self, rtt: float) -> None:
        self.latest_rtt = rtt
        if self.srtt is None:
            self.srtt = rtt
            self.rttvar = rtt / 2
        else:
            self.rttvar = 0.75 * self.rttvar + 0.25 * abs(self.srtt - rtt)
            self.srtt = 0.875 * self.srtt + 0.125 * rtt

    def _detect_lost(self, now: float) -> list[SentPacket]:
        largest = self.largest_acked
        srtt = self.srtt if self.srtt is not None else self.cfg.initial_rto
        horizon = now - TIME_THRESHOLD * max(srtt, self.latest_rtt)
        out: list[SentPacket] = []
        for pn in list(self.sent):
            if pn >= largest:
                break
            if largest - pn >= PACKET_THRESHOLD or self.sent[pn].time <= horizon:
                out.append(self._declare_lost(pn))
        return out

    def _declare_lost(self, pn: int) -> SentPacket:
        packet = self.sent.pop(pn)
        self.lost[pn] = packet
        if len(self.lost) > MAX_REMEMBERED_LOST:
            del self.lost[next(iter(self.lost))]
        return packet
