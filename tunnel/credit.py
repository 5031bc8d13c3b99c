"""Session-wide flow-control credit, both ways (PROTOCOL.md 6.2).

Theory of operation
-------------------
Sending: the sum over all streams of the highest offset sent (``sent``) may
not pass the peer's MAX_DATA (``peer_max``); ``send_room`` is what is left.
Receiving: the peer may send up to ``limit`` bytes summed over all streams
(``received`` counts the highest offset of each); once the application
consumed half of ``window`` the session grants ``consumed + window`` again
and a MAX_DATA is due (``dirty``).  ``window`` is state, not a constant, so
it can grow.  A peer that sends beyond ``limit`` gets ``FlowControlError``
and nothing is counted.
"""

from __future__ import annotations

from tunnel.errors import FlowControlError, ProtocolErrorReason

# What each side may send before the first MAX_DATA arrives.
INITIAL_MAX_DATA = 1 << 20


class SessionCredit:
    """The session's credit in both directions (see module docstring).

    Attributes:
        peer_max: the peer's MAX_DATA: the most we may send, summed.
        sent: the sum over streams of the highest offset we sent.
        window: how far ahead of ``consumed`` the peer may send.
        limit: the most the peer may send, summed (our MAX_DATA).
        received: the sum over streams of the highest offset received.
        consumed: bytes the application read or discarded, summed.
        dirty: a MAX_DATA with ``limit`` is due.
    """

    __slots__ = ("consumed", "dirty", "limit", "peer_max", "received", "sent", "window")

    def __init__(self, window: int) -> None:
        self.peer_max = INITIAL_MAX_DATA
        self.sent = 0
        self.window = window
        self.limit = max(INITIAL_MAX_DATA, window)
        self.received = 0
        self.consumed = 0
        # The peer starts from INITIAL_MAX_DATA: tell it the real window at once.
        self.dirty = self.limit > INITIAL_MAX_DATA

    def send_room(self) -> int:
        """Bytes of new stream data the peer's credit still allows."""
        return self.peer_max - self.sent

    def on_max_data(self, maximum: int) -> bool:
        """The peer sent MAX_DATA; True if it raised our credit."""
        if maximum <= self.peer_max:
            return False
        self.peer_max = maximum
        return True

    def on_receive(self, grow: int) -> None:
        """Count ``grow`` more bytes of the peer's stream offsets.

        Raises:
            FlowControlError: that would pass the credit we granted (nothing counted).
        """
        if self.received + grow > self.limit:
            raise FlowControlError(
                ProtocolErrorReason.FLOW_VIOLATION, "beyond the session's credit"
            )
        self.received += grow

    def consume(self, n: int) -> None:
        """The application consumed ``n`` bytes; grant more once half the window is used."""
        self.consumed += n
        if self.limit - self.consumed <= self.window // 2:
            self.limit = self.consumed + self.window
            self.dirty = True
