"""The tunnel handshake: Noise IK over X25519, ChaCha20-Poly1305 and BLAKE2b.

Theory of operation
-------------------
This is the Noise Protocol Framework pattern IK (``Noise_IK_25519_ChaChaPoly_
BLAKE2b``, the shape WireGuard uses), sans-IO: functions take bytes and return
bytes and state objects, never touching a socket or a clock of their own::

    IK:
      <- s                      (the coordinator told the initiator rs)
      ...
      -> e, es, s, ss           initiation: payload = timestamp + instance id
      <- e, ee, se              response:   payload = instance id

Both messages are fixed-size (``INITIATION_SIZE``, ``RESPONSE_SIZE``); any
other length is ``HandshakeTruncatedError``. Each ``EncryptAndHash`` is an
AEAD over the running transcript hash, so flipping any bit fails with
``HandshakeAuthError``. The responder learns the initiator's static key from
the initiation and asks a callback whether it is acceptable (``UnknownPeer
Error`` if not). The initiation payload carries a 12-byte TAI64N-style
timestamp; the responder keeps the newest one per initiator static key and
rejects anything not newer (``HandshakeReplayError``), so a captured
initiation cannot be replayed to reset a session. ``Split`` yields one
ChaCha20-Poly1305 key per direction; the record layer (``record.py``) takes
it from there.

Forward secrecy: the transport keys depend on ``ee`` and ``es``/``se`` DH
results with fresh ephemeral keys that are erased after the handshake, so
learning a static private key later does not reveal past traffic keys.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from nacl.bindings import crypto_scalarmult, crypto_scalarmult_base

from tunnel.errors import (
    HandshakeAuthError,
    HandshakeError,
    HandshakeReplayError,
    HandshakeTruncatedError,
    ProtocolErrorReason,
    UnknownPeerError,
)

PROTOCOL_NAME = b"Noise_IK_25519_ChaChaPoly_BLAKE2b"
PROLOGUE = b"burrow tunnel v1"
HASHLEN = 64
KEYLEN = 32
TAGLEN = 16

# Message types (first byte of every datagram; see PROTOCOL.md).
MSG_INITIATION = 0x01
MSG_RESPONSE = 0x02
MSG_RECORD = 0x04

TIMESTAMP_LEN = 12
INSTANCE_LEN = 8
# type(1) reserved(3) sender_index(4) ephemeral(32) static(32+16) payload(20+16)
INITIATION_SIZE = 1 + 3 + 4 + 32 + (32 + TAGLEN) + (TIMESTAMP_LEN + INSTANCE_LEN + TAGLEN)
# type(1) reserved(3) sender_index(4) receiver_index(4) ephemeral(32) payload(8+16)
RESPONSE_SIZE = 1 + 3 + 4 + 4 + 32 + (INSTANCE_LEN + TAGLEN)

_ZERO32 = bytes(32)


def public_key(private_key: bytes) -> bytes:
    """Return the X25519 public key of a 32-byte private key."""
    if len(private_key) != 32:
        raise ValueError("private key must be 32 bytes")
    return bytes(crypto_scalarmult_base(private_key))


def generate_private_key() -> bytes:
    """Return a fresh random 32-byte X25519 private key."""
    return os.urandom(32)


def _dh(private_key: bytes, public: bytes) -> bytes:
    try:
        shared = bytes(crypto_scalarmult(private_key, public))
    except Exception as exc:  # nacl raises RuntimeError on low-order points
        raise HandshakeAuthError(ProtocolErrorReason.BAD_PUBLIC_KEY, "X25519 failed") from exc
    if hmac.compare_digest(shared, _ZERO32):
        raise HandshakeAuthError(ProtocolErrorReason.BAD_PUBLIC_KEY, "low-order point")
    return shared


def _hash(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=HASHLEN).digest()


def _hmac(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.blake2b).digest()


def hkdf(chaining_key: bytes, ikm: bytes, n: int) -> list[bytes]:
    """Noise's HKDF: HMAC-BLAKE2b extract then expand into ``n`` 64-byte keys."""
    temp = _hmac(chaining_key, ikm)
    out: list[bytes] = []
    prev = b""
    for i in range(1, n + 1):
        prev = _hmac(temp, prev + bytes([i]))
        out.append(prev)
    return out


def _nonce(n: int) -> bytes:
    return b"\x00\x00\x00\x00" + struct.pack("<Q", n)


class _Symmetric:
    """Noise SymmetricState + CipherState, enough for one handshake."""

    def __init__(self) -> None:
        name = PROTOCOL_NAME.ljust(HASHLEN, b"\x00")
        self.h = name
        self.ck = name
        self.k: bytes | None = None
        self.n = 0
        self.mix_hash(PROLOGUE)

    def mix_hash(self, data: bytes) -> None:
        self.h = _hash(self.h + data)

    def mix_key(self, ikm: bytes) -> None:
        self.ck, temp_k = hkdf(self.ck, ikm, 2)
        self.k = temp_k[:KEYLEN]
        self.n = 0

    def encrypt_and_hash(self, plaintext: bytes) -> bytes:
        assert self.k is not None
        ct = ChaCha20Poly1305(self.k).encrypt(_nonce(self.n), plaintext, self.h)
        self.n += 1
        self.mix_hash(ct)
        return ct

    def decrypt_and_hash(self, ciphertext: bytes) -> bytes:
        assert self.k is not None
        try:
            pt = ChaCha20Poly1305(self.k).decrypt(_nonce(self.n), ciphertext, self.h)
        except InvalidTag as exc:
            raise HandshakeAuthError(
                ProtocolErrorReason.HANDSHAKE_AUTH, "AEAD check failed"
            ) from exc
        self.n += 1
        self.mix_hash(ciphertext)
        return pt

    def split(self) -> tuple[bytes, bytes]:
        k1, k2 = hkdf(self.ck, b"", 2)
        return k1[:KEYLEN], k2[:KEYLEN]


@dataclass(frozen=True)
class TransportKeys:
    """The result of a handshake: one key per direction and both indices.

    Attributes:
        send_key: ChaCha20-Poly1305 key for records we send.
        recv_key: key for records we receive.
        local_index: the index the peer puts in records meant for us.
        remote_index: the index we put in records we send.
        initiator: whether we initiated this handshake.
        peer_static: the peer's static public key.
        peer_instance: the peer's 8-byte instance id (changes on restart).
    """

    send_key: bytes
    recv_key: bytes
    local_index: int
    remote_index: int
    initiator: bool
    peer_static: bytes
    peer_instance: bytes


def tai64n(now_ns: int) -> bytes:
    """Encode a Unix time in ns as 12-byte TAI64N (big-endian, sorts by time)."""
    secs, nanos = divmod(now_ns, 1_000_000_000)
    return struct.pack(">QI", 0x400000000000000A + secs, nanos)


@dataclass
class InitiatorState:
    """What the initiator keeps between sending an initiation and its response."""

    sym: _Symmetric
    ephemeral: bytes
    local_static: bytes
    remote_static: bytes
    local_index: int


def create_initiation(
    local_private: bytes,
    remote_static: bytes,
    *,
    local_index: int,
    timestamp: bytes,
    instance: bytes,
    ephemeral_private: bytes | None = None,
) -> tuple[bytes, InitiatorState]:
    """Build the initiation message (``-> e, es, s, ss``).

    Args:
        local_private: our static private key.
        remote_static: the responder's static public key (from the coordinator).
        local_index: a random 32-bit index the responder will echo back.
        timestamp: 12 bytes, strictly increasing per initiator (``tai64n``).
        instance: our 8-byte instance id.
        ephemeral_private: for tests only; a fresh key is drawn otherwise.

    Returns:
        The message bytes and the state to pass to ``consume_response``.
    """
    if len(timestamp) != TIMESTAMP_LEN or len(instance) != INSTANCE_LEN:
        raise ValueError("timestamp must be 12 bytes and instance 8 bytes")
    e = ephemeral_private if ephemeral_private is not None else generate_private_key()
    e_pub = public_key(e)
    sym = _Symmetric()
    sym.mix_hash(remote_static)
    sym.mix_hash(e_pub)
    sym.mix_key(_dh(e, remote_static))
    enc_static = sym.encrypt_and_hash(public_key(local_private))
    sym.mix_key(_dh(local_private, remote_static))
    enc_payload = sym.encrypt_and_hash(timestamp + instance)
    msg = (
        bytes([MSG_INITIATION, 0, 0, 0])
        + struct.pack(">I", local_index)
        + e_pub
        + enc_static
        + enc_payload
    )
    assert len(msg) == INITIATION_SIZE
    state = InitiatorState(sym, e, local_private, remote_static, local_index)
    return msg, state


@dataclass
class ResponderState:
    """What the responder learned from a valid initiation.

    Attributes:
        peer_static: the initiator's static public key (already authorised).
        timestamp: the initiation's timestamp (caller records it as last seen).
        peer_instance: the initiator's instance id.
        peer_index: the index to put in our response and records.
    """

    sym: _Symmetric
    remote_ephemeral: bytes
    peer_static: bytes
    timestamp: bytes
    peer_instance: bytes
    peer_index: int


def consume_initiation(
    local_private: bytes,
    message: bytes,
    *,
    authorize: Callable[[bytes], bool],
    last_timestamp: Callable[[bytes], bytes | None],
) -> ResponderState:
    """Check an initiation and return what the responder needs to answer it.

    Args:
        local_private: our static private key.
        message: the initiation bytes.
        authorize: called with the initiator's static key; False rejects it.
        last_timestamp: returns the newest timestamp accepted from that key.

    Raises:
        HandshakeTruncatedError: wrong length, type or reserved bytes.
        HandshakeAuthError: tampered, or encrypted to another static key.
        UnknownPeerError: ``authorize`` said no.
        HandshakeReplayError: the timestamp is not newer than the last one.
    """
    if len(message) != INITIATION_SIZE or message[:4] != bytes([MSG_INITIATION, 0, 0, 0]):
        raise HandshakeTruncatedError(
            ProtocolErrorReason.HANDSHAKE_SIZE,
            f"initiation is {INITIATION_SIZE} bytes, got {len(message)}",
        )
    (peer_index,) = struct.unpack_from(">I", message, 4)
    e_pub = message[8:40]
    enc_static = message[40:88]
    enc_payload = message[88:]
    sym = _Symmetric()
    sym.mix_hash(public_key(local_private))
    sym.mix_hash(e_pub)
    sym.mix_key(_dh(local_private, e_pub))
    peer_static = sym.decrypt_and_hash(enc_static)
    if not authorize(peer_static):
        raise UnknownPeerError(
            ProtocolErrorReason.UNKNOWN_PEER, "initiator static key not authorised"
        )
    sym.mix_key(_dh(local_private, peer_static))
    payload = sym.decrypt_and_hash(enc_payload)
    timestamp, instance = payload[:TIMESTAMP_LEN], payload[TIMESTAMP_LEN:]
    last = last_timestamp(peer_static)
    if last is not None and timestamp <= last:
        raise HandshakeReplayError(
            ProtocolErrorReason.HANDSHAKE_REPLAY, "initiation timestamp not newer"
        )
    return ResponderState(sym, e_pub, peer_static, timestamp, instance, peer_index)


def create_response(
    state: ResponderState,
    *,
    local_index: int,
    instance: bytes,
    ephemeral_private: bytes | None = None,
) -> tuple[bytes, TransportKeys]:
    """Build the response (``<- e, ee, se``) and derive the transport keys."""
    sym = state.sym
    e = ephemeral_private if ephemeral_private is not None else generate_private_key()
    e_pub = public_key(e)
    sym.mix_hash(e_pub)
    sym.mix_key(_dh(e, state.remote_ephemeral))
    sym.mix_key(_dh(e, state.peer_static))
    enc_payload = sym.encrypt_and_hash(instance)
    msg = (
        bytes([MSG_RESPONSE, 0, 0, 0])
        + struct.pack(">II", local_index, state.peer_index)
        + e_pub
        + enc_payload
    )
    assert len(msg) == RESPONSE_SIZE
    k_init, k_resp = sym.split()
    keys = TransportKeys(
        send_key=k_resp,
        recv_key=k_init,
        local_index=local_index,
        remote_index=state.peer_index,
        initiator=False,
        peer_static=state.peer_static,
        peer_instance=state.peer_instance,
    )
    return msg, keys


def response_receiver_index(message: bytes) -> int:
    """Return the receiver index of a response, to find the pending handshake.

    Raises:
        HandshakeTruncatedError: wrong length or type.
    """
    if len(message) != RESPONSE_SIZE or message[:4] != bytes([MSG_RESPONSE, 0, 0, 0]):
        raise HandshakeTruncatedError(
            ProtocolErrorReason.HANDSHAKE_SIZE,
            f"response is {RESPONSE_SIZE} bytes, got {len(message)}",
        )
    (index,) = struct.unpack_from(">I", message, 8)
    return int(index)


def consume_response(state: InitiatorState, message: bytes) -> TransportKeys:
    """Check the response to our initiation and derive the transport keys.

    Raises:
        HandshakeTruncatedError: wrong length or type.
        HandshakeAuthError: tampered, from another key, or not for this initiation.
    """
    if response_receiver_index(message) != state.local_index:
        raise HandshakeAuthError(
            ProtocolErrorReason.HANDSHAKE_INDEX, "response is for another initiation"
        )
    (peer_index,) = struct.unpack_from(">I", message, 4)
    e_pub = message[12:44]
    enc_payload = message[44:]
    # Work on a copy so a forged response cannot spoil the pending state.
    sym = _Symmetric.__new__(_Symmetric)
    sym.h, sym.ck, sym.k, sym.n = state.sym.h, state.sym.ck, state.sym.k, state.sym.n
    sym.mix_hash(e_pub)
    sym.mix_key(_dh(state.ephemeral, e_pub))
    sym.mix_key(_dh(state.local_static, e_pub))
    instance = sym.decrypt_and_hash(enc_payload)
    k_init, k_resp = sym.split()
    return TransportKeys(
        send_key=k_init,
        recv_key=k_resp,
        local_index=state.local_index,
        remote_index=int(peer_index),
        initiator=True,
        peer_static=state.remote_static,
        peer_instance=instance,
    )


__all__ = [
    "INITIATION_SIZE",
    "MSG_INITIATION",
    "MSG_RECORD",
    "MSG_RESPONSE",
    "RESPONSE_SIZE",
    "HandshakeError",
    "InitiatorState",
    "ResponderState",
    "TransportKeys",
    "consume_initiation",
    "consume_response",
    "create_initiation",
    "create_response",
    "generate_private_key",
    "public_key",
    "tai64n",
]
