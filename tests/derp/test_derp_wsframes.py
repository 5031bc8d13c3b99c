"""derp.wsframes: the WebSocket frame codec, fed plain bytes whole, split at every
offset and byte by byte, cross-checked against wsproto's encoder."""

from __future__ import annotations

import contextlib
import itertools
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from wsproto.frame_protocol import FrameProtocol

from derp.wsframes import (
    Close,
    CloseCode,
    ControlEvent,
    FrameDecoder,
    Ping,
    Pong,
    WebSocketProtocolError,
    encode_control,
    encode_data,
    mask,
)


def decode_all(
    wire: bytes, *, expect_masked: bool, cuts: list[int] | None = None
) -> tuple[bytes, list[ControlEvent]]:
    dec = FrameDecoder(expect_masked=expect_masked)
    out = bytearray()
    events: list[ControlEvent] = []
    bounds = [0, *(cuts or []), len(wire)]
    for a, b in itertools.pairwise(bounds):
        data, evs = dec.feed(wire[a:b])
        out += data
        events += evs
    return bytes(out), events


def sample_wire(masked: bool) -> tuple[bytes, bytes, list[ControlEvent]]:
    parts = [b"", b"a", os.urandom(125), os.urandom(126), os.urandom(70000)]
    wire = b""
    for p in parts:
        wire += encode_data(p, masked=masked)
    wire += encode_control(Ping(b"hi"), masked=masked)
    wire += encode_data(b"tail", masked=masked)
    wire += encode_control(Close(CloseCode.NORMAL, "bye"), masked=masked)
    return wire, b"".join(parts) + b"tail", [Ping(b"hi"), Close(1000, "bye")]


@pytest.mark.parametrize("masked", [True, False])
def test_round_trip_whole_split_and_bytewise(masked: bool) -> None:
    wire, payload, events = sample_wire(masked)
    assert decode_all(wire, expect_masked=masked) == (payload, events)
    assert decode_all(wire, expect_masked=masked,
                      cuts=list(range(1, len(wire)))[:3000]) == (payload, events)
    small = b"".join([encode_data(b"xyz" * 50, masked=masked),
                      encode_control(Pong(b"p"), masked=masked),
                      encode_data(b"q", masked=masked)])
    for cut in range(len(small) + 1):
        assert decode_all(small, expect_masked=masked, cuts=[cut]) == (
            b"xyz" * 50 + b"q", [Pong(b"p")])
    assert decode_all(small, expect_masked=masked, cuts=list(range(1, len(small)))) == (
        b"xyz" * 50 + b"q", [Pong(b"p")])


def test_decodes_wsproto_frames_including_fragments() -> None:
    proto = FrameProtocol(True, [])
    wire = (proto.send_data(b"frag1-", fin=False) + proto.send_data(b"frag2", fin=True)
            + proto.ping(b"x") + proto.send_data(b"end"))
    for cut in range(len(wire) + 1):
        assert decode_all(bytes(wire), expect_masked=True, cuts=[cut]) == (
            b"frag1-frag2end", [Ping(b"x")])


def test_wsproto_decodes_our_frames() -> None:
    proto = FrameProtocol(False, [])
    payload = os.urandom(100_000)
    proto.receive_bytes(encode_data(payload, masked=True))
    got = b"".join(bytes(f.payload) for f in proto.received_frames())  # type: ignore[arg-type]
    assert got == payload


def test_mask_offsets_compose() -> None:
    key, data = b"\x01\x02\x03\x04", os.urandom(1001)
    whole = mask(data, key)
    assert mask(whole, key) == data
    assert mask(data[:7], key) + mask(data[7:], key, 7) == whole


@pytest.mark.parametrize(
    ("wire", "code"),
    [
        (bytes(encode_data(b"x", masked=False)), 1002),  # server got unmasked frame
        (b"\x81\x80abcd", 1003),  # text
        (b"\xc2\x80abcd", 1002),  # RSV1 without an extension
        (b"\x83\x80abcd", 1002),  # reserved opcode
        (b"\x09\x80abcd", 1002),  # fragmented ping
        (b"\x89\xfe\x00\x7e" + b"k" * 4 + b"x" * 126, 1002),  # ping over 125 bytes
        (b"\x80\x80abcd", 1002),  # continuation outside a message
        (b"\x02\x80abcd\x82\x80abcd", 1002),  # new message inside a fragmented one
        (b"\x88\x81abcd" + mask(b"\x03", b"abcd"), 1002),  # 1-byte close payload
        (b"\x88\x82abcd" + mask(b"\x03\xed", b"abcd"), 1002),  # close code 1005 on the wire
        (b"\x88\x84abcd" + mask(b"\x03\xe8\xff\xfe", b"abcd"), 1007),  # reason not UTF-8
    ],
)
def test_protocol_errors_carry_close_codes(wire: bytes, code: int) -> None:
    with pytest.raises(WebSocketProtocolError) as info:
        decode_all(wire, expect_masked=True)
    assert info.value.code == code


def test_nothing_after_close() -> None:
    wire = encode_control(Close(1000, ""), masked=False) + encode_data(b"late", masked=False)
    assert decode_all(wire, expect_masked=False) == (b"", [Close(1000, "")])


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.booleans())
def test_arbitrary_bytes_decode_or_raise_protocol_error(data: bytes, masked: bool) -> None:
    with contextlib.suppress(WebSocketProtocolError):
        decode_all(data, expect_masked=masked, cuts=[len(data) // 2])
