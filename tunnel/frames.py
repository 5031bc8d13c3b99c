"""Session frames: the plaintext inside one record (see PROTOCOL.md).

A record's plaintext is a *packet*: an 8-byte big-endian packet number, then
frames back to back until the end. An empty plaintext is a key confirmation
and carries no packet. Every multi-byte integer is big-endian. ``parse``
either returns the whole list of frames or raises ``ProtocolError`` (the
caller drops the packet and counts the reason); it never returns part of a
packet.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

from tunnel.errors import ProtocolError, ProtocolErrorReason

MAX_DATAGRAM = 65536  # a DERP packet holds at most 64 KiB
MAX_PLAINTEXT = MAX_DATAGRAM - 32  # minus record header (16) and tag (16)
PN_LEN = 8
STREAM_HEADER = 18  # type, sid, offset, flags, length
MAX_NAME = 255
MAX_ACK_RANGES = 64


class FrameType(IntEnum):
    PING = 0x01
    PONG = 0x02
    ACK = 0x03
    STREAM = 0x04
    OPEN = 0x05
    OPEN_OK = 0x06
    OPEN_REFUSED = 0x07
    RESET = 0x08
    STOP = 0x09
    MAX_STREAM_DATA = 0x0A
    MAX_DATA = 0x0B
    CLOSE = 0x0C


class ErrorCode(IntEnum):
    """Codes carried by OPEN_REFUSED, RESET, STOP and CLOSE."""

    CLOSED = 0  # the application closed the stream / session
    REFUSED = 1  # policy said no
    UNKNOWN_SERVICE = 2
    TOO_MANY_STREAMS = 3
    INTERNAL = 4
    CONNECT_FAILED = 5  # the service behind the stream could not be reached
    SESSION_ENDED = 6
    STOPPED = 7  # the reader went away (answer to STOP)
    TIMEOUT = 8
    PROTOCOL = 9


@dataclass(frozen=True, slots=True)
class Ping:
    token: int


@dataclass(frozen=True, slots=True)
class Pong:
    token: int


@dataclass(frozen=True, slots=True)
class Ack:
    ranges: tuple[tuple[int, int], ...]  # (first, last) inclusive, highest first


@dataclass(frozen=True, slots=True)
class StreamData:
    sid: int
    offset: int
    fin: bool
    data: bytes | memoryview  # a view into the decrypted record: no copy


@dataclass(frozen=True, slots=True)
class Open:
    sid: int
    window: int
    service: str


@dataclass(frozen=True, slots=True)
class OpenOk:
    sid: int
    window: int


@dataclass(frozen=True, slots=True)
class OpenRefused:
    sid: int
    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class Reset:
    sid: int
    code: int
    final_size: int
    reason: str


@dataclass(frozen=True, slots=True)
class Stop:
    sid: int
    code: int


@dataclass(frozen=True, slots=True)
class MaxStreamData:
    sid: int
    maximum: int


@dataclass(frozen=True, slots=True)
class MaxData:
    maximum: int


@dataclass(frozen=True, slots=True)
class Close:
    code: int
    reason: str


Frame = (
    Ping | Pong | Ack | StreamData | Open | OpenOk | OpenRefused | Reset | Stop
    | MaxStreamData | MaxData | Close
)

_Q = struct.Struct(">Q")
_STREAM = struct.Struct(">BIQBI")
_I = struct.Struct(">I")
_II = struct.Struct(">II")
_IQ = struct.Struct(">IQ")
_IH = struct.Struct(">IH")
_IHQ = struct.Struct(">IHQ")
_QQ = struct.Struct(">QQ")


def _text(s: str) -> bytes:
    b = s.encode("utf-8")[:MAX_NAME]
    return bytes([len(b)]) + b


def encode_pn(pn: int) -> bytes:
    return _Q.pack(pn)


def encode_ping(token: int) -> bytes:
    return bytes([FrameType.PING]) + _Q.pack(token)


def encode_pong(token: int) -> bytes:
    return bytes([FrameType.PONG]) + _Q.pack(token)


def encode_ack(ranges: list[tuple[int, int]]) -> bytes:
    """``ranges`` highest first, at most MAX_ACK_RANGES."""
    rs = ranges[:MAX_ACK_RANGES]
    return bytes([FrameType.ACK, len(rs)]) + b"".join(_QQ.pack(a, b) for a, b in rs)


def stream_header(sid: int, offset: int, fin: bool, length: int) -> bytes:
    return _STREAM.pack(FrameType.STREAM, sid, offset, 1 if fin else 0, length)


def encode_open(sid: int, window: int, service: str) -> bytes:
    return bytes([FrameType.OPEN]) + _II.pack(sid, window) + _text(service)


def encode_open_ok(sid: int, window: int) -> bytes:
    return bytes([FrameType.OPEN_OK]) + _II.pack(sid, window)


def encode_open_refused(sid: int, code: int, reason: str) -> bytes:
    return bytes([FrameType.OPEN_REFUSED]) + _IH.pack(sid, code) + _text(reason)


def encode_reset(sid: int, code: int, final_size: int, reason: str) -> bytes:
    return bytes([FrameType.RESET]) + _IHQ.pack(sid, code, final_size) + _text(reason)


def encode_stop(sid: int, code: int) -> bytes:
    return bytes([FrameType.STOP]) + _IH.pack(sid, code)


def encode_max_stream_data(sid: int, maximum: int) -> bytes:
    return bytes([FrameType.MAX_STREAM_DATA]) + _IQ.pack(sid, maximum)


def encode_max_data(maximum: int) -> bytes:
    return bytes([FrameType.MAX_DATA]) + _Q.pack(maximum)


def encode_close(code: int, reason: str) -> bytes:
    return bytes([FrameType.CLOSE]) + struct.pack(">H", code) + _text(reason)


class _Reader:
    __slots__ = ("buf", "pos")

    def __init__(self, buf: memoryview, pos: int) -> None:
        self.buf = buf
        self.pos = pos

    def take(self, n: int) -> memoryview:
        end = self.pos + n
        if end > len(self.buf):
            raise ProtocolError(
                ProtocolErrorReason.FRAME_TRUNCATED, f"need {n} bytes at {self.pos}"
            )
        out = self.buf[self.pos : end]
        self.pos = end
        return out

    def unpack(self, st: struct.Struct) -> tuple[int, ...]:
        end = self.pos + st.size
        if end > len(self.buf):
            raise ProtocolError(
                ProtocolErrorReason.FRAME_TRUNCATED, f"need {st.size} bytes at {self.pos}"
            )
        out = st.unpack_from(self.buf, self.pos)
        self.pos = end
        return out

    def text(self) -> str:
        n = self.take(1)[0]
        try:
            return bytes(self.take(n)).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ProtocolError(ProtocolErrorReason.FRAME_TEXT, "not UTF-8") from exc


def parse(packet: bytes | bytearray | memoryview) -> tuple[int, list[Frame]]:
    """Split a packet into its number and frames. STREAM data are views
    into ``packet`` (which must not be changed while they are in use).

    Raises:
        ProtocolError: truncated frame, unknown frame type, bad text.
    """
    if len(packet) < PN_LEN:
        raise ProtocolError(ProtocolErrorReason.PACKET_SHORT, f"{len(packet)} bytes")
    (pn,) = _Q.unpack_from(packet)
    packet = memoryview(packet)
    r = _Reader(packet, PN_LEN)
    frames: list[Frame] = []
    end = len(packet)
    while r.pos < end:
        kind = packet[r.pos]
        r.pos += 1
        if kind == FrameType.STREAM:
            sid, offset, flags, length = r.unpack(_STREAM_BODY)
            frames.append(StreamData(sid, offset, bool(flags & 1), r.take(length)))
        elif kind == FrameType.ACK:
            count = r.take(1)[0]
            ranges = []
            for _ in range(count):
                a, b = r.unpack(_QQ)
                if a > b:
                    raise ProtocolError(ProtocolErrorReason.ACK_RANGE, f"{a} > {b}")
                ranges.append((a, b))
            frames.append(Ack(tuple(ranges)))
        elif kind == FrameType.PING:
            frames.append(Ping(r.unpack(_Q)[0]))
        elif kind == FrameType.PONG:
            frames.append(Pong(r.unpack(_Q)[0]))
        elif kind == FrameType.OPEN:
            sid, window = r.unpack(_II)
            frames.append(Open(sid, window, r.text()))
        elif kind == FrameType.OPEN_OK:
            sid, window = r.unpack(_II)
            frames.append(OpenOk(sid, window))
        elif kind == FrameType.OPEN_REFUSED:
            sid, code = r.unpack(_IH)
            frames.append(OpenRefused(sid, code, r.text()))
        elif kind == FrameType.RESET:
            sid, code, final = r.unpack(_IHQ)
            frames.append(Reset(sid, code, final, r.text()))
        elif kind == FrameType.STOP:
            sid, code = r.unpack(_IH)
            frames.append(Stop(sid, code))
        elif kind == FrameType.MAX_STREAM_DATA:
            sid, maximum = r.unpack(_IQ)
            frames.append(MaxStreamData(sid, maximum))
        elif kind == FrameType.MAX_DATA:
            frames.append(MaxData(r.unpack(_Q)[0]))
        elif kind == FrameType.CLOSE:
            (code,) = r.unpack(_H)
            frames.append(Close(code, r.text()))
        else:
            raise ProtocolError(ProtocolErrorReason.FRAME_TYPE, f"unknown frame type {kind:#x}")
    return pn, frames


_STREAM_BODY = struct.Struct(">IQBI")
_H = struct.Struct(">H")
