"""DERP handshake boxes and keys, tested with plain bytes."""

from __future__ import annotations

import json

import pytest
from nacl.public import Box, PrivateKey, PublicKey

from derp import frames as f
from derp import handshake as hs
from derp import keys
from derp.errors import DerpProtocolError

SERVER = keys.generate_private_key()
CLIENT = keys.generate_private_key()
SERVER_PUB = keys.public_key(SERVER)
CLIENT_PUB = keys.public_key(CLIENT)
MESH = bytes(range(32))


def _wire_round_trip(frame: f.Frame) -> f.Frame:
    (out,) = f.decode_all(f.encode(frame))
    return out


def test_keys() -> None:
    assert len(SERVER) == 32
    assert SERVER_PUB != CLIENT_PUB
    assert keys.key_from_hex(keys.key_to_hex(SERVER_PUB)) == SERVER_PUB
    assert keys.key_from_hex("  " + SERVER_PUB.hex().upper() + "\n") == SERVER_PUB
    assert keys.short(SERVER_PUB).startswith("[")
    assert len(keys.short(SERVER_PUB)) == 7


@pytest.mark.parametrize(
    ("text", "match"), [("abc", "64 hex digits"), ("zz" * 32, "not hexadecimal")]
)
def test_bad_hex_key(text: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        keys.key_from_hex(text)


def test_bad_private_key() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        keys.public_key(b"short")


def test_client_info_round_trip() -> None:
    frame = hs.build_client_info(CLIENT, SERVER_PUB, mesh_key=MESH, can_ack_pings=True)
    got = hs.open_client_info(_wire_round_trip(frame), SERVER)  # type: ignore[arg-type]
    assert got.key == CLIENT_PUB
    assert got.version == 2
    assert got.can_ack_pings is True
    assert got.mesh_key == MESH
    assert got.mesh_key_matches(MESH)
    assert not got.mesh_key_matches(bytes(32))
    assert not got.mesh_key_matches(None)
    assert got.raw == {"version": 2, "CanAckPings": True, "meshKey": MESH.hex()}


def test_client_info_without_mesh_key() -> None:
    got = hs.open_client_info(hs.build_client_info(CLIENT, SERVER_PUB), SERVER)
    assert got.mesh_key is None
    assert not got.mesh_key_matches(MESH)


def test_client_info_is_a_real_nacl_box() -> None:
    # Interoperability: open it with a plain NaCl Box, as a Go server would.
    frame = hs.build_client_info(CLIENT, SERVER_PUB, can_ack_pings=False)
    plain = Box(PrivateKey(SERVER), PublicKey(frame.key)).decrypt(frame.box, frame.nonce)
    assert json.loads(plain) == {"version": 2, "CanAckPings": False}


def test_wrong_server_key() -> None:
    other = keys.public_key(keys.generate_private_key())
    frame = hs.build_client_info(CLIENT, other)
    with pytest.raises(DerpProtocolError) as info:
        hs.open_client_info(frame, SERVER)
    assert info.value.reason == "bad_box"


def test_garbage_box() -> None:
    frame = f.ClientInfo(CLIENT_PUB, b"\x00" * 24, b"garbage" * 5)
    with pytest.raises(DerpProtocolError) as info:
        hs.open_client_info(frame, SERVER)
    assert info.value.reason == "bad_box"
    with pytest.raises(DerpProtocolError, match="bad_box"):
        hs.open_client_info(f.ClientInfo(CLIENT_PUB, b"\x00" * 24, b""), SERVER)


def test_box_with_non_json_or_non_object() -> None:
    box = Box(PrivateKey(CLIENT), PublicKey(SERVER_PUB))
    for plain, reason in [(b"\xff not json", "bad_json"), (b"[1,2]", "bad_json"),
                          (b'{"version": "two"}', "bad_client_info")]:
        nonce = b"\x01" * 24
        sealed = bytes(box.encrypt(plain, nonce).ciphertext)
        with pytest.raises(DerpProtocolError) as info:
            hs.open_client_info(f.ClientInfo(CLIENT_PUB, nonce, sealed), SERVER)
        assert info.value.reason == reason


def test_oversized_client_info() -> None:
    frame = f.ClientInfo(CLIENT_PUB, b"\x00" * 24, b"\x00" * (f.MAX_INFO_LEN + 17))
    with pytest.raises(DerpProtocolError, match="info_too_large"):
        hs.open_client_info(frame, SERVER)
    # On the wire the frame itself is refused from its header alone.
    header = f.frame_header(f.FrameType.CLIENT_INFO, 56 + 16 + f.MAX_INFO_LEN + 1)
    dec = f.FrameDecoder()
    dec.feed(header)
    with pytest.raises(DerpProtocolError, match="frame_too_large"):
        dec.next_frame()


def test_server_info_round_trip_and_wrong_key() -> None:
    frame = hs.build_server_info(SERVER, CLIENT_PUB, extra={"TokenBucketBytesPerSecond": 5})
    got = hs.open_server_info(_wire_round_trip(frame), CLIENT, SERVER_PUB)  # type: ignore[arg-type]
    assert got == {"version": 2, "TokenBucketBytesPerSecond": 5}
    with pytest.raises(DerpProtocolError, match="bad_box"):
        hs.open_server_info(frame, CLIENT, CLIENT_PUB)


def test_server_key_frame() -> None:
    frame = hs.server_key_frame(SERVER_PUB)
    wire = f.encode(frame)
    assert wire[5:13] == f.MAGIC
    assert wire[13:45] == SERVER_PUB
