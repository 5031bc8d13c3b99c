"""Errors raised by the DERP protocol code.

``DerpProtocolError`` is the one error the sans-IO codec and handshake raise
for anything the *peer* got wrong.  Its ``reason`` is a short, stable string
(``"frame_too_large"``, ``"bad_magic"``, ...) that servers use as a counter
key, so never put variable data in it; details go in the message.
"""

from __future__ import annotations


class DerpError(Exception):
    """Base class of every DERP error."""


class DerpProtocolError(DerpError):
    """The peer broke the DERP protocol; the connection cannot continue.

    Attributes:
        reason: a short stable identifier, usable as a metrics key.
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


class DerpConnectionClosed(DerpError):
    """The DERP connection ended (EOF, broken or closed stream)."""


class DerpTimeoutError(DerpError, TimeoutError):
    """A DERP operation (handshake, ping) did not finish in time."""
