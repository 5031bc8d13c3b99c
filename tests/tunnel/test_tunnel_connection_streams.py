"""``Connection`` driven by hand with frames from a scripted peer: no trio, no clock.

Stream ends and their races (RESET, STOP, FIN vs RESET, data after FIN,
duplicate FIN) and flow-control violations, checked by what the connection
delivers, counts and sends back.
"""

from __future__ import annotations

import pytest

from tunnel import frames as fr
from tunnel.config import Config
from tunnel.connection import Connection, StreamRequest
from tunnel.frames import ErrorCode
from tunnel.recv_side import RecvState
from tunnel.send_side import SendState

PEER_SID = 1  # the connection under test sorts low: the peer opens odd ids


class Peer:
    """Hands packets of frames to ``conn`` and reads back what it sends."""

    def __init__(self, config: Config | None = None) -> None:
        self.conn = Connection(local_is_low=True, now=0.0, config=config)
        self.pn = 0
        self.now = 0.0

    def send(self, *frames: bytes) -> None:
        self.now += 0.001
        self.conn.receive(fr.encode_pn(self.pn) + b"".join(frames), self.now)
        self.pn += 1

    def take(self) -> list[fr.Frame]:
        out: list[fr.Frame] = []
        for packet in self.conn.poll(self.now):
            out += fr.parse(packet)[1]
        return out

    def open(self, window: int = 1 << 20) -> int:
        self.send(fr.encode_open(PEER_SID, window, "ssh"))
        (req,) = self.conn.take_events()
        assert isinstance(req, StreamRequest)
        self.conn.accept(req.sid)
        self.take()
        return req.sid


def data(sid: int, offset: int, payload: bytes, fin: bool = False) -> bytes:
    return fr.stream_header(sid, offset, fin, len(payload)) + payload


def violations(p: Peer) -> int:
    return p.conn.stats["flow_violations"]


def test_reset_discards_unread_bytes_and_ends_the_direction() -> None:
    p = Peer()
    sid = p.open()
    p.send(data(sid, 0, b"hello"))
    p.send(fr.encode_reset(sid, ErrorCode.INTERNAL, 5, "boom"))
    st = p.conn.streams[sid]
    assert st.receiver.state is RecvState.RESET_RECVD
    assert st.error == (ErrorCode.INTERNAL, "boom")
    assert p.conn.read(sid, 100) == b""
    assert sid in p.conn.take_changed()
    assert p.conn.credit.consumed == 5  # the discarded bytes are credited back


def test_reset_of_a_stream_never_opened_is_ignored() -> None:
    p = Peer()
    p.send(fr.encode_reset(41, ErrorCode.CLOSED, 0, ""))
    assert not p.conn.streams
    assert violations(p) == 0


def test_stop_makes_the_writer_reset_with_the_final_size() -> None:
    p = Peer()
    sid = p.open()
    p.conn.write(sid, b"x" * 100)
    p.take()
    p.conn.write(sid, b"never sent")
    p.send(fr.encode_stop(sid, ErrorCode.STOPPED))
    resets = [f for f in p.take() if isinstance(f, fr.Reset)]
    assert resets == [fr.Reset(sid, ErrorCode.STOPPED, 100, "peer stopped reading")]
    st = p.conn.streams[sid]
    assert st.sender.state is SendState.RESET_SENT
    assert st.sender.stopped == ErrorCode.STOPPED
    assert p.conn.write(sid, b"more") == 0


def test_stop_after_every_byte_was_acked_sends_no_reset() -> None:
    p = Peer()
    sid = p.open()
    p.conn.write(sid, b"abc")
    p.conn.send_eof(sid)
    p.take()
    p.send(fr.encode_ack([(0, p.conn.out.pn - 1)]))
    p.send(fr.encode_stop(sid, ErrorCode.STOPPED))
    assert not [f for f in p.take() if isinstance(f, fr.Reset)]


def test_fin_then_reset_before_reading_the_reset_wins() -> None:
    p = Peer()
    sid = p.open()
    p.send(data(sid, 0, b"abc", fin=True))
    p.send(fr.encode_reset(sid, ErrorCode.CLOSED, 3, "abort"))
    assert p.conn.streams[sid].receiver.aborted
    assert violations(p) == 0


def test_reset_after_the_reader_saw_eof_is_ignored() -> None:
    p = Peer()
    sid = p.open()
    p.send(data(sid, 0, b"abc", fin=True))
    assert p.conn.read(sid, 100) == b"abc"
    p.send(fr.encode_reset(sid, ErrorCode.CLOSED, 3, "late"))
    st = p.conn.streams[sid]
    assert st.at_eof()
    assert st.error is None


def test_reset_moving_the_final_size_of_a_fin_is_a_flow_violation() -> None:
    p = Peer()
    sid = p.open()
    p.send(data(sid, 0, b"abc", fin=True))
    p.send(fr.encode_reset(sid, ErrorCode.CLOSED, 9, ""))
    assert violations(p) == 1
    assert p.conn.read(sid, 100) == b"abc"


def test_data_after_fin_is_a_flow_violation_and_dropped() -> None:
    p = Peer()
    sid = p.open()
    p.send(data(sid, 0, b"abc", fin=True))
    p.send(data(sid, 3, b"extra"))
    assert violations(p) == 1
    assert p.conn.read(sid, 100) == b"abc"
    assert p.conn.streams[sid].at_eof()


def test_a_duplicate_fin_is_absorbed() -> None:
    p = Peer()
    sid = p.open()
    p.send(data(sid, 0, b"abc", fin=True))
    p.send(data(sid, 0, b"abc", fin=True))
    p.send(data(sid, 3, b"", fin=True))
    assert violations(p) == 0
    assert p.conn.read(sid, 100) == b"abc"
    assert p.conn.read(sid, 100) == b""
    assert p.conn.streams[sid].at_eof()


def test_both_directions_ended_forgets_the_stream() -> None:
    p = Peer()
    sid = p.open()
    p.send(data(sid, 0, b"abc", fin=True))
    p.conn.read(sid, 100)
    p.conn.send_eof(sid)
    p.take()
    p.send(fr.encode_ack([(0, p.conn.out.pn - 1)]))
    assert sid not in p.conn.streams
    p.send(data(sid, 3, b"ghost"))  # frames for a forgotten stream are ignored
    assert violations(p) == 0


def test_data_beyond_the_stream_window_is_a_flow_violation() -> None:
    p = Peer(Config(stream_window=1000))
    sid = p.open()
    p.send(data(sid, 0, b"x" * 1001))
    assert violations(p) == 1
    assert p.conn.read(sid, 2000) == b""
    p.send(data(sid, 0, b"x" * 1000))  # right at the window is fine
    assert p.conn.read(sid, 2000) == b"x" * 1000


def test_data_beyond_the_session_window_is_a_flow_violation() -> None:
    window = 2 << 20
    cfg = Config(stream_window=window, session_window=window)
    p = Peer(cfg)
    a = p.open()
    p.send(fr.encode_open(3, window, "ssh"))
    p.conn.take_events()
    p.conn.accept(3)
    chunk = fr.MAX_PLAINTEXT - 100
    sent = 0
    while sent + chunk <= window:
        p.send(data(a, sent, b"a" * chunk))
        sent += chunk
    assert violations(p) == 0
    p.send(data(3, 0, b"b" * (window - sent + 1)))  # one byte too many, summed
    assert violations(p) == 1
    assert p.conn.read(3, window) == b""


def test_reset_beyond_the_window_is_a_flow_violation() -> None:
    p = Peer(Config(stream_window=1000))
    sid = p.open()
    p.send(fr.encode_reset(sid, ErrorCode.CLOSED, 5000, ""))
    assert violations(p) == 1
    assert not p.conn.streams[sid].receiver.aborted


def test_window_updates_follow_the_reader() -> None:
    p = Peer(Config(stream_window=1000))
    sid = p.open()
    p.send(data(sid, 0, b"x" * 600))
    assert not [f for f in p.take() if isinstance(f, fr.MaxStreamData)]
    p.conn.read(sid, 600)
    assert fr.MaxStreamData(sid, 1600) in p.take()


def test_a_reset_writer_still_grants_its_reader_credit() -> None:
    p = Peer(Config(stream_window=1000))
    sid = p.open()
    p.send(fr.encode_stop(sid, ErrorCode.STOPPED))  # our direction ends
    p.take()
    p.send(data(sid, 0, b"x" * 600))
    p.conn.read(sid, 600)
    assert fr.MaxStreamData(sid, 1600) in p.take()


@pytest.mark.parametrize("window", [1000, 4000])
def test_the_open_announces_the_receive_window(window: int) -> None:
    c = Connection(local_is_low=True, now=0.0, config=Config(stream_window=window))
    sid = c.open_stream("ssh")
    frames = [f for pkt in c.poll(0.0) for f in fr.parse(pkt)[1]]
    assert fr.Open(sid, window, "ssh") in frames
