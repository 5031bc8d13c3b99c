"""The ``speedtest`` tunnel service's wire format (sans-IO; the agent serves it).

A client opens a tunnel stream to the service ``speedtest`` and sends one
13-byte request::

    magic   4 bytes  b"BST1"
    mode    1 byte   0x01 upload (client -> agent), 0x02 download (agent -> client)
    length  8 bytes  big-endian byte count, 1 .. MAX_LENGTH

Upload: the client then sends ``length`` bytes (any content) and half-closes;
the agent reads exactly ``length`` bytes and answers with the 8-byte
big-endian count it received, then closes.  Download: the agent sends
``length`` bytes (any content, zeros are fine) and half-closes.  The client
times each direction itself.  A malformed request: the agent closes the
stream without answering.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

MAGIC = b"BST1"
UPLOAD = 0x01
DOWNLOAD = 0x02
MAX_LENGTH = 1 << 34  # 16 GiB
_REQUEST = struct.Struct(">4sBQ")
REQUEST_SIZE = _REQUEST.size
_COUNT = struct.Struct(">Q")
COUNT_SIZE = _COUNT.size


class SpeedtestProtocolError(ValueError):
    """A request or answer is malformed."""


@dataclass(frozen=True, slots=True)
class Request:
    mode: int
    length: int


def encode_request(mode: int, length: int) -> bytes:
    """Raises SpeedtestProtocolError for a bad mode or length."""
    if mode not in (UPLOAD, DOWNLOAD):
        raise SpeedtestProtocolError(f"unknown mode {mode}")
    if not 1 <= length <= MAX_LENGTH:
        raise SpeedtestProtocolError(f"length {length} out of range 1..{MAX_LENGTH}")
    return _REQUEST.pack(MAGIC, mode, length)


def decode_request(data: bytes) -> Request:
    """Decode exactly ``REQUEST_SIZE`` bytes.  Raises SpeedtestProtocolError."""
    if len(data) != REQUEST_SIZE:
        raise SpeedtestProtocolError(f"request must be {REQUEST_SIZE} bytes, got {len(data)}")
    magic, mode, length = _REQUEST.unpack(data)
    if magic != MAGIC:
        raise SpeedtestProtocolError("bad magic")
    if mode not in (UPLOAD, DOWNLOAD) or not 1 <= length <= MAX_LENGTH:
        raise SpeedtestProtocolError("bad mode or length")
    return Request(mode, length)


def encode_count(count: int) -> bytes:
    return _COUNT.pack(count)


def decode_count(data: bytes) -> int:
    """Raises SpeedtestProtocolError unless ``data`` is exactly 8 bytes."""
    if len(data) != COUNT_SIZE:
        raise SpeedtestProtocolError(f"count must be {COUNT_SIZE} bytes, got {len(data)}")
    return int(_COUNT.unpack(data)[0])
