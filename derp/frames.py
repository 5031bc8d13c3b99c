"""DERP v2 frame codec, sans-IO: bytes in, frame events out; frame events in, bytes out.

Theory of operation
-------------------
Every DERP frame is ``type (1) | length (4, big-endian) | payload (length)``.
``FrameDecoder`` keeps one ``bytearray`` buffer and a read offset.  ``feed()``
appends bytes (and first discards the remainder of an unknown frame being
skipped); ``next_frame()`` looks at the 5-byte header and, *before* waiting for
or buffering the payload, checks the declared length against the decoder's
``max_frame_size`` and the frame type's own limit.  A complete payload is parsed
into a frozen dataclass; an unknown type is skipped (counted in ``skipped``)
without buffering its payload.  Any malformed input raises
``DerpProtocolError(reason)`` and the decoder stays failed: every later call
raises the same error.

Encoding is plain functions.  ``encode(frame)`` handles every frame type; the
hot relay path (SendPacket in, RecvPacket out with the same data behind a new
32-byte key) uses ``recv_packet_header`` so a writer can hand
``[header, data, header, data, ...]`` to one ``b"".join`` and one ``send_all``,
copying each payload once.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from typing import ClassVar, Final

from derp.errors import DerpProtocolError, ProtocolErrorReason

# "DERP" followed by the UTF-8 key emoji (U+1F511).
MAGIC: Final = b"DERP\xf0\x9f\x94\x91"
PROTOCOL_VERSION: Final = 2
KEY_LEN: Final = 32
NONCE_LEN: Final = 24
FRAME_HEADER_LEN: Final = 5
# Largest relayed packet (the data after the key prefix).
MAX_PACKET_SIZE: Final = 64 << 10
# Largest ClientInfo / ServerInfo JSON.
MAX_INFO_LEN: Final = 1 << 20
# A client refuses frames over this size; it is also the decoder's default.
MAX_FRAME_SIZE: Final = 1 << 20
PING_LEN: Final = 8
MAX_PING_PAYLOAD: Final = 1000
# Box overhead of NaCl crypto_box (Poly1305 tag).
BOX_OVERHEAD: Final = 16

_HDR: Final = struct.Struct(">BI")
_U32X2: Final = struct.Struct(">II")


class FrameType(IntEnum):
    """Every DERP v2 frame type, with its payload layout."""

    SERVER_KEY = 0x01  # server->client: MAGIC (8) | server public key (32) | future bytes
    CLIENT_INFO = 0x02  # client->server: client key (32) | nonce (24) | box(JSON)
    SERVER_INFO = 0x03  # server->client: nonce (24) | box(JSON)
    SEND_PACKET = 0x04  # client->server: destination key (32) | packet
    RECV_PACKET = 0x05  # server->client: source key (32) | packet
    KEEP_ALIVE = 0x06  # server->client: empty
    NOTE_PREFERRED = 0x07  # client->server: 1 byte, 0x01 = this is my home relay
    PEER_GONE = 0x08  # server->client: key (32) | reason (1)
    PEER_PRESENT = 0x09  # server->watcher: key (32) [| IP (16) | port (2, BE) [| flags (1)]]
    FORWARD_PACKET = 0x0A  # mesh->server: source key (32) | destination key (32) | packet
    WATCH_CONNS = 0x10  # mesh->server: empty; needs a valid mesh key
    CLOSE_PEER = 0x11  # mesh->server: key (32); needs a valid mesh key
    PING = 0x12  # either way: 8 bytes (a server accepts 8-1000, echoes the first 8)
    PONG = 0x13  # either way: the 8 ping bytes
    HEALTH = 0x14  # server->client: UTF-8 problem text, empty clears it
    RESTARTING = 0x15  # server->client: reconnect-in ms (4, BE) | try-for ms (4, BE)


class PeerGoneReason(IntEnum):
    """Why a PeerGone frame was sent."""

    DISCONNECTED = 0x00  # the peer was connected here and left
    NOT_HERE = 0x01  # the destination of a packet is not connected here


class PeerPresentFlags(IntEnum):
    """Flag bits of the optional PeerPresent flags byte."""

    REGULAR = 1 << 0
    MESH_PEER = 1 << 1
    PROBER = 1 << 2
    NOT_IDEAL = 1 << 3


@dataclass(frozen=True, slots=True)
class ServerKey:
    key: bytes
    extra: bytes = b""
    TYPE: ClassVar[FrameType] = FrameType.SERVER_KEY


@dataclass(frozen=True, slots=True)
class ClientInfo:
    key: bytes
    nonce: bytes
    box: bytes
    TYPE: ClassVar[FrameType] = FrameType.CLIENT_INFO


@dataclass(frozen=True, slots=True)
class ServerInfo:
    nonce: bytes
    box: bytes
    TYPE: ClassVar[FrameType] = FrameType.SERVER_INFO


@dataclass(frozen=True, slots=True)
class SendPacket:
    dst: bytes
    data: bytes
    TYPE: ClassVar[FrameType] = FrameType.SEND_PACKET


@dataclass(frozen=True, slots=True)
class RecvPacket:
    src: bytes
    data: bytes
    TYPE: ClassVar[FrameType] = FrameType.RECV_PACKET


@dataclass(frozen=True, slots=True)
class KeepAlive:
    TYPE: ClassVar[FrameType] = FrameType.KEEP_ALIVE


@dataclass(frozen=True, slots=True)
class NotePreferred:
    preferred: bool
    TYPE: ClassVar[FrameType] = FrameType.NOTE_PREFERRED


@dataclass(frozen=True, slots=True)
class PeerGone:
    key: bytes
    reason: int = PeerGoneReason.DISCONNECTED
    TYPE: ClassVar[FrameType] = FrameType.PEER_GONE


@dataclass(frozen=True, slots=True)
class PeerPresent:
    """A peer is connected to the sending relay.

    ``ip`` is empty or 16 bytes (IPv6, or IPv4-mapped); ``port`` and ``flags``
    are only on the wire when ``ip`` is present.
    """

    key: bytes
    ip: bytes = b""
    port: int = 0
    flags: int = 0
    TYPE: ClassVar[FrameType] = FrameType.PEER_PRESENT


@dataclass(frozen=True, slots=True)
class ForwardPacket:
    src: bytes
    dst: bytes
    data: bytes
    TYPE: ClassVar[FrameType] = FrameType.FORWARD_PACKET


@dataclass(frozen=True, slots=True)
class WatchConns:
    TYPE: ClassVar[FrameType] = FrameType.WATCH_CONNS


@dataclass(frozen=True, slots=True)
class ClosePeer:
    key: bytes
    TYPE: ClassVar[FrameType] = FrameType.CLOSE_PEER


@dataclass(frozen=True, slots=True)
class Ping:
    data: bytes
    TYPE: ClassVar[FrameType] = FrameType.PING


@dataclass(frozen=True, slots=True)
class Pong:
    data: bytes
    TYPE: ClassVar[FrameType] = FrameType.PONG


@dataclass(frozen=True, slots=True)
class Health:
    problem: str
    TYPE: ClassVar[FrameType] = FrameType.HEALTH


@dataclass(frozen=True, slots=True)
class Restarting:
    reconnect_in_ms: int
    try_for_ms: int
    TYPE: ClassVar[FrameType] = FrameType.RESTARTING


Frame = (
    ServerKey
    | ClientInfo
    | ServerInfo
    | SendPacket
    | RecvPacket
    | KeepAlive
    | NotePreferred
    | PeerGone
    | PeerPresent
    | ForwardPacket
    | WatchConns
    | ClosePeer
    | Ping
    | Pong
    | Health
    | Restarting
)


# ---------------------------------------------------------------- encoding


def _check_key(key: bytes, what: str = "key") -> None:
    if len(key) != KEY_LEN:
        raise ValueError(f"{what} must be {KEY_LEN} bytes, got {len(key)}")


def _check_packet(data: bytes) -> None:
    if len(data) > MAX_PACKET_SIZE:
        raise ValueError(f"packet of {len(data)} bytes exceeds {MAX_PACKET_SIZE}")


def frame_header(ftype: int, length: int) -> bytes:
    """The 5-byte header of a frame with a ``length``-byte payload."""
    return _HDR.pack(ftype, length)


def encode_send_packet(dst: bytes, data: bytes) -> bytes:
    """Encode SendPacket(dst, data), copying ``data`` once.

    Raises:
        ValueError: ``dst`` is not 32 bytes or ``data`` exceeds MAX_PACKET_SIZE.
    """
    _check_key(dst, "dst")
    _check_packet(data)
    return b"".join((_HDR.pack(FrameType.SEND_PACKET, KEY_LEN + len(data)), dst, data))


def recv_packet_header(src: bytes, length: int) -> bytes:
    """Header plus source key of a RecvPacket carrying ``length`` bytes (no checks)."""
    return _HDR.pack(FrameType.RECV_PACKET, KEY_LEN + length) + src


def encode_recv_packet(src: bytes, data: bytes) -> bytes:
    """Encode RecvPacket(src, data), copying ``data`` once.

    Raises:
        ValueError: ``src`` is not 32 bytes or ``data`` exceeds MAX_PACKET_SIZE.
    """
    _check_key(src, "src")
    _check_packet(data)
    return b"".join((_HDR.pack(FrameType.RECV_PACKET, KEY_LEN + len(data)), src, data))


def forward_packet_header(src: bytes, dst: bytes, length: int) -> bytes:
    """Header plus both keys of a ForwardPacket carrying ``length`` bytes (no checks)."""
    return _HDR.pack(FrameType.FORWARD_PACKET, 2 * KEY_LEN + length) + src + dst


def encode_forward_packet(src: bytes, dst: bytes, data: bytes) -> bytes:
    """Encode ForwardPacket(src, dst, data), copying ``data`` once.

    Raises:
        ValueError: a key is not 32 bytes or ``data`` exceeds MAX_PACKET_SIZE.
    """
    _check_key(src, "src")
    _check_key(dst, "dst")
    _check_packet(data)
    return b"".join(
        (_HDR.pack(FrameType.FORWARD_PACKET, 2 * KEY_LEN + len(data)), src, dst, data)
    )


def _payload(frame: Frame) -> bytes:
    if isinstance(frame, ServerKey):
        _check_key(frame.key)
        return MAGIC + frame.key + frame.extra
    if isinstance(frame, ClientInfo):
        _check_key(frame.key)
        if len(frame.nonce) != NONCE_LEN:
            raise ValueError("nonce must be 24 bytes")
        return frame.key + frame.nonce + frame.box
    if isinstance(frame, ServerInfo):
        if len(frame.nonce) != NONCE_LEN:
            raise ValueError("nonce must be 24 bytes")
        return frame.nonce + frame.box
    if isinstance(frame, SendPacket):
        _check_key(frame.dst, "dst")
        _check_packet(frame.data)
        return frame.dst + frame.data
    if isinstance(frame, RecvPacket):
        _check_key(frame.src, "src")
        _check_packet(frame.data)
        return frame.src + frame.data
    if isinstance(frame, KeepAlive | WatchConns):
        return b""
    if isinstance(frame, NotePreferred):
        return b"\x01" if frame.preferred else b"\x00"
    if isinstance(frame, PeerGone):
        _check_key(frame.key)
        return frame.key + bytes((frame.reason,))
    if isinstance(frame, PeerPresent):
        _check_key(frame.key)
        if not frame.ip:
            return frame.key
        if len(frame.ip) != 16:
            raise ValueError("PeerPresent ip must be 16 bytes")
        return frame.key + frame.ip + struct.pack(">HB", frame.port, frame.flags)
    if isinstance(frame, ForwardPacket):
        _check_key(frame.src, "src")
        _check_key(frame.dst, "dst")
        _check_packet(frame.data)
        return frame.src + frame.dst + frame.data
    if isinstance(frame, ClosePeer):
        _check_key(frame.key)
        return frame.key
    if isinstance(frame, Ping | Pong):
        if len(frame.data) != PING_LEN:
            raise ValueError("ping data must be 8 bytes")
        return frame.data
    if isinstance(frame, Health):
        return frame.problem.encode()
    if isinstance(frame, Restarting):
        return _U32X2.pack(frame.reconnect_in_ms, frame.try_for_ms)
    raise TypeError(f"not a DERP frame: {frame!r}")


def encode(frame: Frame) -> bytes:
    """Encode any frame to its wire bytes.

    Raises:
        ValueError: a field has the wrong size (keys 32 bytes, nonces 24, ping 8,
            packets at most MAX_PACKET_SIZE).
        TypeError: ``frame`` is not a DERP frame.
    """
    payload = _payload(frame)
    return _HDR.pack(frame.TYPE, len(payload)) + payload


# ---------------------------------------------------------------- decoding

_Parser = Callable[[bytes], Frame]


def _need(payload: bytes, n: int) -> None:
    if len(payload) < n:
        raise DerpProtocolError(
            ProtocolErrorReason.SHORT_PAYLOAD, f"need {n} bytes, got {len(payload)}"
        )


def _p_server_key(p: bytes) -> Frame:
    _need(p, len(MAGIC) + KEY_LEN)
    if p[:8] != MAGIC:
        raise DerpProtocolError(ProtocolErrorReason.BAD_MAGIC)
    return ServerKey(p[8:40], p[40:])


def _p_client_info(p: bytes) -> Frame:
    _need(p, KEY_LEN + NONCE_LEN)
    return ClientInfo(p[:32], p[32:56], p[56:])


def _p_server_info(p: bytes) -> Frame:
    _need(p, NONCE_LEN)
    return ServerInfo(p[:24], p[24:])


def _p_keep_alive(p: bytes) -> Frame:
    return KeepAlive()


def _p_note_preferred(p: bytes) -> Frame:
    _need(p, 1)
    return NotePreferred(p[0] != 0)


def _p_peer_gone(p: bytes) -> Frame:
    _need(p, KEY_LEN)
    return PeerGone(p[:32], p[32] if len(p) > 32 else PeerGoneReason.DISCONNECTED)


def _p_peer_present(p: bytes) -> Frame:
    _need(p, KEY_LEN)
    if len(p) < KEY_LEN + 18:
        return PeerPresent(p[:32])
    port = int.from_bytes(p[48:50], "big")
    flags = p[50] if len(p) > 50 else 0
    return PeerPresent(p[:32], p[32:48], port, flags)


def _p_watch_conns(p: bytes) -> Frame:
    return WatchConns()


def _p_close_peer(p: bytes) -> Frame:
    _need(p, KEY_LEN)
    return ClosePeer(p[:32])


def _p_ping(p: bytes) -> Frame:
    _need(p, PING_LEN)
    return Ping(p[:8])


def _p_pong(p: bytes) -> Frame:
    _need(p, PING_LEN)
    return Pong(p[:8])


def _p_health(p: bytes) -> Frame:
    try:
        return Health(p.decode())
    except UnicodeDecodeError:
        raise DerpProtocolError(ProtocolErrorReason.BAD_UTF8, "Health text is not UTF-8") from None


def _p_restarting(p: bytes) -> Frame:
    _need(p, 8)
    a, b = _U32X2.unpack_from(p)
    return Restarting(a, b)


# Parsers for frames whose payload is copied whole; the packet frames are
# parsed in place in FrameDecoder.next_frame for speed.
_PARSERS: Final[dict[int, _Parser]] = {
    FrameType.SERVER_KEY: _p_server_key,
    FrameType.CLIENT_INFO: _p_client_info,
    FrameType.SERVER_INFO: _p_server_info,
    FrameType.KEEP_ALIVE: _p_keep_alive,
    FrameType.NOTE_PREFERRED: _p_note_preferred,
    FrameType.PEER_GONE: _p_peer_gone,
    FrameType.PEER_PRESENT: _p_peer_present,
    FrameType.WATCH_CONNS: _p_watch_conns,
    FrameType.CLOSE_PEER: _p_close_peer,
    FrameType.PING: _p_ping,
    FrameType.PONG: _p_pong,
    FrameType.HEALTH: _p_health,
    FrameType.RESTARTING: _p_restarting,
}

# Per-type payload limits, checked from the header before the payload is buffered.
_MAX_PAYLOAD: Final[dict[int, int]] = {
    FrameType.SEND_PACKET: KEY_LEN + MAX_PACKET_SIZE,
    FrameType.RECV_PACKET: KEY_LEN + MAX_PACKET_SIZE,
    FrameType.FORWARD_PACKET: 2 * KEY_LEN + MAX_PACKET_SIZE,
    FrameType.CLIENT_INFO: KEY_LEN + NONCE_LEN + BOX_OVERHEAD + MAX_INFO_LEN,
    FrameType.SERVER_INFO: NONCE_LEN + BOX_OVERHEAD + MAX_INFO_LEN,
    FrameType.PING: MAX_PING_PAYLOAD,
    FrameType.PONG: MAX_PING_PAYLOAD,
    FrameType.NOTE_PREFERRED: 1,
    FrameType.CLOSE_PEER: KEY_LEN,
    FrameType.RESTARTING: 8 + 1024,
    FrameType.PEER_GONE: KEY_LEN + 1,
    FrameType.PEER_PRESENT: KEY_LEN + 19,
    FrameType.SERVER_KEY: len(MAGIC) + KEY_LEN + 1024,
}

_SEND: Final = int(FrameType.SEND_PACKET)
_RECV: Final = int(FrameType.RECV_PACKET)
_FORWARD: Final = int(FrameType.FORWARD_PACKET)


class FrameDecoder:
    """Incremental DERP frame decoder.

    Feed bytes in any split with ``feed()``; take frames with ``next_frame()``
    until it returns None (more data needed).

    Attributes:
        max_frame_size: frames declaring a longer payload are rejected.
        skipped: how many frames of unknown type were skipped.
    """

    __slots__ = ("_buf", "_error", "_pos", "_skip", "max_frame_size", "skipped")

    def __init__(self, max_frame_size: int = MAX_FRAME_SIZE) -> None:
        self.max_frame_size = max_frame_size
        self.skipped = 0
        self._buf = bytearray()
        self._pos = 0  # start of unread data in _buf
        self._skip = 0  # payload bytes of a skipped frame still to discard
        self._error: DerpProtocolError | None = None

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as frames."""
        return len(self._buf) - self._pos

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Add received bytes.

        Raises:
            DerpProtocolError: the decoder already failed.
        """
        if self._error is not None:
            raise self._error
        if self._skip:
            n = min(self._skip, len(data))
            self._skip -= n
            data = memoryview(data)[n:]
        if not data:
            return
        if self._pos:
            # Deleting from the front of a bytearray is cheap in CPython.
            del self._buf[: self._pos]
            self._pos = 0
        self._buf += data

    def _fail(self, reason: ProtocolErrorReason, detail: str = "") -> DerpProtocolError:
        self._error = DerpProtocolError(reason, detail)
        return self._error

    def next_frame(self) -> Frame | None:
        """Return the next complete frame, or None if more bytes are needed.

        Raises:
            DerpProtocolError: the input is malformed (the reason says how).
        """
        if self._error is not None:
            raise self._error
        buf = self._buf
        while True:
            pos = self._pos
            avail = len(buf) - pos
            if avail < FRAME_HEADER_LEN:
                return None
            ftype, length = _HDR.unpack_from(buf, pos)
            if length > self.max_frame_size:
                raise self._fail(
                    ProtocolErrorReason.FRAME_TOO_LARGE, f"type {ftype:#x} declares {length} bytes"
                )
            limit = _MAX_PAYLOAD.get(ftype)
            if limit is not None and length > limit:
                reason = (
                    ProtocolErrorReason.PACKET_TOO_LARGE
                    if limit > MAX_PACKET_SIZE
                    else ProtocolErrorReason.FRAME_TOO_LARGE
                )
                raise self._fail(reason, f"type {ftype:#x} declares {length} bytes")
            start = pos + FRAME_HEADER_LEN
            end = start + length
            if ftype in (_SEND, _RECV, _FORWARD):
                if avail - FRAME_HEADER_LEN < length:
                    return None
                nkeys = 2 if ftype == _FORWARD else 1
                if length < nkeys * KEY_LEN:
                    raise self._fail(
                        ProtocolErrorReason.SHORT_PAYLOAD, f"packet frame of {length} bytes"
                    )
                self._pos = end
                k1 = bytes(buf[start : start + KEY_LEN])
                with memoryview(buf) as mv:
                    if nkeys == 1:
                        data = mv[start + KEY_LEN : end].tobytes()
                        return SendPacket(k1, data) if ftype == _SEND else RecvPacket(k1, data)
                    k2 = mv[start + KEY_LEN : start + 2 * KEY_LEN].tobytes()
                    return ForwardPacket(k1, k2, mv[start + 2 * KEY_LEN : end].tobytes())
            parser = _PARSERS.get(ftype)
            if parser is None:
                # Unknown type: drop what is here, discard the rest as it arrives.
                self.skipped += 1
                have = min(avail - FRAME_HEADER_LEN, length)
                self._pos = start + have
                self._skip = length - have
                if self._skip:
                    return None
                continue
            if avail - FRAME_HEADER_LEN < length:
                return None
            self._pos = end
            try:
                return parser(bytes(buf[start:end]))
            except DerpProtocolError as exc:
                self._error = exc
                raise


def decode_all(data: bytes, max_frame_size: int = MAX_FRAME_SIZE) -> list[Frame]:
    """Decode every complete frame in ``data`` (a convenience for tests and tools).

    Raises:
        DerpProtocolError: the input is malformed.
    """
    dec = FrameDecoder(max_frame_size)
    dec.feed(data)
    out: list[Frame] = []
    while (frame := dec.next_frame()) is not None:
        out.append(frame)
    return out
