"""DERP frame codec: round trips, every split point, limits, and a fuzz property."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from derp import frames as f
from derp.errors import DerpProtocolError

K1 = bytes(range(32))
K2 = bytes(range(32, 64))

ALL_FRAMES: list[f.Frame] = [
    f.ServerKey(K1),
    f.ServerKey(K1, b"future"),
    f.ClientInfo(K1, b"n" * 24, b"box" * 10),
    f.ServerInfo(b"n" * 24, b"sealed"),
    f.SendPacket(K2, b"hello"),
    f.SendPacket(K2, b""),
    f.SendPacket(K2, b"x" * f.MAX_PACKET_SIZE),
    f.RecvPacket(K1, b"world"),
    f.KeepAlive(),
    f.NotePreferred(True),
    f.NotePreferred(False),
    f.PeerGone(K1, f.PeerGoneReason.DISCONNECTED),
    f.PeerGone(K2, f.PeerGoneReason.NOT_HERE),
    f.PeerPresent(K1),
    f.PeerPresent(K1, b"\x00" * 10 + b"\xff\xff" + bytes([127, 0, 0, 1]), 41641, 1),
    f.ForwardPacket(K1, K2, b"fwd"),
    f.WatchConns(),
    f.ClosePeer(K2),
    f.Ping(b"12345678"),
    f.Pong(b"87654321"),
    f.Health("relay overloaded \N{SNOWMAN}"),
    f.Health(""),
    f.Restarting(500, 30000),
]

STREAM = b"".join(f.encode(fr) for fr in ALL_FRAMES if len(f.encode(fr)) < 1000)
SMALL = [fr for fr in ALL_FRAMES if len(f.encode(fr)) < 1000]


def test_every_frame_type_is_covered() -> None:
    assert {fr.TYPE for fr in ALL_FRAMES} == set(f.FrameType)


@pytest.mark.parametrize("frame", ALL_FRAMES, ids=lambda fr: type(fr).__name__)
def test_round_trip(frame: f.Frame) -> None:
    wire = f.encode(frame)
    assert wire[0] == frame.TYPE
    assert struct.unpack(">I", wire[1:5])[0] == len(wire) - 5
    assert f.decode_all(wire) == [frame]


def test_fast_helpers_match_encode() -> None:
    assert f.encode_send_packet(K1, b"abc") == f.encode(f.SendPacket(K1, b"abc"))
    assert f.encode_recv_packet(K1, b"abc") == f.encode(f.RecvPacket(K1, b"abc"))
    assert f.recv_packet_header(K1, 3) + b"abc" == f.encode(f.RecvPacket(K1, b"abc"))
    assert f.encode_forward_packet(K1, K2, b"z") == f.encode(f.ForwardPacket(K1, K2, b"z"))
    assert f.forward_packet_header(K1, K2, 1) + b"z" == f.encode(f.ForwardPacket(K1, K2, b"z"))


def test_magic_bytes() -> None:
    assert bytes.fromhex("44455250f09f9491") == f.MAGIC


def test_encode_rejects_bad_fields() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        f.encode(f.SendPacket(b"short", b""))
    with pytest.raises(ValueError, match="exceeds"):
        f.encode_send_packet(K1, b"x" * (f.MAX_PACKET_SIZE + 1))
    with pytest.raises(ValueError, match="8 bytes"):
        f.encode(f.Ping(b"123"))


def _decode_chunks(chunks: list[bytes]) -> list[f.Frame]:
    dec = f.FrameDecoder()
    out: list[f.Frame] = []
    for chunk in chunks:
        dec.feed(chunk)
        while (fr := dec.next_frame()) is not None:
            out.append(fr)
    assert dec.buffered == 0
    return out


def test_every_split_point() -> None:
    for i in range(len(STREAM) + 1):
        assert _decode_chunks([STREAM[:i], STREAM[i:]]) == SMALL, i


def test_byte_by_byte() -> None:
    assert _decode_chunks([STREAM[i : i + 1] for i in range(len(STREAM))]) == SMALL


def test_unknown_types_are_skipped_at_any_split() -> None:
    unknown = f.frame_header(0x7F, 300) + b"u" * 300 + f.frame_header(0x30, 0)
    wire = f.encode(f.Ping(b"aaaaaaaa")) + unknown + f.encode(f.Pong(b"bbbbbbbb"))
    want = [f.Ping(b"aaaaaaaa"), f.Pong(b"bbbbbbbb")]
    for i in range(len(wire) + 1):
        dec = f.FrameDecoder()
        out: list[f.Frame] = []
        for chunk in (wire[:i], wire[i:]):
            dec.feed(chunk)
            while (fr := dec.next_frame()) is not None:
                out.append(fr)
        assert out == want, i
        assert dec.skipped == 2


def test_oversize_rejected_before_payload_arrives() -> None:
    dec = f.FrameDecoder()
    dec.feed(f.frame_header(f.FrameType.HEALTH, f.MAX_FRAME_SIZE + 1))
    with pytest.raises(DerpProtocolError) as info:
        dec.next_frame()
    assert info.value.reason == "frame_too_large"
    # The decoder stays failed.
    with pytest.raises(DerpProtocolError):
        dec.feed(b"more")


def test_oversize_packet_rejected_before_payload_arrives() -> None:
    dec = f.FrameDecoder()
    dec.feed(f.frame_header(f.FrameType.SEND_PACKET, 32 + f.MAX_PACKET_SIZE + 1))
    with pytest.raises(DerpProtocolError) as info:
        dec.next_frame()
    assert info.value.reason == "packet_too_large"


def test_smaller_max_frame_size() -> None:
    dec = f.FrameDecoder(max_frame_size=100)
    dec.feed(f.frame_header(0x7F, 101))
    with pytest.raises(DerpProtocolError, match="frame_too_large"):
        dec.next_frame()


@pytest.mark.parametrize(
    ("wire", "reason"),
    [
        (f.frame_header(f.FrameType.SERVER_KEY, 40) + b"X" * 40, "bad_magic"),
        (f.frame_header(f.FrameType.SERVER_KEY, 8) + f.MAGIC, "short_payload"),
        (f.frame_header(f.FrameType.SEND_PACKET, 31) + b"k" * 31, "short_payload"),
        (f.frame_header(f.FrameType.FORWARD_PACKET, 40) + b"k" * 40, "short_payload"),
        (f.frame_header(f.FrameType.PING, 7) + b"p" * 7, "short_payload"),
        (f.frame_header(f.FrameType.PING, 1001) + b"p" * 1001, "frame_too_large"),
        (f.frame_header(f.FrameType.HEALTH, 2) + b"\xff\xfe", "bad_utf8"),
        (f.frame_header(f.FrameType.NOTE_PREFERRED, 0), "short_payload"),
        (f.frame_header(f.FrameType.RESTARTING, 4) + b"1234", "short_payload"),
    ],
)
def test_malformed(wire: bytes, reason: str) -> None:
    with pytest.raises(DerpProtocolError) as info:
        f.decode_all(wire)
    assert info.value.reason == reason


def test_ping_accepts_up_to_1000_bytes_and_keeps_first_8() -> None:
    wire = f.frame_header(f.FrameType.PING, 1000) + b"12345678" + b"z" * 992
    assert f.decode_all(wire) == [f.Ping(b"12345678")]


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300), st.integers(min_value=1, max_value=50))
def test_arbitrary_bytes_decode_or_protocol_error(data: bytes, step: int) -> None:
    dec = f.FrameDecoder(max_frame_size=1 << 16)
    reason = ""
    try:
        for i in range(0, len(data), step):
            dec.feed(data[i : i + step])
            while dec.next_frame() is not None:
                pass
    except DerpProtocolError as exc:
        reason = exc.reason
    # Once failed, the decoder keeps failing with the same reason.
    if reason:
        with pytest.raises(DerpProtocolError, match=reason):
            dec.next_frame()


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(SMALL), max_size=20), st.data())
def test_random_sequences_split_randomly(frames: list[f.Frame], data: st.DataObject) -> None:
    wire = b"".join(f.encode(fr) for fr in frames)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=6)))
    chunks = [wire[a:b] for a, b in zip([0, *cuts], [*cuts, len(wire)], strict=True)]
    assert _decode_chunks(chunks) == frames


@settings(max_examples=400, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 0x20), st.binary(max_size=80)),
        max_size=8,
    ),
    st.binary(max_size=10),
)
def test_well_framed_random_payloads_decode_or_protocol_error(
    parts: list[tuple[int, bytes]], tail: bytes
) -> None:
    # Plausible headers reach every payload parser, not just the length check.
    wire = b"".join(f.frame_header(t, len(p)) + p for t, p in parts) + tail
    try:
        frames = f.decode_all(wire)
    except DerpProtocolError as exc:
        frames = []
        reason = exc.reason
        assert reason
    for fr in frames:
        assert f.decode_all(f.encode(fr)) == [fr]


def test_codec_and_handshake_are_sans_io() -> None:
    import subprocess
    import sys

    code = (
        "import sys, derp.frames, derp.handshake, derp.keys, derp.errors;"
        "assert 'trio' not in sys.modules, 'trio imported'"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
