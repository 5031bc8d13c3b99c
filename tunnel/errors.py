"""Errors raised by the tunnel.

Every error the sans-IO code raises for something the *peer* (or an attacker
on the path) did carries a short stable ``reason`` usable as a counter key.
The trio layer never lets these escape to the process: a datagram that fails
to authenticate is dropped and counted (see ``Channel.dropped``).
"""

from __future__ import annotations


class TunnelError(Exception):
    """Base class of every tunnel error."""


class ProtocolError(TunnelError):
    """Bytes from the peer broke the tunnel protocol.

    Attributes:
        reason: a short stable identifier, usable as a metrics key.
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


class HandshakeError(ProtocolError):
    """A handshake message was rejected (base of the handshake errors)."""


class HandshakeTruncatedError(HandshakeError):
    """A handshake message is malformed: not its fixed size, wrong type byte,
    or non-zero reserved bytes."""


class HandshakeAuthError(HandshakeError):
    """A handshake message failed to decrypt: tampered, or not meant for us."""


class HandshakeReplayError(HandshakeError):
    """An initiation carried a timestamp not newer than one already seen."""


class UnknownPeerError(HandshakeError):
    """The initiator's static key is not one we were told to accept, or it
    does not match the node key the packet came from."""


class RecordError(ProtocolError):
    """A transport record was rejected (tampered, replayed, unknown keys)."""


class FlowControlError(ProtocolError):
    """The peer sent beyond the credit we granted, or moved a stream's final size.

    Raised by the receive side and the session credit; ``Connection`` drops
    the frame and counts it (``flow_violations``) instead of failing the
    session (PROTOCOL.md 6.2).
    """


class IllegalTransition(TunnelError):
    """A stream direction was asked to make a move its table does not allow.

    A bug in our own code, never the peer's: peer input that does not fit is
    ignored or raises ``FlowControlError`` before any transition is tried.

    Attributes:
        current: the state the direction is in.
        target: the state it was asked to enter.
    """

    def __init__(self, machine: str, current: object, target: object) -> None:
        self.current = current
        self.target = target
        cur = getattr(current, "value", current)
        tgt = getattr(target, "value", target)
        super().__init__(f"{machine} cannot go from {cur} to {tgt}")


class LimitError(TunnelError):
    """A local limit was reached (e.g. counter exhaustion); rekey first."""


class PeerTimeoutError(TunnelError, TimeoutError):
    """The peer sent nothing we could authenticate for too long."""


class SessionClosedError(TunnelError):
    """The session ended (peer restarted, closed, timed out, or we closed it).

    Attributes:
        reason: a short stable identifier.
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        super().__init__(f"{reason}: {detail}" if detail else reason)


class StreamRefusedError(TunnelError):
    """The peer refused to open a stream.

    Attributes:
        code: the refusal code (see PROTOCOL.md, "Error codes").
        reason: the peer's text.
    """

    def __init__(self, code: int, reason: str) -> None:
        self.code = code
        self.reason = reason
        super().__init__(f"stream refused ({code}): {reason}")


class StreamResetError(TunnelError):
    """The stream was reset by either side.

    Attributes:
        code: the reset code (see PROTOCOL.md, "Error codes").
        reason: the text sent with the reset.
    """

    def __init__(self, code: int, reason: str) -> None:
        self.code = code
        self.reason = reason
        super().__init__(f"stream reset ({code}): {reason}")
