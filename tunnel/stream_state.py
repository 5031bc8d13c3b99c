"""One stream: how far it opened, and its two directions.

``StreamState`` is owned by ``Connection`` (tunnel.connection has the theory
of operation) and read by the trio layer (``TunnelStream``).  Opening is the
``StreamPhase`` (PROTOCOL.md 6.3); once open, each direction ends on its own:
the ``SendSide`` (tunnel.send_side) and the ``RecvSide`` (tunnel.recv_side)
each keep their state and transition table.  The stream is forgotten when
both sides are done.
"""

from __future__ import annotations

import enum

from tunnel.config import Config
from tunnel.recv_side import RecvSide
from tunnel.send_side import SendSide


class StreamPhase(enum.Enum):
    OPENING = "opening"  # we sent OPEN, no answer yet
    PENDING = "pending"  # peer sent OPEN, application has not decided
    OPEN = "open"
    REFUSED = "refused"


class StreamState:
    """One stream (see module docstring).

    Attributes:
        sid: the stream id.
        service: the service it was opened for.
        phase: how far opening got.
        error: ``(code, reason)`` of the peer's refusal or RESET, once one came.
        sender: our direction.
        receiver: the peer's direction.
    """

    __slots__ = ("error", "phase", "receiver", "sender", "service", "sid")

    def __init__(self, sid: int, service: str, phase: StreamPhase, cfg: Config) -> None:
        self.sid = sid
        self.service = service
        self.phase = phase
        self.error: tuple[int, str] | None = None
        self.sender = SendSide(cfg.send_buffer)
        self.receiver = RecvSide(cfg.stream_window)

    def at_eof(self) -> bool:
        """The reader consumed every byte up to the peer's FIN."""
        return self.receiver.at_eof

    def done(self) -> bool:
        """Both directions ended (and the stream is not waiting to be accepted)."""
        return (
            self.phase is not StreamPhase.PENDING and self.sender.done and self.receiver.done
        )
