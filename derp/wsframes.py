"""WebSocket frames (RFC 6455 section 5) for a byte stream, sans-IO.

Why not wsproto's ``FrameProtocol``: it copies every payload four or five
times (buffer slice, mask copy, ``bytes()``, message assembly), which showed
as the largest cost of the WebSocket transport.  This codec does only what a
byte stream over binary messages needs, with one copy per direction:

- ``encode_data`` / ``encode_control`` build one frame (masked with a fresh
  random key when ``mask``, as RFC 6455 requires of clients).
- ``FrameDecoder.feed(data)`` consumes bytes in any split and returns
  ``(payload, events)``: the binary payload bytes that arrived (partial frames
  included -- a byte stream does not need message boundaries) and the
  control events (``Ping``, ``Pong``, ``Close``) in order.  The decoder
  remembers where it is inside a frame, so a frame may arrive one byte at a
  time.

Theory of operation of the decoder: two states, HEADER (need 2..14 bytes to
know the opcode, mask bit, length and masking key) and PAYLOAD (``_left``
bytes of the current frame still to come; data frames are unmasked and
emitted as they arrive, control frames are collected whole, at most 125
bytes).  Every violation raises ``WebSocketProtocolError`` with the close
code to send: a text message (1003), reserved bits or opcodes, a control
frame that is fragmented or too long, the wrong masking for our side, a data
frame in a fragmented control sequence, or a malformed Close payload (1002).
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from enum import IntEnum

_XOR_TABLES = [bytes(a ^ b for a in range(256)) for b in range(256)]
_H2 = struct.Struct("!BBH")
_H8 = struct.Struct("!BBQ")
MAX_CONTROL = 125
_VALID_CLOSE = frozenset((1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014))


class Opcode(IntEnum):
    CONTINUATION = 0x0
    TEXT = 0x1
    BINARY = 0x2
    CLOSE = 0x8
    PING = 0x9
    PONG = 0xA


class CloseCode(IntEnum):
    NORMAL = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    UNSUPPORTED_DATA = 1003
    NO_STATUS = 1005  # never sent: "the Close frame had no code"


class WebSocketProtocolError(Exception):
    """The peer broke RFC 6455; ``code`` is the close code to answer with."""

    def __init__(self, message: str, code: int = CloseCode.PROTOCOL_ERROR) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class Ping:
    payload: bytes


@dataclass(frozen=True, slots=True)
class Pong:
    payload: bytes


@dataclass(frozen=True, slots=True)
class Close:
    code: int
    reason: str


ControlEvent = Ping | Pong | Close


def mask(data: bytes | bytearray | memoryview, key: bytes, offset: int = 0) -> bytearray:
    """XOR ``data`` with the 4-byte ``key`` (starting ``offset`` bytes into the key cycle)."""
    out = bytearray(data)
    if out:
        for i in range(4):
            table = _XOR_TABLES[key[(i + offset) % 4]]
            out[i::4] = out[i::4].translate(table)
    return out


def _header(opcode: int, length: int, masked: bool) -> bytes:
    first = 0x80 | opcode
    bit = 0x80 if masked else 0
    if length <= MAX_CONTROL:
        return bytes((first, bit | length))
    if length < 1 << 16:
        return _H2.pack(first, bit | 126, length)
    return _H8.pack(first, bit | 127, length)


def _frame(opcode: int, payload: bytes | bytearray | memoryview, masked: bool) -> bytes:
    head = _header(opcode, len(payload), masked)
    if not masked:
        return b"".join((head, payload))
    key = os.urandom(4)
    return b"".join((head, key, mask(payload, key)))


def encode_data(payload: bytes | bytearray | memoryview, *, masked: bool) -> bytes:
    """One complete binary frame carrying ``payload``."""
    return _frame(Opcode.BINARY, payload, masked)


def encode_control(event: ControlEvent, *, masked: bool) -> bytes:
    """A Ping, Pong or Close frame.

    Raises:
        ValueError: the payload would exceed 125 bytes.
    """
    if isinstance(event, Close):
        payload = b"" if event.code == CloseCode.NO_STATUS else (
            struct.pack("!H", event.code) + event.reason.encode()[:MAX_CONTROL - 2]
        )
        opcode = Opcode.CLOSE
    else:
        payload = event.payload
        opcode = Opcode.PING if isinstance(event, Ping) else Opcode.PONG
    if len(payload) > MAX_CONTROL:
        raise ValueError("control frame payload over 125 bytes")
    return _frame(opcode, payload, masked)


def _parse_close(payload: bytes) -> Close:
    if not payload:
        return Close(CloseCode.NO_STATUS, "")
    if len(payload) == 1:
        raise WebSocketProtocolError("Close payload of 1 byte")
    code = int.from_bytes(payload[:2], "big")
    if not (code in _VALID_CLOSE or 3000 <= code <= 4999):
        raise WebSocketProtocolError(f"invalid close code {code}")
    try:
        reason = payload[2:].decode("utf-8")
    except UnicodeDecodeError:
        raise WebSocketProtocolError("Close reason is not UTF-8", 1007) from None
    return Close(code, reason)


class FrameDecoder:
    """Incremental decoder of the peer's frames.

    Args:
        expect_masked: True on the server (client frames must be masked),
            False on the client (server frames must not be).
    """

    def __init__(self, *, expect_masked: bool) -> None:
        self._expect_masked = expect_masked
        self._buffer = bytearray()
        self._pos = 0
        # Current frame (PAYLOAD state when _in_frame).
        self._in_frame = False
        self._opcode = 0
        self._key: bytes | None = None
        self._left = 0
        self._done = 0  # payload bytes of this frame already consumed
        self._control = bytearray()
        self._fin = True
        self._in_message = False  # inside a fragmented binary message
        self.closed = False  # a Close frame was decoded; nothing follows

    def feed(self, data: bytes | bytearray) -> tuple[bytearray, list[ControlEvent]]:
        """Decode ``data``; returns the binary payload bytes and control events.

        Raises:
            WebSocketProtocolError: the peer broke RFC 6455.
        """
        out = bytearray()
        events: list[ControlEvent] = []
        if self.closed:
            return out, events
        if self._pos == len(self._buffer):
            self._buffer = bytearray(data)
            self._pos = 0
        else:
            self._buffer += data
        buf = self._buffer
        view = memoryview(buf)
        try:
            while not self.closed:
                if not self._in_frame and not self._parse_header(buf):
                    break
                avail = min(self._left, len(buf) - self._pos)
                if avail == 0 and self._left:
                    break
                chunk = view[self._pos : self._pos + avail]
                if self._key is not None:
                    piece: bytes | bytearray | memoryview = mask(chunk, self._key, self._done)
                else:
                    piece = chunk
                self._pos += avail
                self._left -= avail
                self._done += avail
                if self._opcode in (Opcode.BINARY, Opcode.CONTINUATION):
                    out += piece
                else:
                    self._control += piece
                if self._left == 0:
                    self._in_frame = False
                    if self._opcode >= Opcode.CLOSE:
                        events.append(self._finish_control())
        finally:
            view.release()
        if self._pos == len(buf):
            self._buffer = bytearray()
            self._pos = 0
        elif self._pos > 1 << 16:
            del self._buffer[: self._pos]
            self._pos = 0
        return out, events

    def _finish_control(self) -> ControlEvent:
        payload = bytes(self._control)
        self._control = bytearray()
        if self._opcode == Opcode.PING:
            return Ping(payload)
        if self._opcode == Opcode.PONG:
            return Pong(payload)
        self.closed = True
        return _parse_close(payload)

    def _parse_header(self, buf: bytearray) -> bool:
        pos = self._pos
        have = len(buf) - pos
        if have < 2:
            return False
        b0, b1 = buf[pos], buf[pos + 1]
        masked = bool(b1 & 0x80)
        length = b1 & 0x7F
        need = 2 + (2 if length == 126 else 8 if length == 127 else 0) + (4 if masked else 0)
        if have < need:
            return False
        if b0 & 0x70:
            raise WebSocketProtocolError("reserved bits set (no extension was agreed)")
        opcode = b0 & 0x0F
        fin = bool(b0 & 0x80)
        if opcode not in Opcode._value2member_map_:
            raise WebSocketProtocolError(f"reserved opcode {opcode:#x}")
        if masked != self._expect_masked:
            raise WebSocketProtocolError("frame masking is wrong for this side")
        at = pos + 2
        if length == 126:
            length = int.from_bytes(buf[at : at + 2], "big")
            at += 2
        elif length == 127:
            length = int.from_bytes(buf[at : at + 8], "big")
            if length >> 63:
                raise WebSocketProtocolError("frame length has the top bit set")
            at += 8
        if opcode >= Opcode.CLOSE:
            if not fin or length > MAX_CONTROL:
                raise WebSocketProtocolError("control frame fragmented or over 125 bytes")
        elif opcode == Opcode.TEXT:
            raise WebSocketProtocolError(
                "text message on a byte stream", CloseCode.UNSUPPORTED_DATA
            )
        elif opcode == Opcode.BINARY:
            if self._in_message:
                raise WebSocketProtocolError("new message inside a fragmented message")
            self._in_message = not fin
        else:  # CONTINUATION
            if not self._in_message:
                raise WebSocketProtocolError("continuation frame outside a message")
            self._in_message = not fin
        self._key = bytes(buf[at : at + 4]) if masked else None
        self._pos = at + (4 if masked else 0)
        self._opcode = opcode
        self._left = length
        self._done = 0
        self._in_frame = True
        return True
