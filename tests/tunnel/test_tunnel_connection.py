"""The reliability state machine, driven by hand over a simulated lossy link
(virtual time, seeded randomness): no trio, no sockets."""

from __future__ import annotations

import hashlib
import heapq
import random

import pytest

from tunnel.connection import Config, Connection, StreamRequest


class Sim:
    """Two connections joined by a link that drops, duplicates and reorders."""

    def __init__(self, loss: float, seed: int = 1, config: Config | None = None) -> None:
        self.rng = random.Random(seed)
        self.loss = loss
        self.now = 0.0
        self.a = Connection(local_is_low=True, now=0.0, config=config)
        self.b = Connection(local_is_low=False, now=0.0, config=config)
        self.queue: list[tuple[float, int, int, bytes]] = []
        self.seq = 0
        self.delivered = 0

    def _send(self, dst: int, pkts: list[bytes]) -> None:
        for p in pkts:
            if self.rng.random() < self.loss:
                continue
            copies = 2 if self.rng.random() < self.loss / 2 else 1
            for _ in range(copies):
                delay = 0.001 + self.rng.random() * 0.003
                self.seq += 1
                heapq.heappush(self.queue, (self.now + delay, self.seq, dst, p))

    def step(self) -> None:
        self._send(1, self.a.poll(self.now))
        self._send(0, self.b.poll(self.now))
        deadline = min(self.a.next_deadline(), self.b.next_deadline())
        if self.queue and self.queue[0][0] <= deadline:
            t, _, dst, p = heapq.heappop(self.queue)
            self.now = max(self.now, t)
            (self.b if dst else self.a).receive(p, self.now)
        else:
            self.now = max(self.now, deadline)
            self.a.on_timer(self.now)
            self.b.on_timer(self.now)


def accept_all(c: Connection) -> None:
    for ev in c.take_events():
        if isinstance(ev, StreamRequest):
            c.accept(ev.sid)


@pytest.mark.parametrize("loss", [0.0, 0.01, 0.05, 0.10])
def test_streams_arrive_intact_over_lossy_link(loss: float) -> None:
    sim = Sim(loss, seed=7)
    rng = random.Random(3)
    payloads = [rng.randbytes(300_000 + i * 1000) for i in range(3)]
    sids = [sim.a.open_stream(f"tcp:{i}") for i in range(3)]
    pos = [0, 0, 0]
    got: dict[int, bytearray] = {}
    eof: set[int] = set()
    for _ in range(200_000):
        accept_all(sim.b)
        for i, sid in enumerate(sids):
            st = sim.a.streams.get(sid)
            if st is None or st.phase.value != "open":
                continue
            if pos[i] < len(payloads[i]):
                pos[i] += sim.a.write(sid, payloads[i][pos[i] : pos[i] + 100_000])
                if pos[i] == len(payloads[i]):
                    sim.a.send_eof(sid)
        for sid, st in list(sim.b.streams.items()):
            data = sim.b.read(sid, 1 << 20)
            got.setdefault(sid, bytearray()).extend(data)
            if st.at_eof():
                eof.add(sid)
                sim.b.send_eof(sid)
        if len(eof) == 3 and not sim.a.streams and not sim.b.streams:
            break
        sim.step()
    else:
        pytest.fail("transfer did not finish")
    assert not sim.a.dead
    assert not sim.b.dead
    for i, sid in enumerate(sids):
        assert hashlib.sha256(got[sid]).digest() == hashlib.sha256(payloads[i]).digest()
    if loss:
        assert sim.a.stats["packets_lost"] > 0


# -- hostile but authenticated input: any frame sequence is absorbed ----------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as hs  # noqa: E402

from tunnel import frames as fr  # noqa: E402

u32 = hs.integers(min_value=0, max_value=(1 << 32) - 1)
u64 = hs.integers(min_value=0, max_value=(1 << 64) - 1)
small = hs.integers(min_value=0, max_value=12)
text = hs.text(max_size=20)
frame_bytes = hs.one_of(
    hs.builds(fr.encode_ping, u64),
    hs.builds(fr.encode_pong, u64),
    hs.builds(
        lambda rs: fr.encode_ack(sorted(((min(a, b), max(a, b)) for a, b in rs), reverse=True)),
        hs.lists(hs.tuples(hs.integers(0, 50), hs.integers(0, 50)), max_size=5),
    ),
    hs.builds(
        lambda sid, off, fin, data: fr.stream_header(sid, off, fin, len(data)) + data,
        small,
        hs.one_of(hs.integers(0, 1 << 20), u64.filter(lambda v: v < (1 << 63))),
        hs.booleans(),
        hs.binary(max_size=64),
    ),
    hs.builds(fr.encode_open, small, u32, text),
    hs.builds(fr.encode_open_ok, small, u32),
    hs.builds(fr.encode_open_refused, small, hs.integers(0, 65535), text),
    hs.builds(fr.encode_reset, small, hs.integers(0, 65535), u64, text),
    hs.builds(fr.encode_stop, small, hs.integers(0, 65535)),
    hs.builds(fr.encode_max_stream_data, small, u64),
    hs.builds(fr.encode_max_data, u64),
    hs.builds(fr.encode_close, hs.integers(0, 65535), text),
)


@settings(max_examples=300, deadline=None)
@given(hs.lists(hs.tuples(u64, hs.lists(frame_bytes, max_size=6)), max_size=12))
def test_any_authenticated_frames_never_raise(packets: list[tuple[int, list[bytes]]]) -> None:
    c = Connection(local_is_low=True, now=0.0)
    sid = c.open_stream("ssh")
    c.write(sid, b"x" * 1000)
    now = 0.0
    for pn, frames in packets:
        now += 0.01
        c.receive(fr.encode_pn(pn) + b"".join(frames), now)
        for ev in c.take_events():
            if isinstance(ev, StreamRequest):
                c.accept(ev.sid)
        for s in list(c.streams):
            c.read(s, 100)
            c.write(s, b"y" * 10)
        c.poll(now)
        c.on_timer(now)
        c.take_changed()


@given(
    hs.lists(hs.tuples(hs.integers(0, 300), hs.integers(1, 60)), max_size=30),
    hs.lists(hs.tuples(hs.integers(0, 300), hs.integers(1, 60)), max_size=5),
    hs.integers(0, 100),
)
def test_retransmit_ranges_merge_like_a_set(
    lost: list[tuple[int, int]], acked: list[tuple[int, int]], base: int
) -> None:
    from tunnel.send_side import SendSide

    st = SendSide(Config().send_buffer)
    st.base = base
    acked_ranges = sorted((a, a + n) for a, n in acked)
    st.acked = acked_ranges
    want: set[int] = set()
    for a, n in lost:
        st.add_lost_range(a, a + n)
        want |= set(range(max(a, base), a + n))
    for a, b in acked_ranges:
        want -= set(range(a, b))
    got: set[int] = set()
    for i, (a, b) in enumerate(st.retx):
        assert a < b
        if i:
            assert st.retx[i - 1][1] < a  # sorted, disjoint, not touching
        got |= set(range(a, b))
    assert got == want
