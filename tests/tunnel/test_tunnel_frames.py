"""Session frame codec with plain bytes: round trips, every truncation, garbage."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as hs

from tunnel import frames as fr
from tunnel.errors import ProtocolError

SAMPLE = [
    (fr.encode_ping(5), fr.Ping(5)),
    (fr.encode_pong(6), fr.Pong(6)),
    (fr.encode_ack([(10, 12), (3, 5)]), fr.Ack(((10, 12), (3, 5)))),
    (fr.stream_header(3, 100, True, 4) + b"data", fr.StreamData(3, 100, True, b"data")),
    (fr.encode_open(2, 65536, "tcp:127.0.0.1:22"), fr.Open(2, 65536, "tcp:127.0.0.1:22")),
    (fr.encode_open_ok(2, 1024), fr.OpenOk(2, 1024)),
    (fr.encode_open_refused(2, 1, "no"), fr.OpenRefused(2, 1, "no")),
    (fr.encode_reset(4, 7, 999, "bye"), fr.Reset(4, 7, 999, "bye")),
    (fr.encode_stop(4, 7), fr.Stop(4, 7)),
    (fr.encode_max_stream_data(4, 1 << 40), fr.MaxStreamData(4, 1 << 40)),
    (fr.encode_max_data(1 << 41), fr.MaxData(1 << 41)),
    (fr.encode_close(0, "done"), fr.Close(0, "done")),
]
PACKET = fr.encode_pn(42) + b"".join(b for b, _ in SAMPLE)


def test_every_frame_round_trips_in_one_packet() -> None:
    pn, frames = fr.parse(PACKET)
    assert pn == 42
    assert frames == [f for _, f in SAMPLE]


def test_pn_only_packet_has_no_frames() -> None:
    assert fr.parse(fr.encode_pn(1)) == (1, [])


@pytest.mark.parametrize("cut", range(1, len(PACKET)))
def test_every_truncation_is_an_error_or_a_frame_boundary(cut: int) -> None:
    boundaries = {fr.PN_LEN}
    pos = fr.PN_LEN
    for b, _ in SAMPLE:
        pos += len(b)
        boundaries.add(pos)
    if cut in boundaries:
        fr.parse(PACKET[:cut])
    else:
        with pytest.raises(ProtocolError):
            fr.parse(PACKET[:cut])


def test_unknown_frame_type_and_bad_ack_range() -> None:
    with pytest.raises(ProtocolError, match="frame_type"):
        fr.parse(fr.encode_pn(0) + b"\xee")
    with pytest.raises(ProtocolError, match="ack_range"):
        fr.parse(fr.encode_pn(0) + fr.encode_ack([(9, 3)]))
    with pytest.raises(ProtocolError, match="frame_text"):
        fr.parse(fr.encode_pn(0) + bytes([fr.FrameType.CLOSE, 0, 0, 1, 0xFF]))


@given(hs.binary(max_size=300))
def test_parse_returns_or_raises_protocol_error(data: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        fr.parse(data)
