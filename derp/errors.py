"""Errors raised by the DERP protocol code.

``DerpProtocolError`` is the one error the sans-IO codec and handshake raise
for anything the *peer* got wrong.  Its ``reason`` is a ``ProtocolErrorReason``,
a closed list whose values servers use as counter keys
(``Metrics.protocol_errors``); details go in the message.
"""

from __future__ import annotations

from enum import StrEnum


class ProtocolErrorReason(StrEnum):
    """Why a peer's DERP bytes were rejected; the values are metric keys."""

    FRAME_TOO_LARGE = "frame_too_large"
    PACKET_TOO_LARGE = "packet_too_large"
    SHORT_PAYLOAD = "short_payload"
    BAD_MAGIC = "bad_magic"
    BAD_UTF8 = "bad_utf8"
    INFO_TOO_LARGE = "info_too_large"
    BAD_BOX = "bad_box"
    BAD_JSON = "bad_json"
    BAD_CLIENT_INFO = "bad_client_info"
    EXPECTED_SERVER_KEY = "expected_server_key"
    SERVER_KEY_MISMATCH = "server_key_mismatch"
    HANDSHAKE_TIMEOUT = "handshake_timeout"
    EXPECTED_CLIENT_INFO = "expected_client_info"
    MESH_FORBIDDEN = "mesh_forbidden"


class DerpError(Exception):
    """Base class of every DERP error."""


class DerpProtocolError(DerpError):
    """The peer broke the DERP protocol; the connection cannot continue.

    Attributes:
        reason: why, usable as a metrics key.
    """

    def __init__(self, reason: ProtocolErrorReason, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


class DerpConnectionClosed(DerpError):
    """The DERP connection ended (EOF, broken or closed stream)."""


class DerpTimeoutError(DerpError, TimeoutError):
    """A DERP operation (handshake, ping) did not finish in time."""
