"""Errors raised by the tunnel.

Every error the sans-IO code raises for something the *peer* (or an attacker
on the path) did carries a ``reason`` from a closed ``StrEnum`` whose values
are counter keys.  The trio layer never lets these escape to the process: a
datagram that fails to authenticate is dropped and counted by reason
(``Channel.dropped``, ``Endpoint.dropped``: ``DropReason`` or
``ProtocolErrorReason``).  The reasons we put in RESET frames are
``ResetReason``s; a session ends with a ``CloseReason``.
"""

from __future__ import annotations

from enum import StrEnum


class ProtocolErrorReason(StrEnum):
    """Why bytes from the peer were rejected; the values are counter keys."""

    # packets and frames (tunnel.frames)
    PACKET_SHORT = "packet_short"
    FRAME_TRUNCATED = "frame_truncated"
    FRAME_TEXT = "frame_text"
    FRAME_TYPE = "frame_type"
    ACK_RANGE = "ack_range"
    # credit (tunnel.recv_side, tunnel.credit)
    FLOW_VIOLATION = "flow_violation"
    # transport records (tunnel.record)
    RECORD_SHORT = "record_short"
    RECORD_REPLAY = "record_replay"
    RECORD_AUTH = "record_auth"
    # handshake messages (tunnel.handshake)
    HANDSHAKE_SIZE = "handshake_size"
    BAD_PUBLIC_KEY = "bad_public_key"
    HANDSHAKE_AUTH = "handshake_auth"
    UNKNOWN_PEER = "unknown_peer"
    HANDSHAKE_REPLAY = "handshake_replay"
    HANDSHAKE_INDEX = "handshake_index"


class DropReason(StrEnum):
    """Why a datagram or connection was dropped without an error; counter keys."""

    # Channel.dropped (besides a ProtocolErrorReason)
    EMPTY = "empty"
    UNKNOWN_TYPE = "unknown_type"
    UNKNOWN_INDEX = "unknown_index"
    EXPIRED_KEYS = "expired_keys"
    STATIC_KEY_MISMATCH = "static_key_mismatch"
    UNEXPECTED_RESPONSE = "unexpected_response"
    # Endpoint.dropped
    NO_SESSION = "no_session"
    UNAUTHORIZED_PEER = "unauthorized_peer"
    DIRECT_HELLO_TIMEOUT = "direct_hello_timeout"
    DIRECT_UNAUTHORIZED = "direct_unauthorized"
    DIRECT_FRAMING = "direct_framing"


class CloseReason(StrEnum):
    """Why a session ended (``SessionClosedError.reason``)."""

    CLOSED = "closed"
    PEER_RESTARTED = "peer_restarted"
    PEER_CLOSED = "peer_closed"
    INTERNAL_ERROR = "internal_error"


class ResetReason(StrEnum):
    """The texts this side sends in RESET and OPEN_REFUSED frames (the peer's are free text)."""

    PEER_STOPPED = "peer stopped reading"
    UNREAD_DATA = "closed with unread data"
    OPEN_ABANDONED = "open abandoned"
    BACKLOG_FULL = "accept backlog full"


class TunnelError(Exception):
    """Base class of every tunnel error."""


class ProtocolError(TunnelError):
    """Bytes from the peer broke the tunnel protocol.

    Attributes:
        reason: why, usable as a metrics key.
    """

    def __init__(self, reason: ProtocolErrorReason, detail: str = "") -> None:
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
        reason: why.
    """

    def __init__(self, reason: CloseReason, detail: str = "") -> None:
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
