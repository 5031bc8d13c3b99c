"""DERP v2 handshake, sans-IO: build and open ClientInfo / ServerInfo boxes.

Theory of operation
-------------------
1. The server sends ``ServerKey`` (magic + its public key) as soon as a
   connection starts (``server_key_frame``).
2. The client answers ``ClientInfo``: its public key, a random 24-byte nonce
   and ``crypto_box(json, nonce, server_public, client_private)``
   (``build_client_info``).  The server opens it with ``open_client_info``;
   a box that does not open, JSON that is not an object, or an oversized box
   is a ``DerpProtocolError`` and the connection is closed.
3. The server answers ``ServerInfo``: a box from server to client holding
   ``{"version": 2}`` (``build_server_info`` / ``open_server_info``).

The JSON is what Tailscale sends: ``{"version": 2, "meshKey": "<64 hex>",
"CanAckPings": true}``; ``meshKey`` only for mesh peers.  Nothing here does
I/O; ``derp.server`` and ``derp.conn`` drive it.
"""

from __future__ import annotations

import hmac
import json
from dataclasses import dataclass, field
from typing import Any

from nacl.exceptions import CryptoError
from nacl.public import Box, PrivateKey, PublicKey
from nacl.utils import random as nacl_random

from derp.errors import DerpProtocolError, ProtocolErrorReason
from derp.frames import (
    BOX_OVERHEAD,
    KEY_LEN,
    MAX_INFO_LEN,
    NONCE_LEN,
    PROTOCOL_VERSION,
    ClientInfo,
    ServerInfo,
    ServerKey,
)
from derp.keys import check_key


@dataclass(frozen=True, slots=True)
class ClientInfoPayload:
    """What a client said about itself in ClientInfo.

    Attributes:
        key: the client's public key (from the frame, authenticated by the box).
        version: the protocol version the client speaks.
        mesh_key: the 32-byte mesh key it presented, or None.
        can_ack_pings: whether the client answers server Pings.
        raw: the whole JSON object.
    """

    key: bytes
    version: int
    mesh_key: bytes | None
    can_ack_pings: bool
    raw: dict[str, Any] = field(default_factory=dict)

    def mesh_key_matches(self, mesh_key: bytes | None) -> bool:
        """True if this client presented ``mesh_key`` (constant-time compare)."""
        if mesh_key is None or self.mesh_key is None:
            return False
        return hmac.compare_digest(self.mesh_key, mesh_key)


def server_key_frame(server_public: bytes) -> ServerKey:
    """The ServerKey frame a server sends first."""
    return ServerKey(check_key(server_public, "server public key"))


def _box(private_key: bytes, peer_public: bytes) -> Box:
    return Box(PrivateKey(private_key), PublicKey(peer_public))


def _seal(private_key: bytes, peer_public: bytes, obj: dict[str, Any]) -> tuple[bytes, bytes]:
    nonce = nacl_random(NONCE_LEN)
    sealed = _box(private_key, peer_public).encrypt(json.dumps(obj).encode(), nonce)
    return nonce, bytes(sealed.ciphertext)


def _open(
    private_key: bytes, peer_public: bytes, nonce: bytes, box: bytes, what: str
) -> dict[str, Any]:
    if len(box) - BOX_OVERHEAD > MAX_INFO_LEN:
        raise DerpProtocolError(ProtocolErrorReason.INFO_TOO_LARGE, f"{what} of {len(box)} bytes")
    try:
        plain = _box(private_key, peer_public).decrypt(box, nonce)
    except (CryptoError, ValueError, TypeError):
        raise DerpProtocolError(ProtocolErrorReason.BAD_BOX, f"{what} box does not open") from None
    try:
        obj = json.loads(plain)
    except (UnicodeDecodeError, ValueError):
        raise DerpProtocolError(ProtocolErrorReason.BAD_JSON, f"{what} is not JSON") from None
    if not isinstance(obj, dict):
        raise DerpProtocolError(ProtocolErrorReason.BAD_JSON, f"{what} is not a JSON object")
    return obj


def build_client_info(
    client_private: bytes,
    server_public: bytes,
    *,
    mesh_key: bytes | None = None,
    can_ack_pings: bool = True,
) -> ClientInfo:
    """Seal the ClientInfo frame a client sends after ServerKey.

    Raises:
        ValueError: a key is not 32 bytes.
    """
    check_key(client_private, "private key")
    check_key(server_public, "server public key")
    obj: dict[str, Any] = {"version": PROTOCOL_VERSION, "CanAckPings": can_ack_pings}
    if mesh_key is not None:
        obj["meshKey"] = check_key(mesh_key, "mesh key").hex()
    nonce, box = _seal(client_private, server_public, obj)
    client_public = bytes(PrivateKey(client_private).public_key)
    return ClientInfo(client_public, nonce, box)


def open_client_info(frame: ClientInfo, server_private: bytes) -> ClientInfoPayload:
    """Open a client's ClientInfo on the server.

    Raises:
        DerpProtocolError: "info_too_large", "bad_box" (wrong key or garbage),
            "bad_json" (not a JSON object), "bad_client_info" (fields of the
            wrong type).
    """
    if len(frame.key) != KEY_LEN:
        raise DerpProtocolError(ProtocolErrorReason.SHORT_PAYLOAD, "client key")
    obj = _open(server_private, frame.key, frame.nonce, frame.box, "ClientInfo")
    version = obj.get("version", 0)
    can_ack = obj.get("CanAckPings", False)
    mesh_hex = obj.get("meshKey")
    if not isinstance(version, int) or not isinstance(can_ack, bool):
        raise DerpProtocolError(
            ProtocolErrorReason.BAD_CLIENT_INFO, "version/CanAckPings of the wrong type"
        )
    mesh_key: bytes | None = None
    if isinstance(mesh_hex, str) and mesh_hex:
        try:
            mesh_key = bytes.fromhex(mesh_hex)
        except ValueError:
            mesh_key = None  # an unusable mesh key simply grants nothing
    return ClientInfoPayload(frame.key, version, mesh_key, can_ack, obj)


def build_server_info(
    server_private: bytes, client_public: bytes, *, extra: dict[str, Any] | None = None
) -> ServerInfo:
    """Seal the ServerInfo frame (``{"version": 2}`` plus ``extra``) for one client."""
    obj: dict[str, Any] = {"version": PROTOCOL_VERSION, **(extra or {})}
    nonce, box = _seal(server_private, client_public, obj)
    return ServerInfo(nonce, box)


def open_server_info(
    frame: ServerInfo, client_private: bytes, server_public: bytes
) -> dict[str, Any]:
    """Open ServerInfo on the client and return its JSON object.

    Raises:
        DerpProtocolError: "info_too_large", "bad_box", "bad_json".
    """
    return _open(client_private, server_public, frame.nonce, frame.box, "ServerInfo")
