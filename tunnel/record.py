"""The record layer: ChaCha20-Poly1305 records with counter nonces.

Theory of operation
-------------------
After a handshake each side holds a ``Keypair``: one key to seal what it sends
and one to open what it receives (never the same key both ways). Every record
is::

    type 0x04 (1) | reserved (3) | receiver index (4, BE) | counter (8, LE) | ciphertext+tag

The 64-bit counter is the AEAD nonce (four zero bytes then the counter,
little-endian, as in Noise/WireGuard); the 16-byte header is the associated
data, so it cannot be altered either. A sender never reuses a counter under
one key; after ``Limits.reject_after_messages`` the keypair refuses to seal.
The receiver keeps a sliding window of ``REPLAY_WINDOW`` counters (a Python
int used as a bitmap: no per-bit loops): a counter older than the window or
already seen is rejected *before* decryption is attempted and marked seen
only *after* the tag verifies, so forgeries cannot poison the window.

AEAD choice, by measurement on this machine (64 KiB records, one core):
cryptography's ChaCha20Poly1305 ~1.7 GB/s, PyNaCl SecretBox ~0.85 GB/s, and
at 1 KiB 486 vs 131 MB/s. ChaCha20-Poly1305 is also the AEAD of the Noise
pattern we follow, so the handshake and records share one primitive.
AES-256-GCM is faster still with AES-NI, but ChaCha20 stays fast on machines
without it and keeps us on the Noise/WireGuard suite.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from tunnel.errors import LimitError, ProtocolErrorReason, RecordError
from tunnel.handshake import MSG_RECORD, TransportKeys

HEADER_LEN = 16
TAG_LEN = 16
RECORD_OVERHEAD = HEADER_LEN + TAG_LEN
REPLAY_WINDOW = 2048
_WINDOW_MASK = (1 << REPLAY_WINDOW) - 1
_HEADER = struct.Struct(">B3xI")
_COUNTER = struct.Struct("<Q")


@dataclass(frozen=True)
class Limits:
    """When keys must be replaced (soft: start a rekey) or retired (hard)."""

    rekey_after_messages: int = 1 << 60
    rekey_after_bytes: int = 1 << 36
    rekey_after_time: float = 120.0
    reject_after_messages: int = (1 << 64) - (1 << 13) - 1
    reject_after_time: float = 180.0


class ReplayWindow:
    """Which of the last ``REPLAY_WINDOW`` counters have been seen."""

    def __init__(self) -> None:
        self.top = -1  # highest counter accepted so far
        self.bits = 0  # bit i set = counter (top - i) seen

    def check(self, counter: int) -> bool:
        """True if ``counter`` is new and inside the window (does not record it)."""
        if counter > self.top:
            return True
        distance = self.top - counter
        if distance >= REPLAY_WINDOW:
            return False
        return not (self.bits >> distance) & 1

    def update(self, counter: int) -> None:
        """Record ``counter`` as seen (call only after the record authenticated)."""
        if counter > self.top:
            shift = counter - self.top
            self.bits = ((self.bits << shift) | 1) & _WINDOW_MASK if shift < REPLAY_WINDOW else 1
            self.top = counter
        else:
            self.bits |= 1 << (self.top - counter)


def record_receiver_index(record: bytes | bytearray) -> int:
    """Return the receiver index in a record header.

    Raises:
        RecordError: too short to be a record, or not a record.
    """
    if len(record) < RECORD_OVERHEAD or record[0] != MSG_RECORD:
        raise RecordError(ProtocolErrorReason.RECORD_SHORT, f"{len(record)} bytes")
    return int(_HEADER.unpack_from(record)[1])


class Keypair:
    """One direction-separated pair of record keys, with counters and limits.

    Attributes:
        keys: what the handshake produced.
        created: the time (caller's clock) the keys were made.
        send_counter: next counter to seal with.
        bytes_sent: plaintext bytes sealed so far.
    """

    def __init__(self, keys: TransportKeys, created: float, limits: Limits | None = None) -> None:
        self.keys = keys
        self.created = created
        self.limits = limits or Limits()
        self._seal = ChaCha20Poly1305(keys.send_key)
        self._open = ChaCha20Poly1305(keys.recv_key)
        self.send_counter = 0
        self.bytes_sent = 0
        self.window = ReplayWindow()
        self._header = _HEADER.pack(MSG_RECORD, keys.remote_index)

    def needs_rekey(self, now: float) -> bool:
        """True once a soft limit (messages, bytes or age) is reached."""
        lim = self.limits
        return (
            self.send_counter >= lim.rekey_after_messages
            or self.bytes_sent >= lim.rekey_after_bytes
            or now >= self.created + lim.rekey_after_time
        )

    def expired(self, now: float) -> bool:
        """True once a hard limit is reached: the keypair must not be used."""
        lim = self.limits
        return (
            self.send_counter >= lim.reject_after_messages
            or now >= self.created + lim.reject_after_time
        )

    def seal(self, plaintext: bytes | bytearray) -> bytearray:
        """Encrypt one record.

        Raises:
            LimitError: the counter is exhausted.
        """
        counter = self.send_counter
        if counter >= self.limits.reject_after_messages:
            raise LimitError("record counter exhausted; rekey required")
        self.send_counter = counter + 1
        self.bytes_sent += len(plaintext)
        header = self._header + _COUNTER.pack(counter)
        nonce = b"\x00\x00\x00\x00" + header[8:]
        # One buffer, ciphertext written in place after the header: no copy.
        out = bytearray(HEADER_LEN + len(plaintext) + TAG_LEN)
        out[:HEADER_LEN] = header
        self._seal.encrypt_into(nonce, plaintext, header, memoryview(out)[HEADER_LEN:])
        return out

    def open(self, record: bytes | bytearray) -> bytearray:
        """Decrypt and authenticate one record (its index was already matched).

        Raises:
            RecordError: short, replayed/too old (``record_replay``), or
                failing authentication (``record_auth``).
        """
        if len(record) < RECORD_OVERHEAD or record[0] != MSG_RECORD:
            raise RecordError(ProtocolErrorReason.RECORD_SHORT, f"{len(record)} bytes")
        (counter,) = _COUNTER.unpack_from(record, 8)
        if not self.window.check(counter):
            raise RecordError(ProtocolErrorReason.RECORD_REPLAY, f"counter {counter}")
        view = memoryview(record)
        header = view[:HEADER_LEN]
        nonce = b"\x00\x00\x00\x00" + record[8:16]
        plaintext = bytearray(len(record) - RECORD_OVERHEAD)
        try:
            self._open.decrypt_into(nonce, view[HEADER_LEN:], header, plaintext)
        except InvalidTag as exc:
            raise RecordError(ProtocolErrorReason.RECORD_AUTH, "tag check failed") from exc
        self.window.update(counter)
        return plaintext
