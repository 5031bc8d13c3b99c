"""Curve25519 node keys for DERP: generate, derive, hex encode/decode, short display form."""

from __future__ import annotations

import base64
import binascii

from nacl.public import PrivateKey

from derp.frames import KEY_LEN


def generate_private_key() -> bytes:
    """A fresh random 32-byte Curve25519 private key."""
    return bytes(PrivateKey.generate())


def public_key(private_key: bytes) -> bytes:
    """The 32-byte public key of ``private_key``.

    Raises:
        ValueError: ``private_key`` is not 32 bytes.
    """
    check_key(private_key, "private key")
    return bytes(PrivateKey(private_key).public_key)


def check_key(key: bytes, what: str = "key") -> bytes:
    """Return ``key`` if it is 32 bytes.

    Raises:
        ValueError: it is not.
    """
    if not isinstance(key, bytes) or len(key) != KEY_LEN:
        size = len(key) if isinstance(key, bytes | bytearray) else type(key).__name__
        raise ValueError(f"{what} must be {KEY_LEN} bytes, got {size}")
    return key


def key_to_hex(key: bytes) -> str:
    """Lower-case hex of a 32-byte key (64 characters)."""
    return check_key(key).hex()


def key_from_hex(text: str, what: str = "key") -> bytes:
    """Parse 64 hex digits (surrounding whitespace ignored) into a 32-byte key.

    Raises:
        ValueError: not 64 hex digits; the message says what was wrong.
    """
    text = text.strip()
    if len(text) != 2 * KEY_LEN:
        raise ValueError(f"{what} must be {2 * KEY_LEN} hex digits, got {len(text)} characters")
    try:
        return binascii.unhexlify(text)
    except binascii.Error:
        raise ValueError(f"{what} is not hexadecimal") from None


def short(key: bytes) -> str:
    """A short display form, as Tailscale shows keys in logs: ``[AbCdE]``."""
    return "[" + base64.b64encode(key).decode()[:5] + "]"
