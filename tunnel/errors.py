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
